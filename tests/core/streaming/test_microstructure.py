"""microstructure_daily against values computed by hand on a small fixed stream (4 bars, 2 quotes)."""

import math

import numpy as np
import pandas as pd
import pytest

from ibf_core.streaming.microstructure import microstructure_daily

T0 = pd.Timestamp("2013-02-28 14:30:00", tz="UTC")


def stream():
    bars = pd.DataFrame({
        "symbol": "AAA", "date": pd.Timestamp("2013-02-28"), "what": "TRADES",
        "time": [T0 + pd.Timedelta(seconds=5 * k) for k in range(4)],
        "close": [100.00, 100.10, 100.05, 100.20], "wap": [100.02, 100.08, 100.04, 100.15],
        "volume": [1000.0, 2000.0, 1000.0, 1000.0], "count": [10, 10, 5, 4],
    })
    quotes = pd.DataFrame({
        "symbol": "AAA", "date": pd.Timestamp("2013-02-28"),
        "time": [T0, T0 + pd.Timedelta(seconds=7)],
        "bid": [99.99, 100.04], "ask": [100.01, 100.06], "bid_size": [300.0, 100.0], "ask_size": [100.0, 100.0],
    })
    return bars, quotes


def test_every_measure_matches_the_hand_computed_value():
    row = microstructure_daily(*stream()).iloc[0]
    # quotes stand 7 s (q0) and 13 s (q1, until the last bar ends at 14:30:20)
    assert row.quoted_spread_tw == pytest.approx((7 * 0.02 / 100.00 + 13 * 0.02 / 100.05) / 20)
    assert row.depth_imbalance == pytest.approx(7 * 0.5 / 20)
    # standing mids at the bar ends: 100.00, 100.05, 100.05, 100.05; Lee-Ready signs: tick 0 (at the mid, no
    # previous close), +1 (above), -1 (at the mid, down-tick), +1 (above)
    assert row.trade_flow_imbalance == pytest.approx((0 + 2000 - 1000 + 1000) / 5000)
    effective = (2 * 0.02 / 100.00 * 1000 + 2 * 0.03 / 100.05 * 2000 + 2 * 0.01 / 100.05 * 1000 + 2 * 0.10 / 100.05 * 1000) / 5000
    assert row.effective_spread == pytest.approx(effective)
    r = [math.log(100.10 / 100.00), math.log(100.05 / 100.10), math.log(100.20 / 100.05)]
    assert row.realized_vol == pytest.approx(math.sqrt(sum(x * x for x in r)))
    vwap = (100.02 * 1000 + 100.08 * 2000 + 100.04 * 1000 + 100.15 * 1000) / 5000
    assert row.vwap_deviation == pytest.approx(math.log(100.20 / vwap))
    assert row.trade_size_mean == pytest.approx((100 + 200 + 200 + 250) / 4)
    assert row.trade_size_p90 == pytest.approx(np.quantile([100, 200, 200, 250], 0.9))
    x = np.array([2000, -1000, 1000]) / 1e6  # signed volume (millions) of the bars with a return
    y = 1e4 * np.array(r)
    slope = ((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum()
    assert row.kyle_lambda == pytest.approx(slope)
    assert (row.n_bars, row.n_quotes) == (4, 2)


def test_symbols_are_computed_independently_in_one_call():
    bars, quotes = stream()
    other_bars = bars.assign(symbol="BBB", close=bars.close * 2, wap=bars.wap * 2)
    other_quotes = quotes.assign(symbol="BBB", bid=quotes.bid * 2, ask=quotes.ask * 2)
    both = microstructure_daily(pd.concat([bars, other_bars]), pd.concat([quotes, other_quotes]))
    alone = microstructure_daily(bars, quotes)
    assert both.symbol.tolist() == ["AAA", "BBB"]
    pd.testing.assert_series_equal(both.iloc[0], alone.iloc[0], check_names=False)
    assert both.iloc[1].quoted_spread_tw == pytest.approx(alone.iloc[0].quoted_spread_tw)  # scale-free
