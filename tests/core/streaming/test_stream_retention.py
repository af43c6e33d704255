"""IBF_STREAM_RETENTION_DAYS: the collector deletes old sessions of the tick tables (trades, depth, quotes) at
start and once a day, through the storage interface; intraday_bars are kept."""

from __future__ import annotations

import asyncio
import datetime as dt

import pandas as pd

from ibf_core.storage.warehouse import Warehouse
from ibf_core.streaming.collector import Collector
from ibf_core.streaming.store import append_rows
from ibf_core.streaming.tables import DEPTH, INTRADAY_BARS, LIVE_TABLES, QUOTES, TRADES


def _row(spec, symbol: str, date: dt.date) -> pd.DataFrame:
    when = pd.Timestamp(dt.datetime.combine(date, dt.time(15, 0)), tz="UTC")
    values = {"symbol": symbol, "date": pd.Timestamp(date), "time": when, "received_at": when, "what": "TRADES",
              "seq": 0, "position": 0, "side": "bid", "operation": "insert", "exchange": "ARCA",
              "special_conditions": "", "delayed": False, "count": 1}
    return pd.DataFrame([{c.name: values.get(c.name, 1.0) for c in spec.columns}])


def test_old_tick_partitions_go_recent_ones_and_bars_stay(tmp_path):
    store = Warehouse(tmp_path / "home")
    store.ensure_all_tables()
    today = pd.Timestamp.now(tz="America/New_York").date()
    old, edge, recent = today - dt.timedelta(days=31), today - dt.timedelta(days=30), today - dt.timedelta(days=1)
    for spec in LIVE_TABLES:
        for day in (old, edge, recent):
            assert append_rows(store, spec, _row(spec, "AAPL", day)) == 1
    collector = Collector(store, ["AAPL"], ports=[1], retention_days=30, connect_timeout=0.1)
    asyncio.run(collector.run(0.3))  # no gateway: only the start-up prune runs
    for spec in (TRADES, DEPTH, QUOTES):
        assert store.partitions(spec) == [f"{edge:%Y-%m-%d}.AAPL", f"{recent:%Y-%m-%d}.AAPL"], spec.name
        assert len(store.query(f"SELECT * FROM {spec.name}")) == 2
    assert len(store.partitions(INTRADAY_BARS)) == 3  # bars are kept
    assert collector.prune(today + dt.timedelta(days=2)) == [f"{t.name}/{edge:%Y-%m-%d}.AAPL" for t in (TRADES, DEPTH, QUOTES)]
    assert Collector(store, ["AAPL"], retention_days=0).prune(today + dt.timedelta(days=400)) == []  # 0: forever
    assert len(store.partitions(QUOTES)) == 1
