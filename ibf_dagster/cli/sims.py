"""Simulators and live data: ``gateway-sim`` (the IB API on loopback), ``av-sim`` (Alpha Vantage on loopback) and
``stream`` (IB real-time bars and quotes into the warehouse)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Annotated

import typer

from ibf_core.streaming import collect
from ibf_dagster.cli._common import _fail, _settings, _symbols_option, err, out, preflight_symbols

# Heavy imports wait until a command runs: `ibf --help` must not load pandas or duckdb.


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
    import pandas as pd

    from ibf_core.sim.ib.live import LiveClock, session_start
    from ibf_core.sim.ib.protocol import parse_faults
    from ibf_core.sim.ib.gateway import serve
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


def stream(
    symbols: Annotated[str | None, typer.Option(help="Comma list in priority order (the watch list first); default: IBF_UNIVERSE")] = None,
    duration: Annotated[float | None, typer.Option(help="Seconds to collect; default: until Ctrl-C")] = None,
) -> None:
    """Stream IB 5-second real-time bars and top-of-book quotes into intraday_bars and quotes (ib_insync)."""
    from ibf_core.sources.ibkr.source import IbkrSource
    from ibf_core.storage.backends import open_warehouse

    settings = _settings()
    wanted = _symbols_option(symbols)
    if duration is not None and duration <= 0:
        _fail(f"--duration {duration}: must be > 0", 2)
    preflight_symbols(settings, wanted or settings.universe, IbkrSource.from_settings(settings))  # IB streams, whatever IBF_SOURCE
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
    from ibf_core.sim.alphavantage.server import SimulatorError, parse_faults, serve
    from ibf_core.sim.alphavantage.content import load_articles, load_fundamentals_file

    try:
        faults = parse_faults(fault or [])
        feed = load_articles(str(articles)) if articles else None
        data = load_fundamentals_file(str(fundamentals)) if fundamentals else None
    except (ValueError, OSError, SimulatorError) as exc:
        _fail(str(exc), 2)
    serve(host, port, feed, faults, announce=lambda line: err.print(line, highlight=False, markup=False), fundamentals=data)
