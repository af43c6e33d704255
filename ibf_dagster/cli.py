"""The ``ibf`` command line: backfill through Dagster, SQL on the warehouse, the universe, the gateway simulator."""

from __future__ import annotations

import datetime as dt
import functools
import os
import re
import signal
import subprocess
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from ibf_core.settings import SettingsError, get_settings, load_settings, normalize_symbol

app = typer.Typer(help="ibf: forecasting platform for Interactive Brokers market data.", no_args_is_help=True)
universe_app = typer.Typer(help="The symbols partitioned by every per-symbol asset.", no_args_is_help=True)
app.add_typer(universe_app, name="universe")
api_key_app = typer.Typer(help="REST API keys (the service stores only their SHA-256 digests).", no_args_is_help=True)
app.add_typer(api_key_app, name="api-key")
stack_app = typer.Typer(help="The production topology as local processes: Postgres, MLflow server, code location, webserver, daemon, API.", no_args_is_help=True)
app.add_typer(stack_app, name="stack")
err = Console(stderr=True)
out = Console(soft_wrap=True)  # tables are wider than 80 columns; never re-wrap them
_options = {"debug": False, "supervise": False}
# `ibf ui`: after Ctrl-C/SIGTERM, dagster dev gets this long to shut down on SIGINT, then SIGTERM, then SIGKILL.
UI_STOP_GRACE_S = (4.0, 2.0)


@app.callback()
def _global_options(
    debug: Annotated[bool, typer.Option("--debug", help="Show the traceback of an error (otherwise one error: line)")] = False,
) -> None:
    _options["debug"] = debug


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


def _supervised(command: str) -> None:
    """From the console script, ``command`` runs in a child process that this one watches (ibf_dagster/supervise.py):
    if the child is killed (out of memory, a segfault) its run is marked FAILED and one error line says why."""
    if not _options["supervise"]:
        return  # the child itself, or the command called in-process (tests)
    from ibf_dagster.supervise import run_in_child

    code, error = run_in_child(command, sys.argv[1:], entry="ibf_dagster.cli:main_in_child")
    if error:
        _fail(error, code)
    raise typer.Exit(code)


def _quiet_dagster(verbose: bool = False) -> str:
    """Keep the terminal to ibf's own summary; the full logs and traces stay in the Dagster instance (UI)."""
    import logging

    warnings.filterwarnings("ignore")
    if not verbose:
        logging.getLogger("ib_insync").setLevel(logging.CRITICAL)
    return "INFO" if verbose else "CRITICAL"


