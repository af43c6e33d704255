"""Quoted spreads from IB BID_ASK daily bars: the real ib_insync client against the loopback simulator (no mocks)."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from helpers.bars import dividend_bars
from ibf_core.market.bars import BAR_COLUMNS
from ibf_core.sim.ib.gateway import GatewaySimulator
from ibf_core.settings import load_settings
from ibf_core.sources.ibkr.gateway import IB_CLIENT_MODULE
from ibf_core.sources.ibkr.source import IbkrSource

ib_client = pytest.importorskip(IB_CLIENT_MODULE)
D = dt.date


def quoted_bars() -> pd.DataFrame:
    """AAPL and IBM with a served spread (AAPL lacks quotes on a few days), MSFT without any quote history."""
    frame = dividend_bars(("AAPL", "IBM", "MSFT"))
    n = frame.groupby("symbol").cumcount().to_numpy()
    spread = np.where(frame.symbol == "AAPL", 0.0004 + 0.0003 * np.sin(n / 7.0), 0.0011 + 0.0002 * np.cos(n / 5.0))
    frame["spread"] = np.where(frame.symbol == "MSFT", np.nan, spread)
    no_quotes = (frame.symbol == "AAPL") & frame.date.isin(pd.to_datetime(["2021-03-15", "2022-06-01", "2022-06-02"]))
    frame.loc[no_quotes, "spread"] = np.nan
    return frame


BARS = quoted_bars()


@pytest.fixture
def sim():
    with GatewaySimulator(BARS) as simulator:
        yield simulator


def source_for(port: int, cache_dir: Path | None = None, **overrides) -> IbkrSource:
    params = dict(
        ports=[port], client_id=12, timeout=2.0, request_interval=0.0, identical_request_gap=0.0,
        backoff=0.01, max_backoff=0.05, retries=2, cache_dir=cache_dir, bid_ask=True,
    )  # fmt: skip
    params.update(overrides)
    return IbkrSource(**params)


def expected(symbols, start, end) -> pd.DataFrame:
    rows = BARS[BARS.symbol.isin(symbols) & BARS.date.between(pd.Timestamp(start), pd.Timestamp(end))]
    return rows.sort_values(["symbol", "date"]).reset_index(drop=True)


def assert_same_bars(got: pd.DataFrame, want: pd.DataFrame, with_spread: bool = True) -> None:
    assert list(got.columns) == BAR_COLUMNS + (["spread"] if with_spread else [])
    assert list(got.symbol) == list(want.symbol) and list(got.date) == list(want.date)
    cols = ["open", "high", "low", "close", "adj_close", "volume"]
    np.testing.assert_allclose(got[cols].to_numpy(), want[cols].to_numpy(dtype=float), rtol=1e-9)
    if with_spread:
        assert got.spread.dtype == "float64"
        # NaN exactly where the gateway had no quotes (never 0), the served value elsewhere.
        np.testing.assert_allclose(got.spread.to_numpy(), want.spread.to_numpy(), rtol=0, atol=1e-9)
        assert not (got.spread == 0).any()


def within_one_year(duration: str) -> bool:
    count, unit = duration.split()
    return duration == "1 Y" or (unit == "D" and int(count) <= 365)


def test_simulator_serves_bid_ask_bars_around_the_close_and_no_data_without_quotes(sim):
    async def scenario():
        ib = ib_client.IB()
        ib.RaiseRequestErrors = True
        await ib.connectAsync("127.0.0.1", sim.port, 5, timeout=5, readonly=True)
        try:
            end = "20221230 23:59:59 US/Eastern"
            quotes = await ib.reqHistoricalDataAsync(
                ib_client.Stock("IBM", "SMART", "USD"), end, "1 Y", "1 day", "BID_ASK", True, timeout=5
            )
            with pytest.raises(ib_client.RequestError) as info:
                await ib.reqHistoricalDataAsync(
                    ib_client.Stock("MSFT", "SMART", "USD"), end, "1 Y", "1 day", "BID_ASK", True, timeout=5
                )
            return quotes, (info.value.code, info.value.message)
        finally:
            ib.disconnect()

    quotes, refused = asyncio.run(asyncio.wait_for(scenario(), 20))
    want = expected(["IBM"], "2021-12-31", "2022-12-30")
    assert [b.date for b in quotes] == [d.date() for d in want.date]
    bid = np.array([b.open for b in quotes])
    ask = np.array([b.close for b in quotes])
    np.testing.assert_allclose(bid, want.close * (1 - want.spread / 2), rtol=1e-12)
    np.testing.assert_allclose(ask, want.close * (1 + want.spread / 2), rtol=1e-12)
    np.testing.assert_array_equal([b.high for b in quotes], ask)  # max ask
    np.testing.assert_array_equal([b.low for b in quotes], bid)  # min bid
    assert all(b.volume == -1 for b in quotes)  # IB sends no size with quote bars
    hmds = "Historical Market Data Service error message:"
    assert refused == (162, hmds + "HMDS query returned no data: MSFT@SMART Bid_Ask")
    logged = sim.historical_requests("BID_ASK")
    assert [(r.symbol, r.outcome) for r in logged] == [("IBM", f"bars:{len(want)}"), ("MSFT", "error:162")]


def test_spreads_equal_the_served_ones_in_chunks_of_at_most_a_year(sim):
    got = source_for(sim.port).fetch_daily_bars(["AAPL", "IBM", "MSFT"], D(2020, 1, 2), D(2022, 12, 30))
    assert_same_bars(got, expected(["AAPL", "IBM", "MSFT"], "2020-01-02", "2022-12-30"))
    aapl = got[got.symbol == "AAPL"].set_index("date").spread
    assert aapl[["2021-03-15", "2022-06-01", "2022-06-02"]].isna().all() and aapl.notna().sum() == len(aapl) - 3
    # A symbol without quote history: NaN spreads, its TRADES bars still load.
    msft = got[got.symbol == "MSFT"]
    assert len(msft) == len(expected(["MSFT"], "2020-01-02", "2022-12-30")) and msft.spread.isna().all()
    assert all(r.outcome == "error:162" for r in sim.historical_requests("BID_ASK", "MSFT"))

    for symbol in ("AAPL", "IBM", "MSFT"):
        quotes = sim.historical_requests("BID_ASK", symbol)
        trades = sim.historical_requests("TRADES", symbol)
        assert len(quotes) >= 3 and all(within_one_year(r.duration) for r in quotes)
        assert all(r.bar_size == "1 day" and r.use_rth and r.format_date == 1 for r in quotes)
        assert [(r.end_date_time, r.duration) for r in quotes] == [(r.end_date_time, r.duration) for r in trades]
    assert sim.handshakes == 1


def test_incremental_runs_do_not_refetch_quotes(sim, tmp_path):
    source = source_for(sim.port, tmp_path / "cache")
    first = source.fetch_daily_bars(["AAPL", "MSFT"], D(2021, 1, 4), D(2022, 3, 31))
    assert_same_bars(first, expected(["AAPL", "MSFT"], "2021-01-04", "2022-03-31"))
    assert len(sim.historical_requests("BID_ASK", "AAPL")) == 2  # 15 months: a year plus the rest
    cached = pd.read_parquet(tmp_path / "cache" / "ibkr" / "AAPL.parquet")
    assert "spread" in cached.columns and cached.spread.notna().sum() == len(cached) - 1  # 2021-03-15

    sim.clear_log()
    again = source.fetch_daily_bars(["AAPL", "MSFT"], D(2021, 1, 4), D(2022, 3, 31))
    assert sim.request_log == [] and sim.contract_requests == [] and sim.handshakes == 1  # nothing asked again
    assert_same_bars(again, first)  # NaN (no quotes) is cached too, not re-asked

    extended = source.fetch_daily_bars(["AAPL"], D(2021, 1, 4), D(2022, 6, 30))
    assert_same_bars(extended, expected(["AAPL"], "2021-01-04", "2022-06-30"))
    [quotes], [trades] = sim.historical_requests("BID_ASK"), sim.historical_requests("TRADES")
    new_days = (D(2022, 6, 30) - D(2022, 4, 1)).days + 1
    assert quotes.end_date_time.startswith("20220630") and quotes.duration == f"{new_days} D"
    assert (quotes.end_date_time, quotes.duration) == (trades.end_date_time, trades.duration)  # only the new span


def test_flag_off_makes_no_bid_ask_requests_and_turning_it_on_fetches_only_quotes(sim, tmp_path):
    off = source_for(sim.port, tmp_path, bid_ask=False)
    got = off.fetch_daily_bars(["IBM"], D(2022, 1, 3), D(2022, 6, 30))
    assert_same_bars(got, expected(["IBM"], "2022-01-03", "2022-06-30"), with_spread=False)
    assert sim.historical_requests("BID_ASK") == [] and sim.historical_requests("TRADES")

    sim.clear_log()
    on = source_for(sim.port, tmp_path)  # same cache: TRADES are cached, quotes were never asked for
    got = on.fetch_daily_bars(["IBM"], D(2022, 1, 3), D(2022, 6, 30))
    assert_same_bars(got, expected(["IBM"], "2022-01-03", "2022-06-30"))
    assert {r.what_to_show for r in sim.request_log} == {"BID_ASK"} and len(sim.request_log) == 1

    sim.clear_log()
    assert_same_bars(off.fetch_daily_bars(["IBM"], D(2022, 1, 3), D(2022, 6, 30)), got[BAR_COLUMNS], with_spread=False)
    assert sim.request_log == []


def test_from_settings_reads_ib_bid_ask(tmp_path):
    assert IbkrSource.from_settings(load_settings(home=tmp_path)).bid_ask is False
    assert IbkrSource.from_settings(load_settings(home=tmp_path, ib_bid_ask=True)).bid_ask is True
    assert IbkrSource.from_settings(load_settings(home=tmp_path), bid_ask=True).bid_ask is True
