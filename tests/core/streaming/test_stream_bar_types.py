"""ibf stream with several real-time bar types (IBF_STREAM_BAR_TYPES): each stored under its ``what``, with IB's
meaning of MIDPOINT and BID_ASK bars, against the simulator through the real ib_insync client."""

from __future__ import annotations

import asyncio

import pandas as pd
import pytest

from ibf_core.sim.ib.live import quote_bars
from ibf_core.sim.intraday import five_second_bars, quotes
from ibf_core.settings import SettingsError, load_settings
from helpers.live import sample_day

pytest.importorskip("ib_insync")


def test_bar_types_setting_is_a_validated_comma_list(monkeypatch):
    monkeypatch.setenv("IBF_STREAM_BAR_TYPES", "trades, BID_ASK,trades")
    assert load_settings().stream_bar_types == ["TRADES", "BID_ASK"]
    monkeypatch.setenv("IBF_STREAM_BAR_TYPES", "TRADES,BIDASK")
    with pytest.raises(SettingsError, match="IBF_STREAM_BAR_TYPES.*BIDASK"):
        load_settings()
    monkeypatch.delenv("IBF_STREAM_BAR_TYPES")
    assert load_settings().stream_bar_types == ["TRADES"]


def test_bid_ask_bars_follow_ibs_meaning():
    day = sample_day("AAPL")
    trades = five_second_bars(day)
    book = quotes(day, trades)
    bars = quote_bars(trades, book, "BID_ASK")
    # From the second bar on, the previous quote stands 4 of the 5 seconds.
    i = 100
    prev, cur = book.iloc[i - 1], book.iloc[i]
    assert bars.open.iloc[i] == pytest.approx(0.8 * prev.bid + 0.2 * cur.bid)
    assert bars.close.iloc[i] == pytest.approx(0.8 * prev.ask + 0.2 * cur.ask)
    assert bars.high.iloc[i] == max(prev.ask, cur.ask) and bars.low.iloc[i] == min(prev.bid, cur.bid)
    assert (bars.low <= bars.open).all() and (bars.open < bars.close).all() and (bars.close <= bars.high).all()
    assert (bars[["volume", "wap", "count"]] == -1).all().all()
    mid = quote_bars(trades, book, "MIDPOINT")
    assert mid.close.to_numpy() == pytest.approx(((book.bid + book.ask) / 2).to_numpy())
    assert mid.open.iloc[1:].to_numpy() == pytest.approx(mid.close.iloc[:-1].to_numpy())


def test_the_collector_stores_each_bar_type_keyed_by_what(live_sim, tmp_path):
    from ibf_core.storage.warehouse import Warehouse
    from ibf_core.streaming.collector import Collector

    store = Warehouse(tmp_path / "home")
    collector = Collector(store, ["AAPL", "MSFT"], ports=[live_sim.port], flush_s=0.2,
                          bar_types=("TRADES", "MIDPOINT", "BID_ASK"))
    stats = asyncio.run(collector.run(1.5))
    stored = store.query("SELECT symbol, what, time, open, high, low, close, volume FROM intraday_bars")
    assert stats.bars == len(stored)
    counts = stored.groupby(["symbol", "what"]).size()
    assert set(counts.index) == {(s, w) for s in ("AAPL", "MSFT") for w in ("TRADES", "MIDPOINT", "BID_ASK")}
    assert (counts > 15).all(), counts
    assert not stored.duplicated(["symbol", "what", "time"]).any()
    for (symbol, what), got in stored.groupby(["symbol", "what"]):
        day = sample_day(symbol)
        trades = five_second_bars(day)
        want = trades if what == "TRADES" else quote_bars(trades, quotes(day, trades), what)
        want = want.set_index("time").loc[pd.to_datetime(got.time, utc=True)]
        assert got[["open", "high", "low", "close"]].to_numpy() == pytest.approx(
            want[["open", "high", "low", "close"]].to_numpy(), rel=1e-9)
        assert (got.volume == -1).all() == (what != "TRADES")
    # What the live sim granted: one real-time-bar line per symbol and type.
    granted = {(s, w) for kind, s, w, _ in live_sim.live_requests() if kind == "realtime_bars"}
    assert granted == set(counts.index)