def run_backfill(settings, symbols, start, end, assets, source, csv, log_level="CRITICAL") -> list:
    """Run the backfill with a progress bar fed by ibf_core's progress sink; exits non-zero on failure."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ibf_core.progress import set_progress_sink
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


@app.command()
def backfill(
    symbols: Annotated[str | None, typer.Option(help="Comma list; default: the whole universe (with --csv: the file's symbols)")] = None,
    start: Annotated[str | None, typer.Option(help="First date (YYYY-MM-DD); default: IBF_HISTORY_START (with --csv: the file's first)")] = None,
    end: Annotated[str | None, typer.Option(help="Last date; default: the newest partition (with --csv: the file's last date)")] = None,
    assets: Annotated[str, typer.Option(help="Dagster asset selection (market_bars, 'market_bars*', '*') or a comma list of asset names")] = "*",
    source: Annotated[str | None, typer.Option(help="Override IBF_SOURCE: sample, csv, ibkr")] = None,
    csv: Annotated[Path | None, typer.Option(help="CSV/Parquet file or folder (implies --source csv)")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show Dagster's and ib_insync's logs")] = False,
) -> None:
    """Materialize assets for symbols x dates through Dagster (runs show in the UI)."""
    _supervised("backfill")
    log_level = _quiet_dagster(verbose)
    if csv is not None and source is None:
        source = "csv"
    settings = _settings(source=source, csv_path=csv)
    if csv is not None and not csv.exists():
        _fail(f"{csv}: no such file or folder")
    wanted, first, last = _symbols_option(symbols), _date_option("start", start), _date_option("end", end)
    if settings.source == "csv":
        wanted, first, last = _csv_input(settings, wanted, first, last)
    selection = _assets_option(assets, settings)
    started, recorded_since = time.perf_counter(), dt.datetime.now(dt.timezone.utc)
    summaries = run_backfill(settings, wanted, first, last, selection, source, str(csv) if csv else None, log_level)
    if any("ohlc_consistent" in s.checks for s in summaries):  # market_bars ran: say what its loads recorded
        _print_bar_issues(settings, sorted({sym for s in summaries for sym in s.symbols}), recorded_since)
    err.print(f"done in {time.perf_counter() - started:.1f} s", highlight=False)


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


_ASSET_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _assets_option(value: str, settings) -> str:
    """A comma list of asset names as the Dagster selection ``key:a or key:b`` (names checked, since Dagster
    ignores an unknown key in such a string); anything else is passed on as a selection string."""
    if "," not in value:
        return value
    names = _split(value) or []
    not_names = [n for n in names if not _ASSET_NAME.match(n)]
    if not_names:
        _fail(
            f"--assets {value!r}: a comma list takes asset names only, not {', '.join(not_names)}; "
            "use one Dagster selection string for operators (e.g. 'market_bars*')"
        )
    from ibf_dagster.definitions import build_definitions

    known = sorted(k.to_user_string() for k in build_definitions(settings).resolve_asset_graph().get_all_asset_keys())
    unknown = [n for n in names if n not in known]
    if unknown:
        _fail(f"--assets: unknown asset(s) {', '.join(unknown)} (assets: {', '.join(known)})")
    return " or ".join(f"key:{n}" for n in names)


def _csv_input(settings, symbols: list[str] | None, start: str | None, end: str | None):
    """Read and check the whole csv input before any run, so a bad file changes nothing; without --symbols
    take every symbol in it, without --start/--end its first/last date."""
    from ibf_core.bars import BarsValidationError
    from ibf_core.sources import make_source
    from ibf_core.sources.errors import SourceError

    try:
        checked = make_source(settings).read()
    except (BarsValidationError, SourceError) as exc:
        _fail(str(exc))
    in_file = checked.symbols()
    unknown = sorted(set(symbols or []) - set(in_file))
    if unknown:
        _fail(f"unknown symbol(s) {', '.join(unknown)}: not in {settings.csv_path} (it has {_listed(in_file)})")
    wanted = symbols or in_file
    dates = checked.bars.loc[checked.bars["symbol"].isin(wanted), "date"]
    first, last = start or str(dates.min().date()), end or str(dates.max().date())
    if dates.min().date() < settings.history_start and (start is None or start < settings.history_start.isoformat()):
        err.print(
            f"note: bars before IBF_HISTORY_START ({settings.history_start}) are not loaded: the partitions start there",
            highlight=False,
        )
    return wanted, first, last


def _listed(items: list[str], limit: int = 10) -> str:
    return ", ".join(items[:limit]) + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _print_bar_issues(settings, symbols: list[str], since: dt.datetime) -> None:
    """'market_bars: N rows repaired, M dropped, see bar_issues' for what this backfill's loads recorded."""
    import pandas as pd

    from ibf_core.bar_issues import IssueSummary, read_issues
    from ibf_core.storage.backends import open_warehouse

    issues = read_issues(open_warehouse(settings), symbols)
    mine = issues[pd.to_datetime(issues["recorded_at"], utc=True) >= pd.Timestamp(since)]
    err.print(f"market_bars: {IssueSummary.of(mine).line()}", highlight=False, soft_wrap=True)


