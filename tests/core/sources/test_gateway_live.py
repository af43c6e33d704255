"""The simulator's live side (5-second real-time bars, top-of-book quotes) through the real ib_insync client, and
the intraday sessions it streams: consistent with the stored daily bars, deterministic."""

from __future__ import annotations

import asyncio

import numpy as np
import pandas as pd
import pytest

from helpers.live import DAY, sample_day
from ibf_core.sim.intraday import five_second_bars, quotes

ib_insync = pytest.importorskip("ib_insync")


def test_an_intraday_session_matches_its_daily_bar_and_is_deterministic():
    day = sample_day("AAPL")
    bars = five_second_bars(day)
    assert len(bars) == 4680  # 6.5 hours of 5-second bars
    assert bars.open.iloc[0] == day.open and bars.close.iloc[-1] == day.close
    assert bars.high.max() == pytest.approx(day.high) and bars.low.min() == pytest.approx(day.low)
    assert bars.volume.sum() == day.volume
    assert (bars.high >= bars[["open", "close"]].max(axis=1)).all() and (bars.low <= bars[["open", "close"]].min(axis=1)).all()
    assert bars.time.iloc[0] == pd.Timestamp("2013-02-28 14:30", tz="UTC")  # 09:30 New York
    book = quotes(day, bars)
    assert (book.ask > book.bid).all()
    pd.testing.assert_frame_equal(bars, five_second_bars(day))  # same inputs, same session
    other = five_second_bars(sample_day("MSFT"))
    assert not np.allclose(bars.close.pct_change().dropna()[:50], other.close.pct_change().dropna()[:50])


async def _connect(port: int, errors: list | None = None, client_id: int = 1):
    ib = ib_insync.IB()
    if errors is not None:
        ib.errorEvent += lambda req_id, code, msg, _c: errors.append((req_id, code, msg))
    await ib.connectAsync("127.0.0.1", port, client_id, timeout=5, readonly=True)
    return ib


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_real_time_bars_and_quotes_stream_through_ib_insync(live_sim):
    expected = five_second_bars(sample_day("AAPL")).set_index("time")

    async def scenario():
        ib = await _connect(live_sim.port)
        contract = ib_insync.Stock("AAPL", "SMART", "USD")
        bars = ib.reqRealTimeBars(contract, 5, "TRADES", False)
        ticker = ib.reqMktData(contract, "", False, False)
        # ~200 s of market time a second; wait for what is asserted (up to 20 s) rather than a fixed second, which a
        # loaded CI machine may not give the simulator (the tick-by-tick twin of this test got 0 ticks once).
        for _ in range(200):
            await asyncio.sleep(0.1)
            if len(bars) >= 20 and ticker.volume == ticker.volume and ticker.bid == ticker.bid and ticker.last == ticker.last:
                break
        got = list(bars)
        quote = (ticker.bid, ticker.ask, ticker.last, ticker.volume)
        ib.cancelRealTimeBars(bars)
        ib.disconnect()
        return got, quote

    got, (bid, ask, last, volume) = run(scenario())
    assert len(got) >= 20
    times = [pd.Timestamp(b.time).tz_convert("UTC") for b in got]
    assert all(b - a == pd.Timedelta(seconds=5) for a, b in zip(times, times[1:]))  # no gap, no duplicate
    assert times[0] >= pd.Timestamp("2013-02-28 15:00", tz="UTC")  # from the clock's time on, not the open
    for bar, when in zip(got, times):
        row = expected.loc[when]
        assert (bar.open_, bar.high, bar.low, bar.close, bar.volume) == pytest.approx(
            (row.open, row.high, row.low, row.close, row.volume), rel=1e-6)
    assert 0 < bid < ask and last > 0 and volume > 0


