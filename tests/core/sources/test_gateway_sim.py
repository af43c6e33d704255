"""The loopback IB Gateway simulator, driven by the real ib_insync client over TCP."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
import time

import numpy as np
import pytest

from helpers.bars import dividend_bars
from ibf_core.sim.ib.gateway import MSG_PACING, Faults, GatewaySimulator, parse_end_date_time, serve, window_start
from ibf_core.sources.errors import UnknownSymbolError

ib_insync = pytest.importorskip("ib_insync")
UTC = dt.timezone.utc




BARS = dividend_bars(start="2021-01-04")


@pytest.fixture
def sim():
    with GatewaySimulator(BARS) as simulator:
        yield simulator


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 20))


async def connect(port: int, client_id: int = 1, timeout: float = 5, readonly: bool = True, errors=None):
    ib = ib_insync.IB()
    ib.RaiseRequestErrors = True
    if errors is not None:
        ib.errorEvent += lambda req_id, code, msg, _c: errors.append((req_id, code, msg))
    await ib.connectAsync("127.0.0.1", port, client_id, timeout=timeout, readonly=readonly)
    return ib


async def history(ib, symbol, end, duration, what="TRADES", bar_size="1 day"):
    contract = ib_insync.Stock(symbol, "SMART", "USD")
    return await ib.reqHistoricalDataAsync(contract, end, duration, bar_size, what, True, timeout=5)


async def request_error(coro) -> tuple[int, str]:
    with pytest.raises(ib_insync.RequestError) as info:
        await coro
    return info.value.code, info.value.message


def test_handshake_answers_every_startup_request_quickly(sim):
    errors: list = []

    async def scenario():
        started = time.perf_counter()
        ib = await connect(sim.port, readonly=False, errors=errors)  # also sends open/completed orders
        elapsed = time.perf_counter() - started
        try:
            return elapsed, ib.client.serverVersion(), ib.managedAccounts(), ib.isConnected()
        finally:
            ib.disconnect()

    elapsed, version, accounts, connected = run(scenario())
    assert connected and version == 176 and accounts == ["DU1234567"]
    assert elapsed < 1.0, "an unanswered start-up request would make connect wait for its timeout"
    assert {code for req_id, code, _ in errors if req_id == -1} == {2104, 2106, 2158}
    assert sim.handshakes == 1


def test_contract_details_are_stable_and_unknown_symbols_get_error_200(sim):
    async def scenario():
        ib = await connect(sim.port)
        try:
            aapl, ibm = ib_insync.Stock("AAPL", "SMART", "USD"), ib_insync.Stock("IBM", "SMART", "USD")
            await ib.qualifyContractsAsync(aapl, ibm)
            again = ib_insync.Stock("AAPL", "SMART", "USD")
            await ib.qualifyContractsAsync(again)
            unknown = await request_error(ib.qualifyContractsAsync(ib_insync.Stock("NOPE", "SMART", "USD")))
            sim.set_faults(unknown_symbols={"ibm"})
            faulted = await request_error(ib.qualifyContractsAsync(ib_insync.Stock("IBM", "SMART", "USD")))
            return aapl, ibm, again, unknown, faulted
        finally:
            ib.disconnect()

    aapl, ibm, again, unknown, faulted = run(scenario())
    assert aapl.conId == again.conId == 265598 and aapl.primaryExchange == "NASDAQ" and aapl.exchange == "SMART"
    assert ibm.conId == 8314 and ibm.primaryExchange == "NYSE" and ibm.currency == "USD"
    assert unknown == (200, "No security definition has been found for the request")
    assert faulted[0] == 200
    assert sim.contract_requests == ["AAPL", "IBM", "AAPL", "NOPE", "IBM"]


def test_trades_bars_equal_the_frame_and_are_logged(sim):
    async def scenario():
        ib = await connect(sim.port, client_id=3)
        try:
            return await history(ib, "IBM", "20221230 23:59:59 US/Eastern", "1 Y")
        finally:
            ib.disconnect()

    bars = run(scenario())
    expected = BARS[(BARS.symbol == "IBM") & (BARS.date >= "2021-12-31") & (BARS.date <= "2022-12-30")]
    assert [b.date for b in bars] == [d.date() for d in expected.date]
    got = np.array([[b.open, b.high, b.low, b.close, b.volume] for b in bars])
    np.testing.assert_allclose(got, expected[["open", "high", "low", "close", "volume"]].to_numpy(), rtol=1e-12)
    [entry] = sim.request_log
    assert (entry.symbol, entry.duration, entry.bar_size, entry.what_to_show) == ("IBM", "1 Y", "1 day", "TRADES")
    assert entry.end_date_time == "20221230 23:59:59 US/Eastern" and entry.use_rth and entry.format_date == 1
    assert entry.client_id == 3 and entry.outcome == f"bars:{len(expected)}" and entry.timestamp <= time.time()


def test_end_date_time_formats_and_duration_windows():
    now = dt.datetime(2022, 7, 1, 2, 0, tzinfo=UTC)  # still June 30 in New York
    assert parse_end_date_time("", now) == dt.date(2022, 6, 30)
    assert parse_end_date_time("20220105 23:59:59 US/Eastern", now) == dt.date(2022, 1, 5)
    assert parse_end_date_time("20220105 23:59:59", now) == dt.date(2022, 1, 5)
    assert parse_end_date_time("20220106-03:00:00", now) == dt.date(2022, 1, 5)  # UTC form
    assert parse_end_date_time("20220106 04:59:59 UTC", now) == dt.date(2022, 1, 5)
    assert parse_end_date_time("20220106 10:00:00 Europe/Amsterdam", now) == dt.date(2022, 1, 6)
    end = dt.date(2022, 1, 10)  # a Monday
    assert window_start(end, 3, "D") == dt.date(2022, 1, 6)  # D counts sessions
    assert window_start(end, 1, "W") == dt.date(2022, 1, 4)
    assert window_start(end, 1, "M") == dt.date(2021, 12, 11)
    assert window_start(end, 2, "Y") == dt.date(2020, 1, 11)


def test_utc_end_date_time_over_the_wire(sim):
    async def scenario():
        ib = await connect(sim.port)
        try:
            return await history(ib, "AAPL", "20220106-03:00:00", "2 D")
        finally:
            ib.disconnect()

    assert [b.date for b in run(scenario())] == [dt.date(2022, 1, 4), dt.date(2022, 1, 5)]


def test_adjusted_last_scales_ohlc_and_refuses_an_end_date(sim):
    async def scenario():
        ib = await connect(sim.port)
        try:
            adjusted = await history(ib, "AAPL", "", "10 Y", what="ADJUSTED_LAST")
            refused = await request_error(history(ib, "AAPL", "20221230 23:59:59 US/Eastern", "1 Y", "ADJUSTED_LAST"))
            return adjusted, refused
        finally:
            ib.disconnect()

    adjusted, refused = run(scenario())
    expected = BARS[BARS.symbol == "AAPL"]
    assert len(adjusted) == len(expected)
    np.testing.assert_array_equal([b.close for b in adjusted], expected.adj_close.to_numpy())
    ratio = (expected.adj_close / expected.close).to_numpy()
    np.testing.assert_allclose([b.open for b in adjusted], expected.open.to_numpy() * ratio, rtol=1e-12)
    assert refused[0] == 321 and "adjusted last" in refused[1].lower()


def test_validation_errors_match_tws(sim):
    async def scenario():
        ib = await connect(sim.port)
        try:
            return {
                "no data": await request_error(history(ib, "AAPL", "20100105 23:59:59 US/Eastern", "5 D")),
                "midpoint": await request_error(history(ib, "AAPL", "", "1 Y", what="MIDPOINT")),
                "too many days": await request_error(history(ib, "AAPL", "", "400 D")),
                "time length": await request_error(history(ib, "AAPL", "", "1 Y", bar_size="1 min")),
                "bad duration": await request_error(history(ib, "AAPL", "", "1 Q")),
                "bad bar size": await request_error(history(ib, "AAPL", "", "1 Y", bar_size="7 mins")),
                "intraday": await request_error(history(ib, "AAPL", "", "1 D", bar_size="1 hour")),
            }
        finally:
            ib.disconnect()

    errors = run(scenario())
    hmds = "Historical Market Data Service error message:"
    assert errors["no data"] == (162, hmds + "HMDS query returned no data: AAPL@SMART Trades")
    assert errors["midpoint"][0] == 162 and "no data" in errors["midpoint"][1]
    assert errors["too many days"][0] == 321 and "must be made in years" in errors["too many days"][1]
    assert errors["time length"] == (162, "Historical Market Data Service error message:Time length exceed max.")
    assert errors["bad duration"][0] == 321 and "duration" in errors["bad duration"][1]
    assert errors["bad bar size"][0] == 321 and "bar size" in errors["bad bar size"][1]
    assert errors["intraday"][0] == 321 and "'1 day' bars only" in errors["intraday"][1]


def test_pacing_fault_answers_162_for_the_next_n_requests(sim):
    sim.set_faults(pacing_violations=2)

    async def scenario():
        ib = await connect(sim.port)
        try:
            first = await request_error(history(ib, "AAPL", "", "5 D"))
            second = await request_error(history(ib, "AAPL", "", "5 D"))
            third = await history(ib, "AAPL", "20221230 23:59:59 US/Eastern", "5 D")
            return first, second, third
        finally:
            ib.disconnect()

    first, second, third = run(scenario())
    assert first == second == (162, MSG_PACING) and "pacing violation" in MSG_PACING
    assert len(third) == 5 and sim.faults.pacing_violations == 0
    assert [r.outcome for r in sim.request_log] == ["error:162", "error:162", "bars:5"]


def test_drop_connection_fault_closes_the_socket_after_the_request(sim):
    sim.set_faults(drop_connections=1)

    async def scenario():
        ib = await connect(sim.port)
        with pytest.raises(ConnectionError):
            await history(ib, "AAPL", "20221230 23:59:59 US/Eastern", "5 D")
        dropped = not ib.isConnected()
        ib = await connect(sim.port)  # the next connection is served normally
        try:
            return dropped, await history(ib, "AAPL", "20221230 23:59:59 US/Eastern", "5 D")
        finally:
            ib.disconnect()

    dropped, bars = run(scenario())
    assert dropped and len(bars) == 5
    assert [r.outcome for r in sim.request_log] == ["dropped", "bars:5"] and sim.handshakes == 2


@pytest.mark.parametrize("answer_after_restore", [True, False])
def test_connectivity_loss_sends_1100_then_1102(sim, answer_after_restore):
    sim.set_faults(connectivity_losses=1, restore_after=0.2, answer_after_restore=answer_after_restore)
    errors: list = []

    async def scenario():
        ib = await connect(sim.port, errors=errors)
        try:
            task = history(ib, "AAPL", "20221230 23:59:59 US/Eastern", "5 D")
            try:
                return await asyncio.wait_for(task, 1.0)
            except asyncio.TimeoutError:
                return None
        finally:
            ib.disconnect()

    started = time.perf_counter()
    bars = run(scenario())
    codes = [code for req_id, code, _ in errors if code in (1100, 1102)]
    assert codes == [1100, 1102]
    if answer_after_restore:
        assert bars is not None and len(bars) == 5 and time.perf_counter() - started >= 0.2
        assert sim.request_log[0].outcome == "bars:5"
    else:
        assert bars is None and sim.request_log[0].outcome == "lost"


def test_slow_replies_are_delayed(sim):
    sim.set_faults(reply_delay=0.3)

    async def scenario():
        ib = await connect(sim.port)
        try:
            started = time.perf_counter()
            bars = await history(ib, "AAPL", "20221230 23:59:59 US/Eastern", "5 D")
            return bars, time.perf_counter() - started
        finally:
            ib.disconnect()

    bars, elapsed = run(scenario())
    assert len(bars) == 5 and elapsed >= 0.3


def test_client_id_in_use_gets_326_and_is_disconnected(sim):
    sim.set_faults(client_ids_in_use=[5])
    errors: list = []

    async def scenario():
        with pytest.raises((asyncio.TimeoutError, ConnectionError)):
            await connect(sim.port, client_id=5, timeout=0.5, errors=errors)
        other = await connect(sim.port, client_id=6)
        try:
            return other.isConnected()
        finally:
            other.disconnect()

    assert run(scenario())
    assert (-1, 326) in [(req_id, code) for req_id, code, _ in errors]
    assert sim.handshakes == 1  # only client 6 got through


def test_faults_are_validated_and_settable_from_other_threads(sim):
    with pytest.raises(ValueError, match="unknown fault"):
        sim.set_faults(pacing_violation=1)
    with pytest.raises(ValueError):
        Faults.coerce({"drop_connections": -1})
    threads = [threading.Thread(target=sim.set_faults, kwargs={"reply_delay": 0.01 * i}) for i in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sim.faults.reply_delay in {0.0, 0.01, 0.02, 0.03, 0.04}
    assert Faults.coerce({"unknown_symbols": "aapl, msft"}).unknown_symbols == frozenset({"AAPL", "MSFT"})
    sim.clear_faults()
    assert sim.faults == Faults()


class CountingSource:
    """A BarSource that records which symbols were loaded."""

    name = "counting"

    def __init__(self):
        self.calls: list[list[str]] = []

    def fetch_daily_bars(self, symbols, start, end):
        self.calls.append(list(symbols))
        if symbols[0] not in set(BARS.symbol):
            raise UnknownSymbolError(symbols[0])
        return BARS[BARS.symbol.isin(symbols)]


def test_bar_source_is_loaded_lazily_once_per_symbol():
    source = CountingSource()
    with GatewaySimulator(source) as simulator:
        assert source.calls == []

        async def scenario():
            ib = await connect(simulator.port)
            try:
                await ib.qualifyContractsAsync(ib_insync.Stock("AAPL", "SMART", "USD"))
                bars = await history(ib, "AAPL", "20221230 23:59:59 US/Eastern", "1 W")
                missing = await request_error(ib.qualifyContractsAsync(ib_insync.Stock("XYZ", "SMART", "USD")))
                return bars, missing
            finally:
                ib.disconnect()

        bars, missing = run(scenario())
    assert [b.date for b in bars][-1] == dt.date(2022, 12, 30) and len(bars) == 4  # Dec 26 was a holiday
    assert source.calls == [["AAPL"], ["XYZ"]] and missing[0] == 200


def test_serve_runs_until_stopped_and_announces_the_port():
    lines: list[str] = []
    stop = threading.Event()
    thread = threading.Thread(target=serve, kwargs=dict(port=0, bars=BARS, announce=lines.append, stop_event=stop))
    thread.start()
    try:
        deadline = time.time() + 5
        while not lines and time.time() < deadline:
            time.sleep(0.02)
        port = int(lines[0].split("127.0.0.1:")[1].split()[0])

        async def scenario():
            ib = await connect(port)
            try:
                return await history(ib, "IBM", "20221230 23:59:59 US/Eastern", "2 D")
            finally:
                ib.disconnect()

        assert len(run(scenario())) == 2
    finally:
        stop.set()
        thread.join(5)
    assert not thread.is_alive()


def test_stop_closes_the_port():
    simulator = GatewaySimulator(BARS)
    port = simulator.start()
    simulator.stop()

    async def scenario():
        with pytest.raises(ConnectionRefusedError):
            await connect(port, timeout=1)

    run(scenario())


def test_default_bars_are_the_sample_source():
    sample = pytest.importorskip("ibf_core.sources.sample")
    want = sample.SampleSource().fetch_daily_bars(["MSFT"], dt.date(2013, 2, 25), dt.date(2013, 3, 1))
    with GatewaySimulator() as simulator:

        async def scenario():
            ib = await connect(simulator.port)
            try:
                return await history(ib, "MSFT", "20130301 23:59:59 US/Eastern", "1 W")
            finally:
                ib.disconnect()

        bars = run(scenario())
    assert [b.date for b in bars] == [d.date() for d in want.date]
    np.testing.assert_allclose([b.close for b in bars], want.close.to_numpy(), rtol=1e-12)
