"""IbkrSource with the real ib_insync client against the loopback gateway simulator (no mocks)."""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ibf_core.market.bars import BAR_COLUMNS
from helpers.bars import dividend_bars
from ibf_core.sim.ib.gateway import GatewaySimulator
from ibf_core.settings import load_settings
from ibf_core.sources.base import BarSource
from ibf_core.sources.errors import (
    ClientIdInUseError,
    ConnectivityLostError,
    GatewayUnavailableError,
    HistoricalDataError,
    PacingViolationError,
    UnknownSymbolError,
)
from ibf_core.sources.ibkr.gateway import IB_CLIENT_MODULE
from ibf_core.sources.ibkr.source import IbkrSource, RequestPacer, plan_chunks

pytest.importorskip(IB_CLIENT_MODULE)
D = dt.date




BARS = dividend_bars()


@pytest.fixture
def sim():
    with GatewaySimulator(BARS) as simulator:
        yield simulator


def source_for(port_or_ports, cache_dir: Path | None = None, **overrides) -> IbkrSource:
    """A source with tiny timeouts and backoffs so fault tests stay fast."""
    ports = port_or_ports if isinstance(port_or_ports, list) else [port_or_ports]
    params = dict(
        ports=ports, client_id=11, timeout=2.0, request_interval=0.0, identical_request_gap=0.0,
        backoff=0.01, max_backoff=0.05, retries=3, cache_dir=cache_dir,
    )  # fmt: skip
    params.update(overrides)
    return IbkrSource(**params)


def expected(symbols, start, end, frame=BARS) -> pd.DataFrame:
    rows = frame[frame.symbol.isin(symbols) & frame.date.between(pd.Timestamp(start), pd.Timestamp(end))]
    return rows.sort_values(["symbol", "date"]).reset_index(drop=True)


def assert_same_bars(got: pd.DataFrame, want: pd.DataFrame) -> None:
    assert list(got.columns) == BAR_COLUMNS
    assert list(got.symbol) == list(want.symbol) and list(got.date) == list(want.date)
    cols = ["open", "high", "low", "close", "adj_close", "volume"]
    np.testing.assert_allclose(got[cols].to_numpy(), want[cols].to_numpy(dtype=float), rtol=1e-9)


def duration_days(duration: str) -> int:
    count, unit = duration.split()
    return int(count) * {"D": 1, "Y": 366}[unit]


