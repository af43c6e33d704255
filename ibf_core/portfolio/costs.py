"""Trading costs: Interactive Brokers' fixed commission for US stocks, regulatory fees, half the spread, slippage.

IBKR Pro *fixed* pricing for US stocks, as published on IB's pricing page
https://www.interactivebrokers.com/en/pricing/commissions-stocks.php (the figures change: check them there):
USD 0.005 per share, minimum USD 1.00 per order, maximum 1% of trade value; the page's examples: 100 shares at
USD 25 = USD 1.00, 1,000 shares at USD 25 = USD 5.00, 1,000 shares at USD 0.25 = USD 2.50. Exchange and clearing
fees are included in fixed pricing; regulatory fees pass through (same page): SEC transaction fee 0.0000278 x
value of sales, FINRA trading activity fee 0.000166 x shares sold (at most USD 8.30 per trade, FINRA's cap) and
FINRA CAT fee 0.000072 x shares. Tiered pricing is not modelled, nor are the borrow fees of shorts.

Crossing the spread costs half of it: the real relative quoted spread of ``market_bars.spread`` where IB delivered it,
else the Corwin-Schultz estimate from the daily high and low (``ibf_core.features.microstructure``), averaged over
the trailing 20 sessions. Shares are trade value / the split-adjusted close (fractional).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ibf_core.features import Panel
from ibf_core.features.microstructure import WINDOW, corwin_schultz


@dataclass(frozen=True)
class CostModel:
    """What a trade costs; money in USD, ``capital`` the portfolio's NAV at 1.0."""

    capital: float = 100_000.0
    slippage_bps: float = 0.0  # per traded dollar, beyond commission, fees and half the spread
    per_share: float = 0.005
    min_per_order: float = 1.00
    max_rate: float = 0.01  # of trade value
    sec_fee_rate: float = 0.0000278  # x value of sales
    finra_taf_per_share: float = 0.000166  # x shares sold
    finra_taf_max: float = 8.30  # per trade
    cat_fee_per_share: float = 0.000072  # x shares (buys and sells)
    half_spread: bool = True

    def __post_init__(self) -> None:
        for name in ("capital", "slippage_bps", "per_share", "min_per_order", "max_rate"):
            value = getattr(self, name)
            if not np.isfinite(value) or value < 0 or (name == "capital" and value == 0):
                bound = "> 0" if name == "capital" else ">= 0"
                raise ValueError(f"{name}: must be a finite number {bound} (got {value!r})")


def ib_commission(shares: np.ndarray | float, price: np.ndarray | float, model: CostModel = CostModel()) -> np.ndarray:
    """IB's fixed commission per order: max(0.005 x shares, 1.00), at most 1% of the trade value; 0 for no trade."""
    qty = np.abs(np.asarray(shares, dtype=float))
    value = qty * np.asarray(price, dtype=float)
    fee = np.minimum(np.maximum(model.per_share * qty, model.min_per_order), model.max_rate * value)
    return np.where(qty > 0, fee, 0.0)


def regulatory_fees(
    shares: np.ndarray | float, price: np.ndarray | float, model: CostModel = CostModel()
) -> np.ndarray:
    """SEC and FINRA TAF fees on sales (``shares`` < 0) and the CAT fee on every trade."""
    signed = np.asarray(shares, dtype=float)
    sold = np.clip(-signed, 0.0, None)
    sec = model.sec_fee_rate * sold * np.asarray(price, dtype=float)
    taf = np.minimum(model.finra_taf_per_share * sold, model.finra_taf_max)
    return sec + taf + model.cat_fee_per_share * np.abs(signed)


def trade_costs(
    change: np.ndarray, nav_dollars: float, price: np.ndarray, spread: np.ndarray, model: CostModel = CostModel()
) -> dict[str, float]:
    """USD costs of moving weights by ``change`` (fractions of ``nav_dollars``) at ``price`` with relative ``spread``.

    Returns ``commission``, ``fees``, ``spread``, ``slippage`` and their ``total``.
    """
    delta = np.asarray(change, dtype=float)
    traded = np.abs(delta) > 0
    value = np.abs(delta) * nav_dollars
    with np.errstate(divide="ignore", invalid="ignore"):
        shares = np.where(traded, np.sign(delta) * value / price, 0.0)
    parts = {
        "commission": float(ib_commission(shares, price, model)[traded].sum()),
        "fees": float(regulatory_fees(shares, price, model)[traded].sum()),
        "spread": float((value * np.nan_to_num(spread) / 2.0)[traded].sum()) if model.half_spread else 0.0,
        "slippage": float(value[traded].sum() * model.slippage_bps / 1e4),
    }
    parts["total"] = sum(parts.values())
    return parts


def spread_estimates(bars: pd.DataFrame) -> pd.DataFrame:
    """Relative spread per session (rows) and symbol (columns): the quoted one where known, else Corwin-Schultz.

    The fallback is the mean of the 2-day Corwin-Schultz estimates over the trailing 20 sessions (at least one),
    else that session's median over the symbols that have one, else 0.
    """
    panel, _ = Panel.from_bars(bars)
    daily, work = np.empty(panel.n), np.empty((4, panel.n))
    with np.errstate(divide="ignore", invalid="ignore"):  # a bad bar (high < low) gives NaN, as in the features
        corwin_schultz(panel, daily, work)
    daily[~(panel.raw_range & (panel.lag(panel.raw_range.astype(float), 1) == 1.0))] = np.nan
    long = pd.DataFrame({"symbol": panel.symbols[panel.sym], "date": panel.dates, "cs": daily})
    long["cs"] = long.groupby("symbol", sort=False)["cs"].transform(lambda s: s.rolling(WINDOW, min_periods=1).mean())
    quoted = panel.spread if panel.spread is not None else np.full(panel.n, np.nan)
    long["spread"] = np.where(np.isfinite(quoted) & (quoted >= 0), quoted, long["cs"])
    wide = long.pivot(index="date", columns="symbol", values="spread")
    return wide.apply(lambda row: row.fillna(row.median() if row.notna().any() else 0.0), axis=1)
