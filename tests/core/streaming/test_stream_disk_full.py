"""``ibf stream`` on a full disk, against the simulator through the real ib_insync client: a flush that hits ENOSPC
(the atomic writer's fault switch) keeps its rows in memory with one warning line and the next flush writes them;
no bar is lost or stored twice. Past ``max_pending_rows`` held rows the collector stops with the error."""

from __future__ import annotations

import asyncio
import logging

import pandas as pd
import pytest
from helpers.live import sample_day

from ibf_core.sim.intraday import five_second_bars
from ibf_core.storage import atomic
from ibf_core.storage.interface import DiskFullError
from ibf_core.storage.warehouse import Warehouse
from ibf_core.streaming.collector import Collector

pytest.importorskip("ib_insync")
FAILING_FLUSHES = 3


@pytest.fixture(autouse=True)
def no_faults_after():
    yield
    atomic.set_faults(None)


def full_disk_warnings(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno == logging.WARNING and "no space left on device writing" in r.getMessage()]


def test_failing_flushes_keep_their_rows_and_the_next_flush_writes_every_bar_once(live_sim, tmp_path, caplog):
    store = Warehouse(tmp_path / "home")
    store.ensure_all_tables()  # the table folders exist: each failing flush is one failing data file
    atomic.set_faults(atomic.WriterFaults(full_disk_files=FAILING_FLUSHES))
    collector = Collector(store, ["AAPL", "MSFT"], ports=[live_sim.port], flush_s=0.2)
    with caplog.at_level(logging.WARNING, logger="ibf_core.streaming.collector"):
        stats = asyncio.run(collector.run(2.5))
    warnings = full_disk_warnings(caplog)
    assert len(warnings) == FAILING_FLUSHES  # one line per failing flush
    assert all("\n" not in r.getMessage() and "row(s) kept in memory" in r.getMessage() for r in warnings)
    assert atomic.set_faults(None) == atomic.WriterFaults()  # every injected failure was met
    assert collector.full_disk is None and collector.pending_rows() == 0

    bars = store.query("SELECT symbol, time, close, received_at FROM intraday_bars ORDER BY symbol, time")
    assert len(bars) == stats.bars > 20
    assert not bars.duplicated(["symbol", "time"]).any()
    # rows received before the first failure are stored: the failing batch was kept, not dropped
    first_failure = pd.Timestamp(warnings[0].created, unit="s", tz="UTC")
    assert (pd.to_datetime(bars.received_at, utc=True) < first_failure).any()
    for symbol, got in bars.groupby("symbol"):
        times = pd.to_datetime(got.time, utc=True)
        want = five_second_bars(sample_day(symbol)).set_index("time")
        assert got.close.to_numpy() == pytest.approx(want.loc[times].close.to_numpy())
        stretch = want.loc[times.min():times.max()].index
        assert stretch.difference(pd.DatetimeIndex(times)).empty, f"{symbol}: bars lost"
    assert not [p for p in store.home.rglob("*") if atomic.temp_target(p) is not None]


def test_held_rows_are_bounded_and_a_disk_still_full_at_the_end_is_an_error(live_sim, tmp_path, caplog):
    store = Warehouse(tmp_path / "home")
    store.ensure_all_tables()
    atomic.set_faults(atomic.WriterFaults(full_disk_files=-1))
    collector = Collector(store, ["AAPL"], ports=[live_sim.port], flush_s=0.2, max_pending_rows=30)
    with pytest.raises(DiskFullError, match=r"more than IBF_STREAM_MAX_PENDING_ROWS=30: stopping") as raised:
        asyncio.run(collector.run(20.0))  # stops well before: the bound is reached within a second or two
    assert str(raised.value).startswith("no space left on device writing ")
    assert store.query("SELECT count(*) AS n FROM intraday_bars").n[0] == 0

    atomic.set_faults(atomic.WriterFaults(full_disk_files=-1))
    with pytest.raises(DiskFullError, match=r"rows received were not stored$"):
        asyncio.run(Collector(store, ["AAPL"], ports=[live_sim.port], flush_s=0.2).run(0.8))
