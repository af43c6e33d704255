"""Materialize symbol x date rectangles through Dagster (the CLI's backfill; the same definitions the UI loads)."""

from __future__ import annotations

import datetime as dt
import re
import threading
import uuid
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import dagster as dg
import pandas as pd

from ibf_core.calendar import all_sessions, to_date
from ibf_core.progress import report_notice, report_progress
from ibf_core.settings import Settings, normalize_symbol
from ibf_core.sources import make_source
from ibf_core.sources.errors import SourceError
from ibf_core.sources.preflight import BadInputError, preflight
from ibf_core.storage.backends import open_warehouse
from ibf_dagster.compat import partition_range_tags, was_interrupted
from ibf_dagster.instance import get_instance
from ibf_dagster.partitions import MODEL_CUTOFFS, SYMBOL_PARTITIONS, contiguous_blocks, date_key_window, date_partitions
from ibf_dagster.recovery import PoolWait, RunInterrupted, death_alerts, guarded_run, launch_tags, recover_dead_runs

# Heavy imports (tenacity) stay inside the functions that need them: importing this module loads none of them.

MODEL_ASSETS = ("trained_models", "predictions", "drift_scores", "portfolio_weights", "portfolio_returns")


class BackfillError(RuntimeError):
    """A backfill could not be planned or one of its runs failed; the message says which and why."""


@dataclass
class RunSummary:
    run_id: str
    symbols: list[str]
    date_keys: tuple[str, str]
    success: bool
    error: str | None = None
    checks: dict[str, bool] = field(default_factory=dict)
    row_count: int = 0


def known_symbols(instance: dg.DagsterInstance) -> list[str]:
    return list(instance.get_dynamic_partitions(SYMBOL_PARTITIONS.name))


def sync_universe(instance: dg.DagsterInstance, symbols: Sequence[str]) -> list[str]:
    """Add missing symbols to the ``symbol`` partitions; returns the ones added."""
    known = set(known_symbols(instance))
    missing = [s for s in symbols if s not in known]
    if missing:
        instance.add_dynamic_partitions(SYMBOL_PARTITIONS.name, missing)
    return missing


def date_keys_between(settings: Settings, start: dt.date | None, end: dt.date | None) -> list[str]:
    """Date partition keys whose window overlaps [start, end] (the whole history when omitted)."""
    keys = date_partitions(settings).get_partition_keys()
    if not keys:
        raise BackfillError("no date partitions: is IBF_HISTORY_START in the future?")
    lo, hi = start or dt.date.min, end or dt.date.max
    selected = []
    for key in keys:
        first, last = date_key_window(key, settings)
        if last >= lo and first <= hi:
            selected.append(key)
    if not selected:
        raise BackfillError(f"no date partitions between {start} and {end} (history starts {keys[0]})")
    return selected


def backfill(
    settings: Settings,
    symbols: Sequence[str] | None = None,
    start: str | dt.date | None = None,
    end: str | dt.date | None = None,
    assets: str = "*",
    source: str | None = None,
    csv_path: str | None = None,
    log_level: str = "WARNING",
) -> list[RunSummary]:
    """Materialize ``assets`` for symbols x [start, end]: one single-run backfill per contiguous symbol block."""
    from ibf_dagster.definitions import build_definitions

    start_d, end_d = (to_date(start) if start else None), (to_date(end) if end else None)
    defs = build_definitions(settings)
    graph = defs.resolve_asset_graph()
    names = sorted(k.to_user_string() for k in graph.get_all_asset_keys())
    instance = get_instance(settings)
    requested = [normalize_symbol(s) for s in symbols] if symbols else None
    # Everything is checked before the first write: a bad symbol, asset or date range adds no partition key,
    # launches no run and writes no row (the universe sync and the news/fundamentals feeds come after). The symbols
    # checked are the ones the command names; without --symbols it runs the partitions and IBF_UNIVERSE as
    # configured (the universe_sync sensor adds IBF_UNIVERSE unasked too).
    wanted = requested or list(dict.fromkeys([*known_symbols(instance), *settings.universe]))
    source_settings = settings.replace(**{k: v for k, v in (("source", source), ("csv_path", csv_path)) if v})
    plain = _plain_names(assets)
    try:
        preflight(make_source(source_settings), requested or [], start_d, end_d, plain, names)
    except (BadInputError, SourceError) as exc:
        raise BackfillError(str(exc)) from None
    selected = _selected(graph, assets)
    date_keys = date_keys_between(settings, start_d, end_d)
    start_runs(instance, settings)
    open_warehouse(settings).ensure_all_tables()
    sync_universe(instance, settings.universe)
    sync_universe(instance, wanted)
    run_config: dict = {"loggers": {"console": {"config": {"log_level": log_level}}}}
    if source or csv_path:
        default_csv = str(settings.csv_path) if settings.csv_path else None
        bar_source = {"source": source or settings.source, "csv_path": csv_path or default_csv}
        run_config["resources"] = {"bar_source": {"config": bar_source}}
    job = defs.resolve_implicit_global_asset_job_def()
    summaries = []
    blocks = contiguous_blocks(known_symbols(instance), wanted)
    groups = _by_partitioning(graph, selected)

    def execute(keys: set, first, last, expected: int, block: list[str]) -> None:
        tags = {**partition_range_tags(first, last), "ibf/launched_by": "ibf backfill", **launch_tags()}
        run_id = str(uuid.uuid4())
        with (
            _report_recorded_partitions(instance, run_id, expected),
            guarded_run(instance, run_id, settings.pool_wait_timeout, report_notice, alert=death_alerts(settings, report_notice)) as wait,
        ):
            result = job.execute_in_process(
                instance=instance,
                asset_selection=sorted(keys),
                tags=tags,
                run_config=run_config,
                raise_on_error=False,
                run_id=run_id,
            )
        _raise_if_stopped(result, wait)
        summaries.append(_summarize(result, block, (date_keys[0], date_keys[-1])))

    recorded = len(date_keys) * len(wanted) * len(groups["symbol_date"])
    if recorded > SQLITE_PARTITIONS_WARNING and settings.dagster_pg_url is None:  # said before any run starts
        report_notice(sqlite_scale_warning(recorded, settings))
    # A run covers one partitioning: by-date (macro_indicators) and by-symbol (fundamentals) assets run first,
    # in their own runs, since the symbol x date assets read them.
    if groups["date"]:
        execute(groups["date"], date_keys[0], date_keys[-1], len(date_keys) * len(groups["date"]), [])
    for block in blocks:
        if groups["symbol"]:
            execute(groups["symbol"], block[0], block[-1], len(block) * len(groups["symbol"]), block)
    for block in blocks:
        if groups["symbol_date"]:
            first = dg.MultiPartitionKey({"date": date_keys[0], "symbol": block[0]})
            last = dg.MultiPartitionKey({"date": date_keys[-1], "symbol": block[-1]})
            execute(groups["symbol_date"], first, last, len(date_keys) * len(block) * len(groups["symbol_date"]), block)
    # By-date assets that read symbol x date ones (the portfolios read predictions) run last, over every symbol.
    if groups["date_after"]:
        execute(groups["date_after"], date_keys[0], date_keys[-1], len(date_keys) * len(groups["date_after"]), [])
    return summaries