@app.command()
def sql(
    query: Annotated[str, typer.Argument(help="SQL to run (read-only), e.g. \"SELECT * FROM market_bars LIMIT 5\"")],
    format: Annotated[str, typer.Option("--format", "-f", help="table, csv or json")] = "table",
) -> None:
    """Run read-only SQL on the DuckDB warehouse (safe while runs write)."""
    import duckdb

    from ibf_core.storage.backends import open_warehouse

    from ibf_core.storage.warehouse import WarehouseError

    if format not in ("table", "csv", "json"):
        _fail("--format must be table, csv or json", 2)

    def left_out(path: Path, reason: str) -> None:
        err.print(f"warning: left out {path} ({reason}); its rows are missing from this result until a backfill of "
                  f"{path.stem} replaces it", highlight=False, markup=False, soft_wrap=True)

    try:
        frame = open_warehouse(_settings(), reader=True).query(query, on_damaged=left_out)
    except (duckdb.Error, WarehouseError) as exc:
        _fail(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
    _print_frame(frame, format)


def _print_frame(frame, format: str) -> None:
    """A result frame as a table (rows counted on stderr), CSV or JSON records on stdout."""
    for column in frame.columns:
        values = frame[column]
        if str(values.dtype).startswith("datetime64") and (values.dropna().dt.normalize() == values.dropna()).all():
            frame[column] = values.dt.date  # DuckDB DATE columns arrive as midnight timestamps
    if format == "csv":
        sys.stdout.write(frame.to_csv(index=False))
    elif format == "json":
        sys.stdout.write(frame.to_json(orient="records", date_format="iso") + "\n")
    else:
        from rich.table import Table

        table = Table(show_lines=False)
        for column in frame.columns:
            table.add_column(str(column))
        for row in frame.itertuples(index=False):
            table.add_row(*["" if v is None or (isinstance(v, float) and v != v) else str(v) for v in row])
        out.print(table)
        err.print(f"{len(frame)} rows", highlight=False)


@universe_app.command("list")
def universe_list() -> None:
    """Symbols that are partitions (* = also in IBF_UNIVERSE)."""
    from ibf_dagster.instance import get_instance
    from ibf_dagster.runner import known_symbols

    settings = _settings()
    for symbol in known_symbols(get_instance(settings)):
        out.print(f"{symbol}{' *' if symbol in settings.universe else ''}", highlight=False)


@universe_app.command("add")
def universe_add(symbols: Annotated[list[str], typer.Argument(help="Symbols to add")]) -> None:
    """Add symbols to the ``symbol`` partitions."""
    from ibf_dagster.instance import get_instance
    from ibf_dagster.runner import sync_universe

    try:
        wanted = [normalize_symbol(s) for s in symbols]
    except ValueError as exc:
        _fail(str(exc), 2)
    added = sync_universe(get_instance(_settings()), wanted)
    out.print(f"added: {', '.join(added) or 'nothing (already present)'}", highlight=False)


@universe_app.command("remove")
def universe_remove(symbols: Annotated[list[str], typer.Argument(help="Symbols to remove")]) -> None:
    """Remove symbols from the ``symbol`` partitions (warehouse rows stay until you delete them)."""
    from ibf_dagster.instance import get_instance
    from ibf_dagster.partitions import SYMBOL_PARTITIONS
    from ibf_dagster.runner import known_symbols

    settings = _settings()
    instance = get_instance(settings)
    known = set(known_symbols(instance))
    for raw in symbols:
        symbol = raw.strip().upper()
        if symbol not in known:
            _fail(f"{symbol} is not in the universe", 2)
        instance.delete_dynamic_partition(SYMBOL_PARTITIONS.name, symbol)
        note = " (still in IBF_UNIVERSE: the universe_sync sensor will add it back)" if symbol in settings.universe else ""
        out.print(f"removed {symbol}{note}", highlight=False)


@app.command("gateway-sim")
def gateway_sim(
    host: Annotated[str, typer.Option(help="Bind address")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (IB Gateway paper: 4002)")] = 4002,
    source: Annotated[str, typer.Option(help="Bars to serve: sample or csv")] = "sample",
    csv: Annotated[Path | None, typer.Option(help="CSV/Parquet bars to serve (with --source csv)")] = None,
    fault: Annotated[list[str] | None, typer.Option(help="Fault to inject, repeatable (see docs)")] = None,
    live_start: Annotated[str | None, typer.Option(help="Market time live data starts at: a date (its 09:30 New York) or an ISO time with zone; default: now")] = None,
    speed: Annotated[float, typer.Option(help="Live data speed: 1 = real time, 20 = a 5-second bar every 0.25 s")] = 1.0,
) -> None:
    """Serve bars over the IB API wire protocol on loopback, so the ibkr source runs without an IB account; real-time
    bars and quotes (ibf stream) are streamed from sessions consistent with the daily bars."""
    import datetime as dt

    import pandas as pd

    from ibf_core.gateway_live import LiveClock, session_start
    from ibf_core.gateway_sim import parse_faults, serve
    from ibf_core.sources import make_source

    settings = _settings(source=source, csv_path=csv)
    try:
        faults = parse_faults(fault or [])
        if speed <= 0:
            raise ValueError(f"--speed {speed}: must be > 0")
        if live_start is None:
            start = dt.datetime.now(dt.timezone.utc)
        elif len(live_start) == 10:
            start = session_start(dt.date.fromisoformat(live_start))
        else:
            stamp = pd.Timestamp(live_start)
            if stamp.tzinfo is None:
                raise ValueError(f"--live-start {live_start}: give a zone (e.g. 2013-02-28T10:00-05:00) or a date")
            start = stamp.to_pydatetime()
    except ValueError as exc:
        _fail(str(exc), 2)
    serve(host, port, make_source(settings), faults, live_clock=LiveClock(start, speed),
          announce=lambda line: err.print(f"{line} [{source} bars, live from {start:%Y-%m-%d %H:%M %Z} at {speed:g}x]", highlight=False, markup=False))


@app.command()
def stream(
    symbols: Annotated[str | None, typer.Option(help="Comma list in priority order (the watch list first); default: IBF_UNIVERSE")] = None,
    duration: Annotated[float | None, typer.Option(help="Seconds to collect; default: until Ctrl-C")] = None,
) -> None:
    """Stream IB 5-second real-time bars and top-of-book quotes into intraday_bars and quotes (ib_insync)."""
    from ibf_core.settings import normalize_symbol
    from ibf_core.storage.backends import open_warehouse
    from ibf_core.streaming import collect

    settings = _settings()
    wanted = [normalize_symbol(s) for s in symbols.split(",") if s.strip()] if symbols else None
    if duration is not None and duration <= 0:
        _fail(f"--duration {duration}: must be > 0", 2)
    store = open_warehouse(settings)
    store.ensure_all_tables()
    try:
        stats = collect(settings, store, wanted, duration)
    except KeyboardInterrupt:
        return
    lags = sorted(stats.lags_s)
    p50 = lags[len(lags) // 2] if lags else float("nan")
    p99 = lags[min(len(lags) - 1, int(len(lags) * 0.99))] if lags else float("nan")
    out.print(f"{stats.bars} bars, {stats.quotes} quotes in {stats.batches} batches, {stats.connects} connection(s); "
              f"receipt -> queryable p50 {p50:.2f} s, p99 {p99:.2f} s", highlight=False)
    if stats.unserved:
        out.print(f"no market-data line (IBF_IB_MAX_LINES={settings.ib_max_lines}): {', '.join(stats.unserved)}", highlight=False)
    if stats.delayed:
        out.print(f"delayed data (no live subscription): {', '.join(sorted(stats.delayed))}", highlight=False)


@app.command()
def forecasts(
    symbols: Annotated[str | None, typer.Option(help="Comma list; default: every symbol with stored predictions")] = None,
    horizons: Annotated[str, typer.Option(help="Comma list of horizons in sessions")] = "1,3,5,10,15,20",
    as_of: Annotated[str | None, typer.Option(help="Origin session (YYYY-MM-DD); default: the newest stored")] = None,
    live: Annotated[bool, typer.Option("--live", help="Express prices against the newest streamed price (ibf stream) during market hours")] = False,
    format: Annotated[str, typer.Option("--format", "-f", help="table, csv or json")] = "table",
) -> None:
    """The stored forecasts of the newest origin (or --as-of): returns, prices, intervals, ranks."""
    from ibf_core.calendar import to_date
    from ibf_core.forecasts import FORECAST_COLUMNS, ForecastNotFound, stored_forecasts, stored_symbols
    from ibf_core.settings import normalize_symbol
    from ibf_core.storage.backends import open_warehouse

    if format not in ("table", "csv", "json"):
        _fail("--format must be table, csv or json", 2)
    try:
        wanted_h = sorted({int(h) for h in horizons.split(",") if h.strip()})
        day = to_date(as_of) if as_of else None
    except ValueError as exc:
        _fail(f"--horizons {horizons!r} / --as-of {as_of!r}: {exc}", 2)
    settings = _settings()
    store = open_warehouse(settings, reader=True)
    if not store.exists():
        _fail(f"no warehouse under {settings.home}: run ibf backfill (or make demo) first")
    from ibf_core.models import HORIZONS

    odd = [h for h in wanted_h if h not in HORIZONS]
    if odd or not wanted_h:
        _fail(f"--horizons {horizons!r}: {', '.join(map(str, odd)) or 'none'} not a forecast horizon ({', '.join(map(str, HORIZONS))})", 2)
    known = stored_symbols(store)
    try:
        wanted = [normalize_symbol(s) for s in symbols.split(",") if s.strip()] if symbols else known
    except ValueError as exc:
        _fail(f"--symbols: {exc}", 2)
    unknown = [s for s in wanted if s not in known]
    if unknown:
        _fail(f"--symbols: no stored predictions for {', '.join(unknown)} (stored: {', '.join(known) or 'none'})")
    try:
        found = stored_forecasts(store, wanted, wanted_h, day)
    except ForecastNotFound as exc:
        _fail(str(exc))
    frame = found.frame
    columns = ["symbol", "horizon", "origin", "target_date", "close", "pred_return", "pred_price", "price_lower_80",
               "price_upper_80", "rank"]
    if live:
        from ibf_core.streaming.live_prices import against_live_prices, newest_live_prices

        frame = against_live_prices(frame, newest_live_prices(store, wanted), max_age_s=settings.live_price_max_age_seconds)
        columns = [*columns, "price_basis", "basis_price", "basis_source", "basis_age_seconds"]
        notes = frame.drop_duplicates("symbol")
        for note, group in notes.groupby("basis_note"):
            err.print(f"{note}: {', '.join(group['symbol'])}", highlight=False)
    shown = frame[list(FORECAST_COLUMNS) + [c for c in frame.columns if c not in FORECAST_COLUMNS]] if format != "table" else frame[columns]
    if format == "table":
        shown = shown.round({"close": 2, "pred_return": 5, "pred_price": 2, "price_lower_80": 2, "price_upper_80": 2, "basis_price": 2})
    _print_frame(shown.copy(), format)


@app.command("av-sim")
def av_sim(
    host: Annotated[str, typer.Option(help="Bind address")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port")] = 8765,
    articles: Annotated[Path | None, typer.Option(help="JSON file of AV articles; default: a synthetic feed")] = None,
    fundamentals: Annotated[
        Path | None,
        typer.Option(help="JSON file {overview, earnings, calendar, macro} in AV's shapes; default: synthetic data"),
    ] = None,
    fault: Annotated[list[str] | None, typer.Option(help="Fault to inject, repeatable, e.g. rate_limit_after=3")] = None,
) -> None:
    """Serve Alpha Vantage NEWS_SENTIMENT, OVERVIEW, EARNINGS, EARNINGS_CALENDAR and the macro series on loopback
    (set IBF_ALPHAVANTAGE_URL to its address)."""
    from ibf_core.news.av_sim import SimulatorError, load_articles, load_fundamentals_file, parse_faults, serve

    try:
        faults = parse_faults(fault or [])
        feed = load_articles(str(articles)) if articles else None
        data = load_fundamentals_file(str(fundamentals)) if fundamentals else None
    except (ValueError, OSError, SimulatorError) as exc:
        _fail(str(exc), 2)
    serve(host, port, feed, faults, announce=lambda line: err.print(line, highlight=False, markup=False), fundamentals=data)


@app.command()
def demo() -> None:
    """Sample universe end to end through Dagster: bars, news, features, trained models, ranked forecasts, drift."""
    from ibf_core.sources.sample import SAMPLE_LAST_DATE

    _quiet_dagster()
    settings = _settings(source="sample")
    started = time.perf_counter()
    # the sample ends 2013-03-01: later partitions would only hold empty slices
    run_backfill(settings, None, None, SAMPLE_LAST_DATE.isoformat(), "*", "sample", None)
    elapsed = time.perf_counter() - started
    from ibf_core.storage.backends import open_warehouse

    summary = open_warehouse(settings).query(
        "SELECT symbol, count(*) AS bars, min(date) AS first, max(date) AS last, "
        "round(100 * (arg_max(adj_close, date) / arg_min(adj_close, date) - 1), 1) AS total_return_pct "
        "FROM market_bars GROUP BY symbol ORDER BY symbol"
    )
    out.print(summary.to_string(index=False), highlight=False)
    features = open_warehouse(settings).query(
        "SELECT symbol, count(*) AS feature_rows, sum(CAST(warmup AS INT)) AS warmup_rows, "
        "round(arg_max(rsi_14, date), 1) AS last_rsi_14, round(arg_max(hv_20, date), 3) AS last_hv_20, "
        "round(arg_max(beta_60, date), 2) AS last_beta_60 FROM features GROUP BY symbol ORDER BY symbol"
    )
    from ibf_core.features.pipeline import feature_columns

    out.print(f"\nfeatures ({len(feature_columns())} per row; news: {settings.news_source}):", highlight=False)
    out.print(features.to_string(index=False), highlight=False)
    signals = open_warehouse(settings).query(
        "SELECT f.symbol, f.sector, f.industry, f.origin, (SELECT count(*) FROM earnings e WHERE e.symbol = f.symbol) AS earnings "
        "FROM fundamentals f QUALIFY row_number() OVER (PARTITION BY f.symbol ORDER BY f.date DESC) = 1 ORDER BY f.symbol"
    )
    out.print(f"\nfundamentals (IBF_FUNDAMENTALS_SOURCE={settings.fundamentals_source}; what is missing: fundamentals_issues):", highlight=False)
    out.print(signals.to_string(index=False) if len(signals) else "none loaded", highlight=False)
    out.print(f"\nwarehouse: {open_warehouse(settings).describe()}\ndata loaded in {elapsed:.1f} s", highlight=False)

    # Train on everything but the last session, then forecast from the last one (the sample's "today").
    from ibf_dagster.runner import BackfillError, train as run_train

    cutoff = _default_cutoff(settings)
    err.print(f"training {', '.join(settings.model_members)} up to {cutoff} (IBF_MODEL_MAX_STEPS={settings.model_max_steps})", highlight=False)
    trained = time.perf_counter()
    summary = run_train(settings, cutoff)
    if not summary.success:
        _fail(f"training failed: {summary.error}")
    err.print(f"trained in {time.perf_counter() - trained:.1f} s", highlight=False)
    last = SAMPLE_LAST_DATE.isoformat()
    try:
        run_backfill(settings, None, last, last, "predictions", "sample", None)
    except BackfillError as exc:
        _fail(str(exc))
    _print_validation(settings, cutoff)
    forecasts = open_warehouse(settings).query(
        "SELECT horizon, rank, symbol, round(close, 2) AS close, round(100 * pred_return, 2) AS pred_pct, "
        "round(price_lower_80, 2) AS low_80, round(pred_price, 2) AS forecast, round(price_upper_80, 2) AS high_80, "
        "round(price_lower_95, 2) AS low_95, round(price_upper_95, 2) AS high_95 "
        f"FROM predictions WHERE date = DATE '{last}' AND rank <= 2 ORDER BY horizon, rank"
    )
    out.print(f"\nforecasts from {last} (top 2 per horizon by expected return; 80%/95% price intervals):", highlight=False)
    out.print(forecasts.to_string(index=False), highlight=False)
    drift_started = time.perf_counter()
    try:
        run_backfill(settings, None, last, last, "drift_scores", "sample", None)
    except BackfillError as exc:
        _fail(str(exc))
    drift = open_warehouse(settings).query(
        "SELECT detector, count(*) AS rows, sum(CAST(breached AS INT)) AS breached, "
        "count(skipped_reason) AS skipped, any_value(skipped_reason) AS why_skipped "
        f"FROM drift_scores WHERE date = DATE '{last}' GROUP BY detector ORDER BY detector"
    )
    out.print(f"\ndrift_scores for {last} ({time.perf_counter() - drift_started:.1f} s; no forecast has matured yet, so the "
              "performance detectors say so):", highlight=False)
    out.print(drift.to_string(index=False), highlight=False)
    out.print(f"\ndemo finished in {time.perf_counter() - started:.1f} s", highlight=False)
    out.print("(the `fresh` check fails by design: the embedded sample ends on 2013-03-01)", highlight=False)
    out.print('try: ibf sql "SELECT * FROM predictions ORDER BY date DESC, horizon, rank LIMIT 12"; make ui', highlight=False)


@app.command()
def train(
    cutoff: Annotated[str | None, typer.Option(help="Training cut-off session (default: the newest stored session but one)")] = None,
    verbose: Annotated[bool, typer.Option(help="Show Dagster's logs")] = False,
) -> None:
    """Materialize trained_models for one cut-off through Dagster (MLflow run + registry version)."""
    _supervised("train")
    from ibf_dagster.runner import BackfillError
    from ibf_dagster.runner import train as run_train

    log_level = _quiet_dagster(verbose)
    settings = _settings()
    day = cutoff or _default_cutoff(settings)
    started = time.perf_counter()
    try:
        summary = run_train(settings, day, log_level=log_level)
    except BackfillError as exc:
        _fail(str(exc))
    if not summary.success:
        _fail(f"training for cut-off {day} failed: {summary.error} (run {summary.run_id}; details in the Dagster UI)")
    out.print(f"trained_models {day}: run {summary.run_id} in {time.perf_counter() - started:.1f} s", highlight=False)
    _print_validation(settings, day)


def _default_cutoff(settings) -> str:
    import pandas as pd

    from ibf_core.storage.backends import open_warehouse

    dates = open_warehouse(settings).query("SELECT DISTINCT date FROM features ORDER BY date DESC LIMIT 2")
    if len(dates) < 2:
        _fail("no features stored: run ibf backfill (or make demo) first")
    return str(pd.Timestamp(dates["date"].iloc[1]).date())


def _print_validation(settings, cutoff: str) -> None:
    """The registered version's validation summary: skill versus the random walk, per horizon."""
    import pandas as pd

    from ibf_core.models.registry import list_versions, load_registered

    version = [v for v in list_versions(settings.mlflow_uri, settings.model_name) if v.cutoff.isoformat() == cutoff][-1]
    bundle = load_registered(settings.mlflow_uri, version, settings.model_cache_dir)
    table = pd.DataFrame(bundle.validation)
    table = table[table["member"] != "naive"]
    shown = table.pivot(index="horizon", columns="member", values="rel_mae_vs_naive").round(3)
    out.print(
        f"model {version.name} v{version.version} (cut-off {cutoff}, {bundle.facts['device']}); validation "
        f"{bundle.validation_start}..{bundle.validation_end}, MAE relative to the random walk (< 1 beats it):",
        highlight=False,
    )
    out.print(shown.to_string(), highlight=False)


@app.command()
def evaluate(
    horizons: Annotated[str, typer.Option(help="Comma list of horizons in sessions")] = "1,5,20",
    test_days: Annotated[int, typer.Option(help="Test origins (the newest sessions with realized targets)")] = 60,
    json_out: Annotated[Path, typer.Option("--json", help="Where to write the metrics JSON")] = Path("evaluation.json"),
    report: Annotated[Path | None, typer.Option(help="Markdown report path (default: next to --json)")] = None,
    source: Annotated[str | None, typer.Option(help="sample, csv or ibkr (default: IBF_SOURCE)")] = None,
    csv: Annotated[str | None, typer.Option(help="CSV/Parquet file or folder (implies --source csv)")] = None,
    symbols: Annotated[str | None, typer.Option(help="Comma list (default: IBF_UNIVERSE; with --source csv: the file's symbols)")] = None,
    start: Annotated[str | None, typer.Option(help="First bar date to load (default: IBF_HISTORY_START)")] = None,
    max_steps: Annotated[int | None, typer.Option(help="Neural training steps (default: IBF_MODEL_MAX_STEPS)")] = None,
    members: Annotated[str | None, typer.Option(help="Trained members, e.g. gbdt or lstm,tft,gbdt")] = None,
    refit_every: Annotated[int | None, typer.Option(help="Sessions per fold before refitting (default: --test-days)")] = None,
    policy_backtest: Annotated[bool, typer.Option(help="Also backtest drift-triggered vs fixed-cadence vs no retraining")] = False,
    policy_start: Annotated[str | None, typer.Option(help="First session of the policy backtest (default: 2 years before the data ends)")] = None,
    policy_members: Annotated[str, typer.Option(help="Members trained in the policy backtest (every retrain trains them)")] = "gbdt",
    policy_cadence: Annotated[int, typer.Option(help="Sessions between retrains of the fixed-cadence policy")] = 63,
) -> None:
    """Walk-forward evaluation of every member against the random walk; writes JSON and a markdown report."""
    from ibf_core.calendar import to_date
    from ibf_core.evaluation.pipeline import PolicyBacktest, run_evaluation
    from ibf_core.models import ModelDataError
    from ibf_core.models.config import ModelConfig, resolve_device
    from ibf_core.sources.errors import SourceError

    _quiet_dagster()
    if csv is not None and source is None:
        source = "csv"  # as in backfill: a file given means the file is read, never the sample instead
    settings = _settings(source=source, csv_path=csv, universe=symbols, model_members=members)
    try:
        wanted = tuple(sorted({int(h) for h in horizons.split(",") if h.strip()}))
        config = ModelConfig.from_settings(settings, horizons=wanted, **({"max_steps": max_steps} if max_steps else {}))
        device = resolve_device(settings.accelerator)
    except (ValueError, RuntimeError) as exc:
        _fail(str(exc), 2)
    first = to_date(start) if start else None
    policy = PolicyBacktest(policy_start, tuple(policy_members.split(",")), policy_cadence) if policy_backtest else None
    try:
        # --csv without --symbols: every symbol in the file (the default universe would be "unknown symbol")
        evaluation = run_evaluation(
            settings, config, settings.universe if symbols else None, first, test_days, refit_every, device, policy,
            progress=lambda message: err.print(message, highlight=False),
        )
    except (SourceError, ModelDataError, ValueError) as exc:
        _fail(str(exc))
    json_path, report_path = evaluation.write(json_out, report)
    for line in evaluation.summary_lines():
        out.print(line, highlight=False)
    out.print(f"wrote {json_path} and {report_path}", highlight=False)


@app.command()
def ui(port: Annotated[int, typer.Option(help="Port of the Dagster UI")] = 3000) -> None:
    """Start the Dagster UI and daemon (dagster dev) on 127.0.0.1 with the instance under IBF_HOME."""
    from ibf_dagster.instance import get_instance
    from ibf_dagster.runner import start_runs

    settings = _settings()
    instance = get_instance(settings)
    start_runs(instance, settings)  # runs a crashed dagster dev left STARTED, with their pool slots
    workspace = Path(__file__).resolve().parents[1] / "workspace.yaml"
    dagster = str(Path(sys.executable).with_name("dagster"))
    # Its own process group: Ctrl-C reaches ibf, which stops the whole group (webserver, daemon, code server, run
    # workers) and escalates, since dagster dev may take minutes to act on a SIGTERM.
    proc = subprocess.Popen([dagster, "dev", "-h", "127.0.0.1", "-p", str(port), "-w", str(workspace)], start_new_session=True)
    code = _supervise(proc)
    start_runs(instance, settings)  # runs whose workers went down with it
    raise typer.Exit(code)


def _supervise(proc: subprocess.Popen) -> int:
    """Wait for ``proc``; on SIGINT/SIGTERM stop its process group (SIGINT, then SIGTERM, then SIGKILL)."""
    stop: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, _frame: stop.append(signum)) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while proc.poll() is None and not stop:
            time.sleep(0.2)
        if proc.poll() is None:
            err.print("stopping dagster dev ...", highlight=False)
            _stop_group(proc)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 128 + stop[0] if stop else proc.returncode


def _stop_group(proc: subprocess.Popen) -> None:
    """Stop ``proc``'s process group: SIGINT (dagster dev's clean shutdown), then SIGTERM, then SIGKILL."""
    for sig, grace in ((signal.SIGINT, UI_STOP_GRACE_S[0]), (signal.SIGTERM, UI_STOP_GRACE_S[1]), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            continue
        # dagster dev is gone; its children may not be: anything left in the group gets the same signal
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return


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
    import logging

    from ibf_core.progress import set_notice_sink

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


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to bind (loopback by default)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port of the REST API")] = 8000,
    workers: Annotated[int | None, typer.Option(min=1, max=64, help="Worker processes (default IBF_API_WORKERS)")] = None,
) -> None:
    """Serve the REST API (forecasts, models, retraining, metrics; OpenAPI at /docs) with uvicorn."""
    from ibf_serve.app import serve as run_serve

    run_serve(_settings(), host=host, port=port, workers=workers)


@stack_app.command("up")
def stack_up(
    api_workers: Annotated[int, typer.Option(min=1, max=64, help="Worker processes of the API")] = 1,
) -> None:
    """Start every service of the topology on loopback ports and keep them running until Ctrl-C or `ibf stack down`."""
    from ibf_dagster.stack.run import stack

    settings = _settings()
    pid_file = settings.home_dir / "stack" / "stack.pid"
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    from ibf_core.processes import ProcessRef, current, is_running, this_host

    if pid_file.exists():  # "pid start-token": a stale file of a killed stack (or a reused pid) is no stack
        pid, _, token = pid_file.read_text().strip().partition(" ")
        if pid.isdigit() and is_running(ProcessRef(this_host(), int(pid), token or None)):
            raise typer.BadParameter(f"a stack runs already for {settings.home_dir} (pid {pid}): ibf stack down first")
    me = current()
    with stack(settings, api_workers=api_workers, announce=lambda line: err.print(line, highlight=False, markup=False)):
        pid_file.write_text(f"{me.pid} {me.start or ''}\n")
        err.print("stack up; Ctrl-C or `ibf stack down` stops it", highlight=False)
        try:
            while True:
                time.sleep(3600)
        finally:
            pid_file.unlink(missing_ok=True)


@stack_app.command("prepare")
def stack_prepare() -> None:
    """Write the Dagster instance's dagster.yaml under IBF_HOME (Postgres storage when IBF_DAGSTER_PG_URL is set,
    after a connection check) and print DAGSTER_HOME: what a container runs before dagster-webserver/-daemon."""
    from ibf_dagster.instance import check_postgres, prepare_dagster_home

    settings = _settings()
    if settings.dagster_pg_url is not None:
        check_postgres(settings)
    out.print(str(prepare_dagster_home(settings)), highlight=False)


@stack_app.command("down")
def stack_down() -> None:
    """Stop the stack `ibf stack up` runs for this IBF_HOME (every service, then its Postgres)."""
    import os

    pid_file = _settings().home_dir / "stack" / "stack.pid"
    if not pid_file.exists():
        raise typer.BadParameter("no stack runs for this IBF_HOME (no stack/stack.pid)")
    from ibf_core.processes import ProcessRef, is_running, this_host

    pid, _, token = pid_file.read_text().strip().partition(" ")
    if not pid.isdigit() or not is_running(ProcessRef(this_host(), int(pid), token or None)):
        pid_file.unlink(missing_ok=True)
        raise typer.BadParameter("the stack recorded in stack/stack.pid is not running (removed the stale file)")
    pid = int(pid)
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 120
    while pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    if pid_file.exists():
        raise RuntimeError(f"the stack (pid {pid}) did not stop within 120 s")
    err.print("stack down", highlight=False)


@api_key_app.command("new")
def api_key_new() -> None:
    """Print a new API key (shown once) and the digest to put into IBF_API_KEYS or IBF_API_KEYS_FILE."""
    from ibf_serve.auth import new_key

    key, digest = new_key()
    out.print(f"key:    {key}\ndigest: {digest}", highlight=False)
    err.print("Give the key to the client; configure only the digest (IBF_API_KEYS=<digest>). The key is not stored.")


def main_in_child() -> None:
    """The supervised child's entry point (ibf_dagster/supervise.py): the command line, run in this process."""
    main(supervise=False)


def main(supervise: bool = True) -> None:
    """The console script: every failure is one ``error:`` line and exit 1 (2 for settings), 130 when interrupted;
    ``train`` and ``backfill`` run in a supervised child (``supervise=False`` there)."""
    _options["supervise"] = supervise
    signal.signal(signal.SIGTERM, _interrupt)
    _setup_output()
    _guard_commands(app)
    app()
