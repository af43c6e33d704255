"""Liquidity and microstructure estimators from daily OHLCV (and the real quoted spread when IB delivered it).

Daily quantities are vectorized over the whole frame; their trailing windows are TA-Lib SUM/SMA/STDDEV per
symbol (:func:`ibf_core.features.run_talib`), NaN-aware where an input can have gaps (SUM of the zero-filled
values / SUM of the validity flags). Every value is a ratio, a log ratio or a dollar-volume quantity, so a
split (prices x k, volume / k) leaves it unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import talib

from ibf_core.features import RANGE, VOLUME, Feature, Panel, TalibCall, nan_aware, run_talib, scratch_names
from ibf_core.features.technical import log_price, log_returns

WINDOW = 20
LONG_VOLUME_WINDOW = 200
AMIHUD_SCALE = 1e6  # |return| per million dollars traded
AMIHUD_MIN_COUNT = 15  # of 20 sessions with a finite value (zero-volume days have none)
SPREAD_MIN_COUNT = 10  # of 20 sessions with a known quoted spread
# Corwin & Schultz (2012), eq. 18: k = 3 - 2 sqrt(2).
_CS_K = 3.0 - 2.0 * math.sqrt(2.0)
# A volume window whose std is below this share of its mean is constant: its z-score is undefined (NaN).
_CONSTANT_VOLUME = 1e-9

TALIB_CALLS: list[TalibCall] = [
    TalibCall(talib.SMA, ("cs_daily",), ("cs_spread_20",), {"timeperiod": WINDOW}),
    TalibCall(talib.SUM, ("change",), ("_change_sum",), {"timeperiod": WINDOW}),
    TalibCall(talib.SUM, ("change_lag",), ("_change_lag_sum",), {"timeperiod": WINDOW}),
    TalibCall(talib.SUM, ("change_product",), ("roll_spread_20",), {"timeperiod": WINDOW}),
    TalibCall(talib.SUM, ("illiquidity",), ("amihud_20",), {"timeperiod": WINDOW}),
    TalibCall(talib.SUM, ("illiquidity_valid",), ("_illiquidity_count",), {"timeperiod": WINDOW}),
    TalibCall(talib.SMA, ("volume",), ("_volume_mean",), {"timeperiod": WINDOW}),
    TalibCall(talib.STDDEV, ("volume",), ("_volume_std",), {"timeperiod": WINDOW, "nbdev": 1.0}),
    TalibCall(talib.SMA, ("volume",), ("_volume_mean_long",), {"timeperiod": LONG_VOLUME_WINDOW}),
]
SPREAD_CALLS: list[TalibCall] = [
    TalibCall(talib.SUM, ("spread",), ("spread_quoted_mean_20",), {"timeperiod": WINDOW}),
    TalibCall(talib.SUM, ("spread_valid",), ("_spread_count",), {"timeperiod": WINDOW}),
]


def _f(name: str, description: str, min_history: int, inputs: tuple[str, ...] = ()) -> Feature:
    return Feature(name, description, "microstructure", min_history, inputs=frozenset(inputs))


FEATURES: list[Feature] = [
    _f("cs_spread_20", "Corwin-Schultz high-low spread estimate, mean of 2-day estimates over 20 sessions "
       "(overnight-gap adjusted; negative 2-day estimates set to 0 as in the paper)", WINDOW + 1, (RANGE,)),
    _f("roll_spread_20", "Roll implied spread 2 sqrt(-cov(dp_t, dp_t-1)) over 20 sessions of log close changes, "
       "signed: -2 sqrt(cov) when the autocovariance is positive (where Roll is undefined)", WINDOW + 2),
    _f("amihud_20", "log of Amihud illiquidity: mean over 20 sessions of |log return| per $1M traded", WINDOW,
       (VOLUME,)),
    _f("volume_z_20", "Volume z-score against the trailing 20 sessions (today included; population std)", WINDOW,
       (VOLUME,)),
    _f("turnover_proxy_20", "log(mean volume 20 sessions / mean volume 200 sessions): turnover relative to "
       "the symbol's norm (shares outstanding unknown)", LONG_VOLUME_WINDOW, (VOLUME,)),
    _f("gap_overnight", "open / previous close - 1", 2, (RANGE,)),
    _f("intraday_ret", "log(close / open)", 1, (RANGE,)),
    _f("hl_range", "log(high / low): the day's range", 1, (RANGE,)),
    _f("spread_quoted", "Real relative quoted spread (ask - bid) / mid from IB BID_ASK bars; NaN when unknown", 1),
    _f("spread_quoted_mean_20", "Mean real quoted spread over 20 sessions (at least 10 known); NaN when unknown",
       WINDOW),
]


def log_high_low(panel: Panel) -> np.ndarray:
    """log(high / low) per bar (the ``hl_range`` feature before cleaning), computed once per panel."""
    def make() -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.divide(panel.high, panel.low)
            return np.log(ratio, out=ratio)

    return panel.cache_get("log_high_low", make)


def corwin_schultz(panel: Panel, out: np.ndarray, work: np.ndarray) -> np.ndarray:
    """Daily 2-day Corwin-Schultz spread estimates (days t-1 and t), overnight-adjusted, floored at 0.

    ``work`` is a (4, n) scratch area. Written in place to avoid a dozen full-length temporaries.
    """
    prev_close, shift, high_t, low_t = work
    # log(H1/L1)^2 of the previous day: the lagged daily range (the hl_range feature), computed once per panel.
    panel.lag(log_high_low(panel), 1, out=out)
    np.square(out, out=out)
    panel.lag(panel.close, 1, out=prev_close)
    # A gap between yesterday's close and today's range is overnight movement, not spread: shift today's
    # high and low back by it (Corwin & Schultz 2012, section 2.3).
    np.subtract(prev_close, panel.high, out=shift)
    np.maximum(shift, 0.0, out=shift)
    np.subtract(panel.low, prev_close, out=high_t)
    np.maximum(high_t, 0.0, out=high_t)
    shift -= high_t
    np.add(panel.high, shift, out=high_t)
    np.add(panel.low, shift, out=low_t)
    high_1, low_1 = panel.lag(panel.high, 1, out=prev_close), panel.lag(panel.low, 1, out=shift)
    # beta = log(H1/L1)^2 + log(Ht/Lt)^2 ; gamma = log(max(H1,Ht) / min(L1,Lt))^2
    np.maximum(high_1, high_t, out=high_1)
    np.minimum(low_1, low_t, out=low_1)
    np.divide(high_t, low_t, out=high_t)
    np.log(high_t, out=high_t)
    np.square(high_t, out=high_t)
    out += high_t  # beta
    np.divide(high_1, low_1, out=low_t)
    np.log(low_t, out=low_t)
    np.square(low_t, out=low_t)  # gamma
    np.sqrt(out, out=out)
    out *= (math.sqrt(2.0) - 1.0) / _CS_K
    low_t /= _CS_K
    np.sqrt(low_t, out=low_t)
    out -= low_t  # alpha
    np.exp(out, out=out)
    np.add(out, 1.0, out=low_t)
    out -= 1.0
    out *= 2.0
    out /= low_t  # S = 2 (e^alpha - 1) / (1 + e^alpha)
    return np.maximum(out, 0.0, out=out)


def talib_inputs(panel: Panel, work: np.ndarray) -> dict[str, np.ndarray]:
    """The daily series the microstructure windows run on (``work``: a (6, n) scratch area they live in)."""
    cs_daily, change, change_lag, product, illiquidity, valid = work
    corwin_schultz(panel, cs_daily, work[1:5])
    # Roll uses transaction-price changes: the split-adjusted close, not the dividend-adjusted one.
    if panel.adj_close is panel.close:  # bars without adj_close: the log close is already known
        np.copyto(illiquidity, log_price(panel))
    else:
        np.log(panel.close, out=illiquidity)
    panel.diff(illiquidity, 1, out=change)
    panel.lag(change, 1, out=change_lag)
    np.multiply(change, change_lag, out=product)
    # Amihud: |r| / dollar volume; a zero-volume day has no value (not 0, not inf), hence the validity sums.
    np.multiply(panel.close, panel.volume, out=valid)
    np.abs(log_returns(panel), out=illiquidity)
    with np.errstate(divide="ignore", invalid="ignore"):
        illiquidity /= valid
    illiquidity *= AMIHUD_SCALE
    finite = np.isfinite(illiquidity)
    illiquidity[~finite] = 0.0
    valid[:] = finite
    return {"cs_daily": cs_daily, "change": change, "change_lag": change_lag, "change_product": product,
            "illiquidity": illiquidity, "illiquidity_valid": valid, "volume": panel.volume}


def compute(panel: Panel, out: Mapping[str, np.ndarray]) -> None:
    """Fill the microstructure rows of ``out``."""
    names = scratch_names(TALIB_CALLS)
    block = panel.scratch(6 + len(names))
    inputs = talib_inputs(panel, block[:6])
    scratch = dict(zip(names, block[6:]))
    run_talib(TALIB_CALLS, inputs, panel.starts, panel.counts, {**out, **scratch})
    with np.errstate(divide="ignore", invalid="ignore"):
        # Sample covariance of (dp_t, dp_t-1) from the three window sums, then Roll's 2 sqrt(-cov), signed.
        cov, work = out["roll_spread_20"], scratch["_change_sum"]
        work *= scratch["_change_lag_sum"]
        work /= WINDOW
        cov -= work
        cov /= WINDOW - 1
        np.abs(cov, out=work)
        np.sqrt(work, out=work)
        np.copysign(work, cov, out=cov)
        cov *= -2.0

        amihud, count = out["amihud_20"], scratch["_illiquidity_count"]
        amihud /= count
        amihud[count < AMIHUD_MIN_COUNT] = np.nan
        np.log(amihud, out=amihud)

        mean, std = scratch["_volume_mean"], scratch["_volume_std"]
        std[std <= _CONSTANT_VOLUME * mean] = np.nan
        np.subtract(panel.volume, mean, out=out["volume_z_20"])
        out["volume_z_20"] /= std
        np.divide(mean, scratch["_volume_mean_long"], out=out["turnover_proxy_20"])
        np.log(out["turnover_proxy_20"], out=out["turnover_proxy_20"])

        panel.lag(panel.close, 1, out=out["gap_overnight"])
        np.divide(panel.open, out["gap_overnight"], out=out["gap_overnight"])
        out["gap_overnight"] -= 1.0
        np.divide(panel.close, panel.open, out=out["intraday_ret"])
        np.log(out["intraday_ret"], out=out["intraday_ret"])
        np.copyto(out["hl_range"], log_high_low(panel))
    _spread_features(panel, out)


def _spread_features(panel: Panel, out: Mapping[str, np.ndarray]) -> None:
    """The real quoted spread and its NaN-aware 20-session mean; all NaN when the bars carry none."""
    spread, mean = out["spread_quoted"], out["spread_quoted_mean_20"]
    if panel.spread is None or not np.isfinite(panel.spread).any():
        spread[:] = np.nan
        mean[:] = np.nan
        return
    spread[:] = panel.spread
    spread[~(spread >= 0)] = np.nan  # unknown stays unknown: a missing quote is not a free trade (never 0)
    filled, valid = nan_aware(spread)
    count = np.empty(panel.n)
    run_talib(SPREAD_CALLS, {"spread": filled, "spread_valid": valid}, panel.starts, panel.counts,
              {"spread_quoted_mean_20": mean, "_spread_count": count})
    with np.errstate(divide="ignore", invalid="ignore"):
        mean /= count
    mean[~(count >= SPREAD_MIN_COUNT)] = np.nan