# Above this many partition materializations in one backfill (Dagster's guideline is ~100,000 per asset), the
# instance's bookkeeping (one event, its tags and the asset's status per partition) is most of the wall time.
SQLITE_PARTITIONS_WARNING = 50_000


def sqlite_scale_warning(recorded: int, settings: Settings) -> str:
    """The one line a backfill too large for the embedded SQLite instance prints, with the settings that help."""
    coarser = {"day": "month", "month": "year"}.get(settings.date_partitions)
    hint = f" or IBF_DATE_PARTITIONS={coarser} (fewer, larger partitions)" if coarser else ""
    return (f"warning: this backfill records {recorded:,} partition materializations in the embedded SQLite instance "
            f"(over {SQLITE_PARTITIONS_WARNING:,}: Dagster's bookkeeping will dominate); set IBF_DAGSTER_PG_URL "
            f"(a Postgres instance, for several writers; not faster on one machine){hint}")


_ASSET_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _plain_names(assets: str) -> list[str]:
    """The asset names ``assets`` lists: a name or a comma list of names; none for a Dagster selection string with
    operators ('market_bars*'), which Dagster resolves (refusing an unknown key). A comma list takes names only."""
    if "," not in assets:
        return [assets] if _ASSET_NAME.match(assets) else []
    names = [a.strip() for a in assets.split(",") if a.strip()]
    not_names = [n for n in names if not _ASSET_NAME.match(n)]
    if not_names:
        raise BackfillError(
            f"--assets {assets!r}: a comma list takes asset names only, not {', '.join(not_names)}; "
            "use one Dagster selection string for operators (e.g. 'market_bars*')"
        )
    return names


def _selected(graph, assets: str) -> set:
    """The asset keys ``assets`` selects (a Dagster selection string or a comma list of names), minus what
    ``ibf backfill`` cannot run."""
    if "," in assets:  # Dagster would read "a,b" as one unknown key: the names become "key:a or key:b"
        assets = " or ".join(f"key:{n}" for n in _plain_names(assets))
    try:
        selected = dg.AssetSelection.from_coercible(assets).resolve(graph)
    except Exception as exc:  # dagster raises several types for a bad selection string
        raise BackfillError(f"--assets {assets!r}: {exc}") from exc
    if assets == "*":
        # The default builds the data; models train per cut-off (``ibf train``) and predictions need one.
        selected = {key for key in selected if key.to_user_string() not in MODEL_ASSETS}
    elif "trained_models" in {key.to_user_string() for key in selected}:
        raise BackfillError("trained_models is partitioned by cut-off date, not symbol x date: use ibf train --cutoff DATE")
    if not selected:
        raise BackfillError(f"--assets {assets!r} selects no asset")
    # An asset computed in one step with others (portfolio_weights and portfolio_returns) runs with them.
    return {k for key in selected for k in graph.get_execution_set_asset_and_check_keys(key) if isinstance(k, dg.AssetKey)}