def test_line_limit_missing_subscription_delayed_data_and_pacing(live_sim):
    live_sim.set_faults(max_market_data_lines=2, no_market_data={"IBM"}, realtime_bar_requests_per_10min=2)
    errors: list = []

    async def scenario():
        ib = await _connect(live_sim.port, errors)
        stock = lambda s: ib_insync.Stock(s, "SMART", "USD")  # noqa: E731
        ib.reqMktData(stock("AAPL"))
        ib.reqMktData(stock("IBM"))  # live: no subscription
        msft = ib.reqMktData(stock("MSFT"))
        ib.reqMktData(stock("GOOG"))  # a third line: over the limit
        await asyncio.sleep(0.5)
        ib.cancelMktData(msft.contract)  # frees its line
        ib.reqMarketDataType(3)  # delayed when live is not subscribed
        delayed = ib.reqMktData(stock("IBM"))
        for s in ("AAPL", "MSFT", "GOOG"):
            ib.reqRealTimeBars(stock(s), 5, "TRADES", False)
        await asyncio.sleep(0.5)
        # The first delayed quote comes at the next quote time of the book of 15 minutes ago; on a loaded CI
        # machine that can take longer than the 0.5 s above (CI of stop 17 failed on a NaN here).
        for _ in range(100):
            if delayed.last == delayed.last:  # not NaN
                break
            await asyncio.sleep(0.1)
        price = delayed.last
        ib.disconnect()
        return price

    delayed_last = run(scenario())
    codes = [code for _, code, _ in errors if code not in (2104, 2106, 2158)]
    assert codes.count(10089) == 1 and codes.count(101) == 1 and codes.count(420) == 1, errors
    assert any("IBM" in msg for _, code, msg in errors if code == 10089)
    assert delayed_last > 0  # delayed ticks (types 66-68) served after reqMarketDataType(3)
    assert ("market_data", "IBM", "DELAYED", 1) in live_sim.live_requests()


def test_a_connectivity_loss_mid_stream_is_1100_then_1102_and_the_stream_goes_on(live_sim):
    live_sim.set_faults(stream_connectivity_loss_after_bars=5, restore_after=0.2)
    errors: list = []

    async def scenario():
        ib = await _connect(live_sim.port, errors)
        bars = ib.reqRealTimeBars(ib_insync.Stock("MSFT", "SMART", "USD"), 5, "TRADES", False)
        for _ in range(200):  # until the stream is back and has gone on (up to 20 s, not a fixed second)
            await asyncio.sleep(0.1)
            if 1102 in [code for _, code, _ in errors] and len(bars) > 10:
                break
        got = [pd.Timestamp(b.time) for b in bars]
        ib.disconnect()
        return got

    times = run(scenario())
    codes = [code for _, code, _ in errors]
    assert codes.index(1100) < codes.index(1102)
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert len(times) > 10 and max(gaps) > pd.Timedelta(seconds=5)  # the lost stretch is not resent
    assert len(set(times)) == len(times)


def test_a_dropped_stream_closes_the_connection(live_sim):
    live_sim.set_faults(drop_stream_after_bars=3)

    async def scenario():
        ib = await _connect(live_sim.port)
        bars = ib.reqRealTimeBars(ib_insync.Stock("AAPL", "SMART", "USD"), 5, "TRADES", False)
        for _ in range(100):  # until the simulator drops the connection (up to 10 s)
            await asyncio.sleep(0.1)
            if not ib.isConnected():
                break
        return len(bars), ib.isConnected()

    n, connected = run(scenario())
    assert n == 3 and not connected


# ----- the collector (ibf stream) ---------------------------------------------------------------------
def _collect(sim, home, symbols, seconds, **kwargs):
    from ibf_core.storage.warehouse import Warehouse
    from ibf_core.streaming.collector import Collector

    store = Warehouse(home)
    collector = Collector(store, symbols, ports=[sim.port], flush_s=0.2, **kwargs)
    return store, asyncio.run(collector.run(seconds))