def closed_port() -> int:
    """A loopback port nobody listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_happy_path_values_equal_the_frame_with_adj_close_from_adjusted_last(sim, tmp_path):
    source = source_for(sim.port, tmp_path)
    assert isinstance(source, BarSource) and source.name == "ibkr"
    got = source.fetch_daily_bars(["aapl", "IBM"], D(2022, 3, 1), D(2022, 8, 31))
    assert_same_bars(got, expected(["AAPL", "IBM"], "2022-03-01", "2022-08-31"))
    assert (got.adj_close < got.close).iloc[0] and (got.adj_close == got.close).iloc[-1]  # the dividend shows
    adjusted = sim.historical_requests("ADJUSTED_LAST")
    assert [r.symbol for r in adjusted] == ["AAPL", "IBM"]
    assert all(r.end_date_time == "" and r.duration.endswith(" Y") for r in adjusted)
    trades = sim.historical_requests("TRADES")
    assert trades and all(r.bar_size == "1 day" and r.use_rth and r.format_date == 1 for r in trades)
    assert sim.handshakes == 1  # one connection for all symbols


def test_three_years_are_fetched_in_chunks_of_at_most_one_year(sim):
    got = source_for(sim.port).fetch_daily_bars(["AAPL"], D(2020, 1, 2), D(2022, 12, 30))
    assert_same_bars(got, expected(["AAPL"], "2020-01-02", "2022-12-30"))
    trades = sim.historical_requests("TRADES", "AAPL")
    assert len(trades) >= 3
    assert all(r.duration == "1 Y" or (r.duration.endswith(" D") and duration_days(r.duration) <= 365) for r in trades)
    ends = [r.end_date_time for r in trades]
    assert ends == sorted(ends, reverse=True) and ends[0].startswith("20221230")  # stepping back from the end


def test_plan_chunks_cover_the_range_without_gaps():
    chunks = plan_chunks(D(2019, 3, 15), D(2022, 12, 30))
    assert chunks[0].end == D(2022, 12, 30) and chunks[-1].first == D(2019, 3, 15)
    for newer, older in zip(chunks, chunks[1:]):
        assert older.end >= newer.first - dt.timedelta(days=1)  # contiguous (they overlap by a week)
    assert all(c.duration == "1 Y" or duration_days(c.duration) <= 365 for c in chunks)
    assert plan_chunks(D(2022, 12, 1), D(2022, 12, 30))[0].duration == "30 D"


def test_pacing_violations_are_retried_until_they_clear(sim):
    sim.set_faults(pacing_violations=2)
    got = source_for(sim.port).fetch_daily_bars(["AAPL"], D(2022, 10, 3), D(2022, 12, 30))
    assert_same_bars(got, expected(["AAPL"], "2022-10-03", "2022-12-30"))
    outcomes = [r.outcome for r in sim.historical_requests("TRADES")]
    assert outcomes[:2] == ["error:162", "error:162"] and outcomes[2].startswith("bars:") and len(outcomes) == 3


def test_pacing_that_never_clears_raises_pacing_violation_error(sim):
    sim.set_faults(pacing_violations=100)
    with pytest.raises(PacingViolationError) as info:
        source_for(sim.port, retries=2).fetch_daily_bars(["IBM"], D(2022, 10, 3), D(2022, 12, 30))
    assert info.value.code == 162 and info.value.symbol == "IBM" and "IBM 2022-10-03..2022-12-30" in str(info.value)
    assert len(sim.request_log) == 3  # the first try plus two retries


def test_unknown_symbol_raises_unknown_symbol_error_naming_it(sim):
    with pytest.raises(UnknownSymbolError) as info:
        source_for(sim.port).fetch_daily_bars(["AAPL", "ZZZZ"], D(2022, 12, 1), D(2022, 12, 30))
    assert info.value.symbol == "ZZZZ" and "ZZZZ" in str(info.value) and "200" in str(info.value)


def test_dropped_connection_reconnects_and_resumes(sim):
    sim.set_faults(drop_connections=1)
    got = source_for(sim.port).fetch_daily_bars(["AAPL"], D(2022, 1, 3), D(2022, 12, 30))
    assert_same_bars(got, expected(["AAPL"], "2022-01-03", "2022-12-30"))
    assert sim.handshakes == 2
    first, second = sim.historical_requests("TRADES")[:2]
    assert first.outcome == "dropped" and second.end_date_time == first.end_date_time
    assert second.outcome.startswith("bars")


def test_connectivity_lost_then_restored_retries_the_request(sim):
    sim.set_faults(connectivity_losses=1, restore_after=0.1)
    got = source_for(sim.port).fetch_daily_bars(["IBM"], D(2022, 11, 1), D(2022, 12, 30))
    assert_same_bars(got, expected(["IBM"], "2022-11-01", "2022-12-30"))
    outcomes = [r.outcome for r in sim.historical_requests("TRADES")]
    assert outcomes[0] == "lost" and outcomes[1].startswith("bars") and sim.handshakes == 1


def test_connectivity_never_restored_raises_connectivity_lost_error(sim):
    sim.set_faults(connectivity_losses=1, restore_after=None)
    with pytest.raises(ConnectivityLostError) as info:
        source_for(sim.port, timeout=0.4).fetch_daily_bars(["IBM"], D(2022, 11, 1), D(2022, 12, 30))
    assert info.value.code == 1100 and "IBM" in str(info.value) and "not restored" in str(info.value)


def test_slow_replies_within_the_timeout_succeed(sim):
    sim.set_faults(reply_delay=0.2)
    got = source_for(sim.port, timeout=2.0).fetch_daily_bars(["AAPL"], D(2022, 12, 1), D(2022, 12, 30))
    assert_same_bars(got, expected(["AAPL"], "2022-12-01", "2022-12-30"))


def test_slow_replies_beyond_the_timeout_raise_a_clear_error(sim):
    sim.set_faults(reply_delay=1.5)
    with pytest.raises(HistoricalDataError) as info:
        source_for(sim.port, timeout=0.3).fetch_daily_bars(["AAPL"], D(2022, 12, 1), D(2022, 12, 30))
    assert not isinstance(info.value, (PacingViolationError, ConnectivityLostError))
    assert "AAPL 2022-12-01..2022-12-30" in str(info.value) and "no reply within 0.3s" in str(info.value)


def test_client_id_in_use_raises_client_id_in_use_error(sim):
    sim.set_faults(client_ids_in_use={7})
    with pytest.raises(ClientIdInUseError) as info:
        source_for(sim.port, client_id=7).fetch_daily_bars(["AAPL"], D(2022, 12, 1), D(2022, 12, 30))
    assert "client id 7" in str(info.value) and "326" in str(info.value)


def test_port_failover_skips_a_closed_port(sim):
    dead = closed_port()
    got = source_for([dead, sim.port]).fetch_daily_bars(["IBM"], D(2022, 12, 1), D(2022, 12, 30))
    assert_same_bars(got, expected(["IBM"], "2022-12-01", "2022-12-30"))
    assert sim.handshakes == 1


def test_unreachable_gateway_names_host_and_every_port():
    ports = [closed_port(), closed_port()]
    with pytest.raises(GatewayUnavailableError) as info:
        source_for(ports).fetch_daily_bars(["AAPL"], D(2022, 12, 1), D(2022, 12, 30))
    message = str(info.value)
    assert "127.0.0.1" in message and all(str(p) in message for p in ports) and "refused" in message


def test_incremental_fetch_uses_the_cache(sim, tmp_path):
    source = source_for(sim.port, tmp_path / "cache")
    first = source.fetch_daily_bars(["AAPL"], D(2022, 1, 3), D(2022, 3, 31))
    assert_same_bars(first, expected(["AAPL"], "2022-01-03", "2022-03-31"))
    cache_file = tmp_path / "cache" / "ibkr" / "AAPL.parquet"
    assert cache_file.is_file() and not list(cache_file.parent.glob("*.tmp"))

    sim.clear_log()
    again = source.fetch_daily_bars(["AAPL"], D(2022, 1, 3), D(2022, 3, 31))
    assert sim.request_log == [] and sim.contract_requests == [] and sim.handshakes == 1  # no new connection
    assert_same_bars(again, first)

    extended = source.fetch_daily_bars(["AAPL"], D(2022, 1, 3), D(2022, 6, 30))
    assert_same_bars(extended, expected(["AAPL"], "2022-01-03", "2022-06-30"))
    trades = sim.historical_requests("TRADES")
    assert len(trades) == 1 and trades[0].end_date_time.startswith("20220630")
    assert duration_days(trades[0].duration) == (D(2022, 6, 30) - D(2022, 4, 1)).days + 1  # only the new span
    # The dividend paid in June re-based the cached adj_close: older days match the gateway's fresh values.
    np.testing.assert_allclose(extended.adj_close, expected(["AAPL"], "2022-01-03", "2022-06-30").adj_close, rtol=1e-9)


def test_a_new_dividend_rebases_cached_adj_close(tmp_path):
    cache = tmp_path / "cache"
    with GatewaySimulator(dividend_bars(dividend=1.0)) as before:
        source_for(before.port, cache).fetch_daily_bars(["IBM"], D(2022, 1, 3), D(2022, 3, 31))
    later = dividend_bars(dividend=0.95)  # the gateway now reports a dividend that was not known before
    with GatewaySimulator(later) as after:
        got = source_for(after.port, cache).fetch_daily_bars(["IBM"], D(2022, 1, 3), D(2022, 8, 31))
        assert len(after.historical_requests("TRADES")) == 1
    assert_same_bars(got, expected(["IBM"], "2022-01-03", "2022-08-31", frame=later))


def test_an_unfinished_session_is_returned_but_not_cached(tmp_path):
    midday = dt.datetime(2022, 6, 30, 16, 0, tzinfo=dt.timezone.utc)  # noon in New York, market open
    with GatewaySimulator(BARS, now=lambda: midday) as simulator:
        source = source_for(simulator.port, tmp_path, now=lambda: midday)
        got = source.fetch_daily_bars(["AAPL"], D(2022, 6, 1), D(2022, 7, 15))
        assert got.date.max() == pd.Timestamp("2022-06-30")  # nothing after "today" is asked for
        assert pd.read_parquet(tmp_path / "ibkr" / "AAPL.parquet").date.max() == pd.Timestamp("2022-06-29")
        simulator.clear_log()
        source.fetch_daily_bars(["AAPL"], D(2022, 6, 1), D(2022, 6, 30))
        [trades] = simulator.historical_requests("TRADES")
        assert trades.end_date_time.startswith("20220630") and trades.duration == "1 D"


def test_the_cache_is_written_through_the_atomic_writer(tmp_path, monkeypatch):
    import os

    import pyarrow.parquet as pq

    from ibf_core.sources.ibkr.source import BarCache

    cache = BarCache(tmp_path)
    bars = expected(["AAPL"], "2022-01-03", "2022-01-31").reset_index(drop=True)
    covered = [(D(2022, 1, 3), D(2022, 1, 31))]
    cache.save("AAPL", bars, covered)
    path = cache.path("AAPL")
    before = path.read_bytes()
    dead = path.parent / ".AAPL.parquet.deadbeef.tmp"  # left by a writer killed between staging and swap
    dead.write_bytes(b"half")
    real_write, real_fsync, synced = pq.write_table, os.fsync, []

    def half_then_fail(table, where, **kw):
        with open(where, "wb") as handle:
            handle.write(b"PAR1 half")
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        cache.save("AAPL", bars.assign(close=bars.close * 2), covered)
    assert path.read_bytes() == before  # the old cache file is intact, and no temp file is left
    assert not list(path.parent.glob("*.tmp"))
    monkeypatch.setattr(pq, "write_table", real_write)
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd) or real_fsync(fd))
    cache.save("AAPL", bars.assign(close=bars.close * 2), covered)
    assert len(synced) == 2  # the staged file and the folder
    frame, got_covered, _ = cache.load("AAPL")
    assert frame.close.tolist() == pytest.approx((bars.close * 2).tolist()) and got_covered == covered


def test_works_from_a_plain_thread_and_from_inside_a_running_loop(sim):
    results: dict[str, object] = {}

    def worker():
        try:
            asyncio.get_event_loop()
            results["had_loop"] = True
        except RuntimeError:
            results["had_loop"] = False
        results["bars"] = source_for(sim.port).fetch_daily_bars(["IBM"], D(2022, 12, 1), D(2022, 12, 30))

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join(30)
    assert results["had_loop"] is False
    assert_same_bars(results["bars"], expected(["IBM"], "2022-12-01", "2022-12-30"))

    async def inside_loop():
        return source_for(sim.port).fetch_daily_bars(["IBM"], D(2022, 12, 1), D(2022, 12, 30))

    assert_same_bars(asyncio.run(inside_loop()), expected(["IBM"], "2022-12-01", "2022-12-30"))
    assert sim.handshakes == 2


def test_request_pacer_with_an_injected_clock():
    now = [100.0]
    sleeps: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)
        now[0] += seconds

    pacer = RequestPacer(
        min_interval=1.0, max_requests=3, window=60.0, identical_gap=15.0, clock=lambda: now[0], sleep=fake_sleep
    )
    assert pacer.wait_time("a") == 0
    pacer.record("a")
    assert pacer.wait_time("b") == pytest.approx(1.0)  # minimum interval
    assert pacer.wait_time("a") == pytest.approx(15.0)  # identical request
    now[0] += 1.0
    pacer.record("b")
    now[0] += 1.0
    pacer.record("c")
    now[0] += 1.0
    assert pacer.wait_time("d") == pytest.approx(57.0)  # 3 in the window: wait until the first one ages out
    now[0] += 57.0
    assert pacer.wait_time("d") == 0 and pacer.wait_time("a") == 0

    pacer.record("d")
    asyncio.run(pacer.acquire("d"))  # identical to the last request: sleeps out the 15 s gap, then records
    assert sleeps == [pytest.approx(15.0)]
    assert pacer.wait_time("e") == pytest.approx(1.0)


def test_from_settings_maps_every_ib_setting(tmp_path):
    settings = load_settings(
        home=tmp_path, ib_host="10.0.0.5", ib_ports="4002,4001", ib_client_id=9, ib_timeout=3.5,
        ib_request_interval=1.5, ib_max_requests_per_10min=50, ib_retries=2,
    )  # fmt: skip
    source = IbkrSource.from_settings(settings)
    assert (source.host, source.ports, source.client_id, source.timeout) == ("10.0.0.5", [4002, 4001], 9, 3.5)
    assert (source.pacer.min_interval, source.pacer.max_requests, source.retries) == (1.5, 50, 2)
    assert source.cache.path("AAPL") == settings.cache_dir / "ibkr" / "AAPL.parquet"


def test_importing_the_module_does_not_import_the_client():
    import subprocess
    import sys

    from helpers.paths import ROOT as repo

    code = "import sys, ibf_core.sources.ibkr.source; print('ib_insync' in sys.modules, 'ib_async' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=repo).stdout
    assert out.strip() == "False False"