def _by_partitioning(graph, selected: set) -> dict[str, set]:
    """The selected asset keys by how they are partitioned: symbol_date, symbol, date, or date_after (by date,
    reading a symbol x date asset)."""
    groups: dict[str, set] = {"symbol_date": set(), "symbol": set(), "date": set(), "date_after": set()}
    for key in selected:
        partitions = graph.get(key).partitions_def
        if isinstance(partitions, dg.MultiPartitionsDefinition):
            groups["symbol_date"].add(key)
        elif isinstance(partitions, dg.DynamicPartitionsDefinition):
            groups["symbol"].add(key)
        elif isinstance(partitions, dg.TimeWindowPartitionsDefinition):
            parents = (graph.get(parent).partitions_def for parent in graph.get(key).parent_keys)
            after = any(isinstance(p, dg.MultiPartitionsDefinition) for p in parents)
            groups["date_after" if after else "date"].add(key)
        else:
            raise BackfillError(f"{key.to_user_string()} is not partitioned by symbol and/or date: ibf backfill cannot run it")
    return groups


def start_runs(instance: dg.DagsterInstance, settings: Settings | None = None) -> None:
    """Before a run starts: runs whose process is gone are marked FAILED and their pool slots freed (one line each);
    with ``settings``, each becomes an ``alerts`` row (and webhook POST) too."""
    for freed in recover_dead_runs(instance, death_alerts(settings, report_notice) if settings is not None else None):
        report_notice(freed.line())


def _raise_if_stopped(result: dg.ExecuteInProcessResult, wait: PoolWait) -> None:
    """A run that gave up waiting for a pool, or was interrupted, stops the whole command (no further runs)."""
    if wait.error:
        raise BackfillError(wait.error)
    if wait.interrupted or was_interrupted(result):
        raise RunInterrupted(f"interrupted: run {result.run_id} marked FAILED, its pool slots released")


@contextmanager
def _report_recorded_partitions(instance: dg.DagsterInstance, run_id: str, expected: int, every_s: float = 2.0):
    """While a run executes, report how many partition materializations Dagster has recorded so far:
    on a large backfill that bookkeeping, not the data load, is most of the wall time."""
    stop = threading.Event()

    def poll() -> None:
        while not stop.wait(every_s):
            try:
                recorded = instance.get_run_stats(run_id).materializations
            except Exception:  # the run is not created yet, or the storage is busy: try again
                continue
            if recorded:
                report_progress(recorded, expected, "recording partitions in Dagster")

    thread = threading.Thread(target=poll, name="ibf-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _root_message(error) -> str:
    """The innermost cause of a Dagster error chain: the message the user needs."""
    while error.cause is not None:
        error = error.cause
    message = error.message.strip().splitlines()[-1] if error.message.strip() else error.cls_name
    return re.sub(r"^[\w.]+(Error|Exception): ", "", message)


def train(settings: Settings, cutoff: str | dt.date, log_level: str = "WARNING") -> RunSummary:
    """Materialize ``trained_models`` for one cut-off (added as a ``model_cutoff`` partition) in-process."""
    from ibf_dagster.definitions import build_definitions

    day = to_date(cutoff)
    sessions = all_sessions()
    if pd.Timestamp(day) not in set(sessions):
        raise BackfillError(f"cut-off {day} is not an NYSE session")
    instance = get_instance(settings)
    start_runs(instance, settings)
    if not instance.has_dynamic_partition(MODEL_CUTOFFS.name, day.isoformat()):
        instance.add_dynamic_partitions(MODEL_CUTOFFS.name, [day.isoformat()])
    defs = build_definitions(settings)
    job = defs.resolve_implicit_global_asset_job_def()
    run_id = str(uuid.uuid4())
    with guarded_run(instance, run_id, settings.pool_wait_timeout, report_notice, alert=death_alerts(settings, report_notice)) as wait:
        result = job.execute_in_process(
            instance=instance,
            asset_selection=[dg.AssetKey("trained_models")],
            partition_key=day.isoformat(),
            tags={"ibf/launched_by": "ibf train", **launch_tags()},
            run_config={"loggers": {"console": {"config": {"log_level": log_level}}}},
            raise_on_error=False,
            run_id=run_id,
        )
    _raise_if_stopped(result, wait)
    return _summarize(result, [], (day.isoformat(), day.isoformat()))


def _summarize(result, symbols: list[str], date_keys: tuple[str, str]) -> RunSummary:
    """The run's outcome from its events: root error, check results, row count."""
    summary = RunSummary(result.run_id, symbols, date_keys, result.success)
    for event in result.all_events:
        if event.is_step_failure and event.step_failure_data and event.step_failure_data.error:
            summary.error = _root_message(event.step_failure_data.error)
        if event.event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION:
            evaluation = event.event_specific_data
            summary.checks[evaluation.check_name] = evaluation.passed
        if event.is_step_materialization and not summary.row_count:
            # one event per partition, all carrying the run's metadata: read it once
            row_count = event.step_materialization_data.materialization.metadata.get("dagster/row_count")
            summary.row_count = int(row_count.value) if row_count is not None else 0
    return summary
