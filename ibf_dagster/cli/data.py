"""Data commands: ``backfill`` (through Dagster), ``sql`` on the warehouse, the stored ``forecasts``."""

from __future__ import annotations

import datetime as dt
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ibf_core.models import HORIZONS
from ibf_core.settings import normalize_symbol
from ibf_dagster.cli._common import (
    _date_option, _fail, _quiet_dagster, _settings, _supervised, _symbols_option, err, out, run_backfill,
)

# Heavy imports wait until a command runs: `ibf --help` must not load pandas, duckdb or dagster.


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
    started, recorded_since = time.perf_counter(), dt.datetime.now(dt.timezone.utc)
    summaries = run_backfill(settings, wanted, first, last, assets, source, str(csv) if csv else None, log_level)
    if any("ohlc_consistent" in s.checks for s in summaries):  # market_bars ran: say what its loads recorded
        _print_bar_issues(settings, sorted({sym for s in summaries for sym in s.symbols}), recorded_since, first, last)
    err.print(f"done in {time.perf_counter() - started:.1f} s", highlight=False)


def _csv_input(settings, symbols: list[str] | None, start: str | None, end: str | None):
    """Read and check the whole csv input before any run, so a bad file changes nothing; without --symbols
    take every symbol in it, without --start/--end its first/last date."""
    from ibf_core.market.bars import BarsValidationError
    from ibf_core.sources import make_source
    from ibf_core.sources.errors import SourceError
    from ibf_core.sources.preflight import BadInputError, check_symbols

    source = make_source(settings)
    try:
        checked = source.read()
        check_symbols(source, symbols or [])  # the one pre-flight check (again in the runner, on the cached read)
    except (BarsValidationError, SourceError, BadInputError) as exc:
        _fail(str(exc))
    wanted = symbols or checked.symbols()
    dates = checked.bars.loc[checked.bars["symbol"].isin(wanted), "date"]
    first, last = start or str(dates.min().date()), end or str(dates.max().date())
    if dates.min().date() < settings.history_start and (start is None or start < settings.history_start.isoformat()):
        err.print(
            f"note: bars before IBF_HISTORY_START ({settings.history_start}) are not loaded: the partitions start there",
            highlight=False,
        )
    return wanted, first, last


def _print_bar_issues(settings, symbols: list[str], since: dt.datetime, first: str | None, last: str | None) -> None:
    """'market_bars: N rows repaired, M dropped, see bar_issues' for what this backfill's loads recorded. A load
    records issues of its partitions' dates only (a day or a month): the months of first..last are read, not the
    whole history (0.45 -> 0.09 s at 500 symbols)."""
    import pandas as pd

    from ibf_core.market.issues import IssueSummary, read_issues
    from ibf_core.storage.backends import open_warehouse

    start = None if first is None else dt.date.fromisoformat(first).replace(day=1)
    end = None if last is None else (pd.Timestamp(last) + pd.offsets.MonthEnd(0)).date()
    issues = read_issues(open_warehouse(settings), symbols, start, end)
    mine = issues[pd.to_datetime(issues["recorded_at"], utc=True) >= pd.Timestamp(since)]
    err.print(f"market_bars: {IssueSummary.of(mine).line()}", highlight=False, soft_wrap=True)


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
        table = Table(show_lines=False)
        for column in frame.columns:
            table.add_column(str(column))
        for row in frame.itertuples(index=False):
            table.add_row(*["" if v is None or (isinstance(v, float) and v != v) else str(v) for v in row])
        out.print(table)
        err.print(f"{len(frame)} rows", highlight=False)


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
