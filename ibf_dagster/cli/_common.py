"""What every ``ibf`` command shares: the consoles, the ``error:`` line and its exit codes, settings, option
parsers, the supervised child of ``train``/``backfill`` and the error policy the console script applies."""

from __future__ import annotations

import functools
import logging
import sys
import traceback
import warnings

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

from ibf_core.progress import set_notice_sink, set_progress_sink
from ibf_core.settings import (
    SettingsError,
    get_settings,
    load_settings,
    normalize_symbol,
)
from ibf_dagster.supervise import run_in_child

# Heavy imports wait until a command needs them: `ibf --help` must not load pandas, dagster or torch.

err = Console(stderr=True)
out = Console(soft_wrap=True)  # tables are wider than 80 columns; never re-wrap them
_options = {"debug": False, "supervise": False}


def _print_error(message: str) -> None:
    err.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)


def _fail(message: str, code: int = 1) -> None:
    if _options["debug"] and sys.exc_info()[1] is not None:
        err.print(traceback.format_exc().rstrip(), highlight=False, markup=False, soft_wrap=True)
    # escaped: a file name or value like "[low, high]" must print as it is, not as console markup
    _print_error(message)
    raise typer.Exit(code)


def _settings(**overrides):
    try:
        return load_settings(**{k: v for k, v in overrides.items() if v is not None}) if overrides else get_settings()
    except SettingsError as exc:
        _fail(str(exc), 2)


def _split(value: str | None) -> list[str] | None:
    return [s for s in (p.strip() for p in value.split(",")) if s] if value else None


def _symbols_option(value: str | None) -> list[str] | None:
    """--symbols as normalized symbols; an invalid one is one error line."""
    try:
        return [normalize_symbol(s) for s in _split(value)] if value else None
    except ValueError as exc:
        _fail(f"--symbols: {exc}")


def _date_option(name: str, value: str | None) -> str | None:
    """--start/--end as an ISO date; anything else is one error line naming the value."""
    from ibf_core.calendar import to_date

    if value is None:
        return None
    try:
        return to_date(value).isoformat()
    except ValueError as exc:
        _fail(f"--{name} {value!r} is not a date (YYYY-MM-DD): {exc}")


def _supervised(command: str) -> None:
    """From the console script, ``command`` runs in a child process that this one watches (ibf_dagster/supervise.py):
    if the child is killed (out of memory, a segfault) its run is marked FAILED and one error line says why."""
    if not _options["supervise"]:
        return  # the child itself, or the command called in-process (tests)

    code, error = run_in_child(command, sys.argv[1:], entry="ibf_dagster.cli:main_in_child")
    if error:
        _fail(error, code)
    raise typer.Exit(code)


def _quiet_dagster(verbose: bool = False) -> str:
    """Keep the terminal to ibf's own summary; the full logs and traces stay in the Dagster instance (UI)."""
    warnings.filterwarnings("ignore")
    if not verbose:
        logging.getLogger("ib_insync").setLevel(logging.CRITICAL)
    return "INFO" if verbose else "CRITICAL"


def preflight_symbols(settings, symbols: list[str], source=None) -> None:
    """The pre-flight check of ``symbols`` against ``source`` (default: IBF_SOURCE's); refused: one error line."""
    from ibf_core.sources import make_source
    from ibf_core.sources.errors import SourceError
    from ibf_core.sources.preflight import BadInputError, preflight

    try:
        preflight(source or make_source(settings), symbols)
    except (BadInputError, SourceError) as exc:
        _fail(str(exc))


def run_backfill(settings, symbols, start, end, assets, source, csv, log_level="CRITICAL") -> list:
    """Run the backfill with a progress bar fed by ibf_core's progress sink; exits non-zero on failure."""
    from ibf_dagster.runner import BackfillError, backfill

    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=err
    ) as progress:
        task = progress.add_task("planning", total=None)

        def sink(done: int, total: int, label: str) -> None:
            progress.update(task, completed=done, total=total, description=label)

        set_progress_sink(sink)
        try:
            summaries = backfill(settings, symbols, start, end, assets, source, csv, log_level)
        except BackfillError as exc:
            progress.remove_task(task)  # a refused or failed plan leaves no "planning 0/?" line behind
            _fail(str(exc))
        finally:
            set_progress_sink(None)
    failed = [s for s in summaries if not s.success]
    for summary in summaries:
        checks = ", ".join(f"{k}={'pass' if v else 'FAIL'}" for k, v in summary.checks.items())
        status = "ok" if summary.success else "FAILED"
        err.print(
            f"run {summary.run_id[:8]} {status}: {len(summary.symbols)} symbols, "
            f"{summary.date_keys[0]}..{summary.date_keys[1]}, {summary.row_count} rows; {checks}",
            highlight=False,
        )
    if failed:
        _fail("; ".join(s.error or "run failed" for s in failed))
    return summaries


def _interrupt(signum: int, _frame) -> None:
    """SIGTERM stops ibf like Ctrl-C does: cleanly, so a run it executes ends FAILED and frees its pool slots."""
    raise KeyboardInterrupt()


def _report(exc: BaseException) -> int:
    """One error line for ``exc`` (its traceback first with --debug); returns the exit code."""
    if _options["debug"]:
        err.print("".join(traceback.format_exception(exc)).rstrip(), highlight=False, markup=False, soft_wrap=True)
    if isinstance(exc, KeyboardInterrupt):
        _print_error(str(exc) or "interrupted")
        return 130
    text = str(exc).strip()
    message = text.splitlines()[0] if text else type(exc).__name__
    if not type(exc).__module__.startswith(("ibf_core", "ibf_dagster")):
        message = f"{type(exc).__name__}: {message}" + ("" if _options["debug"] else " (ibf --debug shows the traceback)")
    _print_error(message)
    return 2 if isinstance(exc, SettingsError) else 1


def _setup_output() -> None:
    """Notices (a freed run, a pool wait) and storage warnings (a quarantined file) reach the terminal."""
    set_notice_sink(lambda line: err.print(line, highlight=False, markup=False, soft_wrap=True))
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("warning: %(message)s"))
    handler.setLevel(logging.WARNING)
    logging.getLogger("ibf_core.storage").addHandler(handler)


def _guarded(command):
    """``command`` with ibf's error policy: any failure is one ``error:`` line (the traceback first with --debug)."""

    @functools.wraps(command)
    def run(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except (typer.Exit, typer.Abort, typer.TyperException):  # typer's own exits and usage errors
            raise
        except (Exception, KeyboardInterrupt) as exc:
            raise typer.Exit(_report(exc)) from None

    return run


def _guard_commands(group: typer.Typer) -> None:
    for info in group.registered_commands:
        if info.callback is not None and not hasattr(info.callback, "__wrapped__"):
            info.callback = _guarded(info.callback)
    for sub in group.registered_groups:
        if sub.typer_instance is not None:
            _guard_commands(sub.typer_instance)