def test_the_collector_stores_every_streamed_bar_once_and_the_quotes(live_sim, tmp_path):
    store, stats = _collect(live_sim, tmp_path / "home", ["AAPL", "MSFT"], 1.5)
    bars = store.query("SELECT symbol, time, open, high, low, close, volume FROM intraday_bars ORDER BY symbol, time")
    assert stats.bars == len(bars) > 2 * 20 and stats.connects == 1
    for symbol, got in bars.groupby("symbol"):
        expected = five_second_bars(sample_day(symbol)).set_index("time")
        times = pd.to_datetime(got.time, utc=True)
        assert (times.diff().dropna() == pd.Timedelta(seconds=5)).all()  # no gap, no duplicate
        want = expected.loc[times]
        assert got.close.to_numpy() == pytest.approx(want.close.to_numpy())
        assert got.volume.to_numpy() == pytest.approx(want.volume.to_numpy())
    book = store.query("SELECT symbol, date, time, bid, ask FROM quotes WHERE bid IS NOT NULL AND ask IS NOT NULL")
    assert len(book) > 10 and (book.ask > book.bid).all()
    assert set(pd.to_datetime(book.date).dt.date) == {DAY}  # market time from RTVolume, not the wall clock
    assert max(stats.lags_s) < 5


def test_the_collector_reconnects_after_a_dropped_stream_without_duplicates(live_sim, tmp_path):
    live_sim.set_faults(drop_stream_after_bars=10)
    store, stats = _collect(live_sim, tmp_path / "home", ["AAPL"], 2.0)
    assert stats.connects >= 2
    bars = store.query("SELECT time FROM intraday_bars")
    assert len(bars) == bars.time.nunique() == stats.bars > 10


def test_symbols_beyond_the_line_limit_are_named_and_missing_subscriptions_fall_back_to_delayed(live_sim, tmp_path):
    live_sim.set_faults(no_market_data={"IBM"})
    store, stats = _collect(live_sim, tmp_path / "home", ["IBM", "AAPL", "MSFT"], 1.0, max_lines=2)
    assert stats.unserved == ["MSFT"] and stats.delayed == {"IBM"}
    served = store.query("SELECT DISTINCT symbol, delayed FROM quotes WHERE last IS NOT NULL ORDER BY symbol")
    assert served.to_dict("records") == [{"symbol": "AAPL", "delayed": False}, {"symbol": "IBM", "delayed": True}]


def test_gateway_sim_stream_and_sql_on_loopback_and_a_killed_collector_restarts_without_duplicates(ibf_home):
    import os
    import signal
    import subprocess
    import time

    from helpers.cli import IBF_BIN, run_ibf
    from ibf_core.processes import free_port

    port = free_port()
    env = {**os.environ, "IBF_IB_PORTS": str(port), "IBF_STREAM_FLUSH_SECONDS": "0.2"}
    sim = subprocess.Popen([IBF_BIN, "gateway-sim", "--port", str(port), "--live-start", "2013-02-28", "--speed", "100"],
                           env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert f":{port}" in sim.stderr.readline()  # listening
        from ibf_core.storage.warehouse import Warehouse

        collector = subprocess.Popen([IBF_BIN, "stream", "--symbols", "AAPL,MSFT"], env=env)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and collector.poll() is None:
            if (ibf_home / "lake" / "intraday_bars").exists() and Warehouse(ibf_home).query(
                    "SELECT count(*) AS n FROM intraday_bars").n.iloc[0] > 0:
                break
            time.sleep(0.2)
        time.sleep(1)
        collector.send_signal(signal.SIGKILL)  # mid-stream: at most the batch in memory is lost
        collector.wait()
        first = run_ibf("sql", "SELECT count(*) AS n FROM intraday_bars", "--format", "csv", env=env)
        assert first.returncode == 0, first.stderr
        done = run_ibf("stream", "--symbols", "AAPL,MSFT", "--duration", "2", env=env)
        assert done.returncode == 0 and "bars" in done.stdout, done.stderr
        shown = run_ibf("sql", "SELECT symbol, count(*) AS n, count(DISTINCT time) AS d, min(date) AS day "
                        "FROM intraday_bars GROUP BY 1 ORDER BY 1", "--format", "csv", env=env)
        rows = [line.split(",") for line in shown.stdout.splitlines()[1:]]
        assert [r[0] for r in rows] == ["AAPL", "MSFT"]
        assert all(r[1] == r[2] and int(r[1]) > 20 and r[3] == "2013-02-28" for r in rows), rows  # no duplicates
        assert sum(int(r[1]) for r in rows) > int(first.stdout.splitlines()[1]) > 0  # both runs stored
    finally:
        sim.send_signal(signal.SIGTERM)
        sim.wait(20)
