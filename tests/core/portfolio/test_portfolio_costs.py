"""IB's fixed commission (the pricing page's own examples), regulatory fees, and the spread a trade crosses."""

import numpy as np
import pandas as pd
import pytest

from helpers.bars import make_bars
from ibf_core.features.pipeline import compute_features
from ibf_core.portfolio.costs import CostModel, ib_commission, regulatory_fees, spread_estimates, trade_costs


@pytest.mark.parametrize(
    "shares,price,commission",
    [
        (100, 25.0, 1.00),  # 0.50 per share -> the USD 1.00 minimum per order
        (1_000, 25.0, 5.00),  # 0.005 per share
        (1_000, 0.25, 2.50),  # 5.00 per share, capped at 1% of the USD 250 trade value
        (40_000, 120.0, 200.00),  # a large order: per share, far below the cap
        (-1_000, 25.0, 5.00),  # a sale costs the same
        (50, 1.0, 0.50),  # the 1% maximum beats the minimum on a USD 50 trade
        (0, 25.0, 0.00),  # no trade, no order
    ],
)
def test_ib_fixed_commission_examples(shares, price, commission):
    assert float(ib_commission(shares, price)) == pytest.approx(commission)


def test_regulatory_fees_fall_on_sales_and_the_taf_is_capped():
    buy, sell = regulatory_fees(np.array([1_000.0, -1_000.0]), 50.0)
    assert buy == pytest.approx(1_000 * 0.000072)  # CAT only
    assert sell == pytest.approx(50_000 * 0.0000278 + 1_000 * 0.000166 + 1_000 * 0.000072)
    big_sale = float(regulatory_fees(-100_000.0, 10.0))
    assert big_sale == pytest.approx(1_000_000 * 0.0000278 + 8.30 + 100_000 * 0.000072)


def test_trade_costs_add_commission_fees_half_the_spread_and_slippage():
    model = CostModel(capital=100_000, slippage_bps=2.0)
    parts = trade_costs(np.array([0.10, -0.05, 0.0]), 100_000.0, np.array([50.0, 20.0, 10.0]), np.array([0.002, 0.004, 0.5]), model)
    # 10,000 USD = 200 shares (commission 1.00), 5,000 USD sold = 250 shares (1.25)
    assert parts["commission"] == pytest.approx(2.25)
    assert parts["spread"] == pytest.approx(10_000 * 0.001 + 5_000 * 0.002)
    assert parts["slippage"] == pytest.approx(15_000 * 2e-4)
    assert parts["fees"] == pytest.approx(5_000 * 0.0000278 + 250 * 0.000166 + 450 * 0.000072)
    assert parts["total"] == pytest.approx(sum(v for k, v in parts.items() if k != "total"))
    with pytest.raises(ValueError, match="capital"):
        CostModel(capital=0)


def test_the_quoted_spread_wins_and_corwin_schultz_fills_the_rest():
    bars = make_bars(("AAA", "BBB"), start="2021-01-04", end="2021-03-31")
    bars["spread"] = np.where(bars["symbol"] == "AAA", 0.0004, np.nan)
    wide = spread_estimates(bars)
    assert (wide["AAA"] == 0.0004).all()
    assert wide["BBB"].notna().all() and (wide["BBB"] >= 0).all() and wide["BBB"].max() < 0.05  # a ~2% daily range
    # Where the feature has its full 20-session window, the estimate is the cs_spread_20 feature itself.
    features = compute_features(bars.drop(columns="spread")).assign(date=lambda f: pd.to_datetime(f["date"]))
    feature = features.pivot(index="date", columns="symbol", values="cs_spread_20")
    known = feature["BBB"].notna()
    assert known.sum() > 30
    np.testing.assert_allclose(wide.loc[known[known].index, "BBB"], feature.loc[known, "BBB"], rtol=1e-12)
    no_quotes = spread_estimates(bars.drop(columns="spread"))
    assert no_quotes["BBB"].iloc[1:].equals(wide["BBB"].iloc[1:]) and (no_quotes["AAA"] > 0).any()
    assert no_quotes.iloc[0].tolist() == [0.0, 0.0]  # the first session has no 2-day estimate anywhere: 0
