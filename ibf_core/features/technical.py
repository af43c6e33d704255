"""Technical indicators from TA-Lib (never re-implemented) made scale-free, plus trailing log returns.

Each TA-Lib function runs per symbol (:func:`ibf_core.features.run_talib`) and writes into the caller's
feature rows; every transform to a scale-free form (ratio to price, change over n days divided by the n-day
volume) is then one in-place numpy step over the whole frame. :data:`TALIB_CALLS` is data so the benchmark
can replay exactly the same calls.

TA-Lib has no Chaikin Money Flow and no rolling VWAP: CMF is built from TA-Lib's AD line
(sum(MFV, n) = AD_t - AD_{t-n}) and SUM(volume, n); VWAP from SUM(typical price x volume) / SUM(volume).
ATR appears as TA-Lib's NATR (= 100 x ATR / close), which is exactly the scale-free ATR.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import talib

from ibf_core.features import (
    RANGE,
    TRADING_DAYS_PER_YEAR,
    VOLUME,
    Feature,
    Panel,
    TalibCall,
    run_talib,
    scratch_names,
    seed_settle,
)

MA_WINDOWS = (5, 10, 20, 50, 200)
# EMA stops at 20: a longer EMA remembers its seed for years (EMA-200 needs ~4000 sessions to forget it to
# 1e-9), which would make single-day partitions differ from a full-history run. SMA/WMA cover long windows.
EMA_WINDOWS = (5, 10, 20)
HV_WINDOWS = (10, 20, 60)
RETURN_HORIZONS = (1, 2, 3, 5, 10, 20)
RETURN_LAGS = (1, 2, 3, 5)
FLOW_WINDOW = 20  # OBV / AD change and VWAP window
HLC = ("high", "low", "close")
HLCV = ("high", "low", "close", "volume")


def _wilder(n: int, stages: int = 1) -> int:
    return seed_settle(1.0 / n, stages)


def _ema(n: int, stages: int = 1) -> int:
    return seed_settle(2.0 / (n + 1), stages)


def _close_ratio(average: np.ndarray, inputs: Mapping[str, np.ndarray], dest: np.ndarray) -> None:
    """dest <- close / average - 1."""
    np.divide(inputs["close"], average, out=dest)
    dest -= 1.0


def _annualize(std: np.ndarray, inputs: Mapping[str, np.ndarray], dest: np.ndarray) -> None:
    np.multiply(std, _ANNUALIZE, out=dest)


_ANNUALIZE = math.sqrt(TRADING_DAYS_PER_YEAR)

TALIB_CALLS: list[TalibCall] = [
    *(TalibCall(talib.SMA, ("close",), (f"sma_ratio_{n}",), {"timeperiod": n}, _close_ratio) for n in MA_WINDOWS),
    *(TalibCall(talib.EMA, ("close",), (f"ema_ratio_{n}",), {"timeperiod": n}, _close_ratio) for n in EMA_WINDOWS),
    *(TalibCall(talib.WMA, ("close",), (f"wma_ratio_{n}",), {"timeperiod": n}, _close_ratio) for n in MA_WINDOWS),
    TalibCall(talib.RSI, ("close",), ("rsi_14",), {"timeperiod": 14}),
    TalibCall(talib.MACD, ("close",), ("macd_line", "macd_signal", "macd_hist"),
              {"fastperiod": 12, "slowperiod": 26, "signalperiod": 9}),
    TalibCall(talib.STOCH, HLC, ("stoch_k", "stoch_d"),
              {"fastk_period": 14, "slowk_period": 3, "slowk_matype": 0, "slowd_period": 3, "slowd_matype": 0}),
    TalibCall(talib.CCI, HLC, ("cci_20",), {"timeperiod": 20}),
    TalibCall(talib.WILLR, HLC, ("willr_14",), {"timeperiod": 14}),
    TalibCall(talib.BBANDS, ("close",), ("_bb_upper", "_bb_middle", "_bb_lower"),
              {"timeperiod": 20, "nbdevup": 2.0, "nbdevdn": 2.0, "matype": 0}),
    TalibCall(talib.NATR, HLC, ("natr_14",), {"timeperiod": 14}),
    TalibCall(talib.STDDEV, ("logret",), ("ret_std_5",), {"timeperiod": 5, "nbdev": 1.0}),
    *(TalibCall(talib.STDDEV, ("logret",), (f"hv_{n}",), {"timeperiod": n, "nbdev": 1.0}, _annualize)
      for n in HV_WINDOWS),
    TalibCall(talib.OBV, ("close", "volume"), ("_obv",)),
    TalibCall(talib.AD, HLCV, ("_ad",)),
    TalibCall(talib.ADOSC, HLCV, ("adosc_3_10",), {"fastperiod": 3, "slowperiod": 10}),
    TalibCall(talib.SUM, ("volume",), ("_volume_sum",), {"timeperiod": FLOW_WINDOW}),
    TalibCall(talib.SUM, ("typical_volume",), ("_typical_volume_sum",), {"timeperiod": FLOW_WINDOW}),
    TalibCall(talib.ROC, ("close",), ("roc_10",), {"timeperiod": 10}),
    TalibCall(talib.ROC, ("volume",), ("vroc_10",), {"timeperiod": 10}),
    TalibCall(talib.ADX, HLC, ("adx_14",), {"timeperiod": 14}),
    TalibCall(talib.PLUS_DI, HLC, ("plus_di_14",), {"timeperiod": 14}),
    TalibCall(talib.MINUS_DI, HLC, ("minus_di_14",), {"timeperiod": 14}),
]


def _f(name: str, description: str, min_history: int, lookback: int = 0, inputs: tuple[str, ...] = ()) -> Feature:
    return Feature(name, description, "technical", min_history, lookback=lookback, inputs=frozenset(inputs))


R, V, RV = (RANGE,), (VOLUME,), (RANGE, VOLUME)


FEATURES: list[Feature] = [
    *(_f(f"sma_ratio_{n}", f"close / SMA({n}) - 1", n) for n in MA_WINDOWS),
    *(_f(f"ema_ratio_{n}", f"close / EMA({n}) - 1", n, n + _ema(n)) for n in EMA_WINDOWS),
    *(_f(f"wma_ratio_{n}", f"close / WMA({n}) - 1", n) for n in MA_WINDOWS),
    _f("rsi_14", "RSI(14), 0..100", 15, 15 + _wilder(14)),
    _f("macd_line", "MACD(12,26) line / close", 34, 34 + _ema(26, 2)),
    _f("macd_signal", "MACD signal line (EMA 9 of the line) / close", 34, 34 + _ema(26, 2)),
    _f("macd_hist", "MACD histogram (line - signal) / close", 34, 34 + _ema(26, 2)),
    _f("stoch_k", "Stochastic slow %K (14,3), 0..100", 18, inputs=R),
    _f("stoch_d", "Stochastic slow %D (3-day SMA of %K), 0..100", 18, inputs=R),
    _f("cci_20", "Commodity Channel Index (20)", 20, inputs=R),
    _f("willr_14", "Williams %R (14), -100..0", 14, inputs=R),
    _f("bb_pctb_20", "Bollinger %b: (close - lower) / (upper - lower), bands SMA(20) +- 2 sd", 20),
    _f("bb_width_20", "Bollinger width: (upper - lower) / middle band", 20),
    _f("natr_14", "Normalized ATR(14) = 100 x ATR / close (TA-Lib NATR; the scale-free ATR)", 15, 15 + _wilder(14),
       inputs=R),
    _f("ret_std_5", "Population std of daily log returns (adj_close) over 5 sessions (TA-Lib STDDEV)", 6),
    *(_f(f"hv_{n}", f"Historical volatility: population std of daily log returns over {n} sessions x sqrt(252)",
         n + 1) for n in HV_WINDOWS),
    _f("obv_flow_20", "OBV change over 20 sessions / 20-session volume (scale-free OBV)", FLOW_WINDOW + 1, inputs=V),
    _f("cmf_20", "Chaikin Money Flow (20) = AD change over 20 sessions / 20-session volume (from TA-Lib AD)",
       FLOW_WINDOW + 1, inputs=RV),
    _f("adosc_3_10", "Chaikin A/D oscillator (3,10) / mean daily volume over 20 sessions", FLOW_WINDOW,
       FLOW_WINDOW + _ema(10), inputs=RV),
    _f("vwap_ratio_20", "close / rolling 20-session VWAP (typical price weighted by volume) - 1", FLOW_WINDOW,
       inputs=RV),
    _f("roc_10", "Rate of change of close over 10 sessions, percent", 11),
    _f("vroc_10", "Rate of change of volume over 10 sessions, percent (NaN when volume 10 sessions ago is 0)", 11,
       inputs=V),
    _f("adx_14", "Average Directional Index (14)", 28, 28 + _wilder(14, 2), inputs=R),
    _f("plus_di_14", "+DI (14)", 15, 15 + _wilder(14), inputs=R),
    _f("minus_di_14", "-DI (14)", 15, 15 + _wilder(14), inputs=R),
]

RETURN_FEATURES: list[Feature] = [
    *(Feature(f"logret_{k}", f"log(adj_close / adj_close {k} session{'s' if k > 1 else ''} earlier)", "returns", k + 1)
      for k in RETURN_HORIZONS),
    *(Feature(f"logret_1_lag_{k}", f"1-session log return {k} session{'s' if k > 1 else ''} earlier", "returns", k + 2)
      for k in RETURN_LAGS),
]


def log_price(panel: Panel) -> np.ndarray:
    """log(adj_close): split- and dividend-adjusted, so a difference is a total log return."""
    return panel.cache_get("log_adj_close", lambda: np.log(panel.adj_close))


def log_returns(panel: Panel) -> np.ndarray:
    """Daily log return of adj_close, NaN on each symbol's first bar."""
    return panel.cache_get("logret", lambda: panel.diff(log_price(panel), 1))


def talib_inputs(panel: Panel) -> dict[str, np.ndarray]:
    """Every array a technical TA-Lib call reads, full length and contiguous (sliced per symbol)."""
    typical_volume = panel.high + panel.low
    typical_volume += panel.close
    typical_volume *= panel.volume
    typical_volume /= 3.0
    return {
        "high": panel.high, "low": panel.low, "close": panel.close, "volume": panel.volume,
        "logret": log_returns(panel), "typical_volume": typical_volume,
    }


def compute(panel: Panel, out: Mapping[str, np.ndarray]) -> None:
    """Fill the technical feature rows of ``out`` (one float64 row per feature, panel order)."""
    names = scratch_names(TALIB_CALLS)
    scratch = dict(zip(names, panel.scratch(len(names))))
    run_talib(TALIB_CALLS, talib_inputs(panel), panel.starts, panel.counts, {**out, **scratch})
    close = panel.close
    with np.errstate(divide="ignore", invalid="ignore"):
        for name in ("macd_line", "macd_signal", "macd_hist"):
            np.divide(out[name], close, out=out[name])
        lower, band = scratch["_bb_lower"], scratch["_bb_upper"]
        band -= lower
        np.subtract(close, lower, out=out["bb_pctb_20"])
        out["bb_pctb_20"] /= band
        np.divide(band, scratch["_bb_middle"], out=out["bb_width_20"])
        volume_sum = scratch["_volume_sum"]
        panel.diff(scratch["_obv"], FLOW_WINDOW, out=out["obv_flow_20"])
        out["obv_flow_20"] /= volume_sum
        panel.diff(scratch["_ad"], FLOW_WINDOW, out=out["cmf_20"])
        out["cmf_20"] /= volume_sum
        out["adosc_3_10"] /= volume_sum
        out["adosc_3_10"] *= FLOW_WINDOW
        np.multiply(close, volume_sum, out=out["vwap_ratio_20"])
        out["vwap_ratio_20"] /= scratch["_typical_volume_sum"]
        out["vwap_ratio_20"] -= 1.0
    # TA-Lib's ROC returns 0 when the earlier value is 0; a volume change from zero is undefined, not 0.
    out["vroc_10"][panel.rows_after(panel.volume <= 0, 10)] = np.nan


def compute_returns(panel: Panel, out: Mapping[str, np.ndarray]) -> None:
    """Trailing k-session log returns and lags of the daily log return (from adj_close)."""
    logp = log_price(panel)
    for k in RETURN_HORIZONS:
        panel.diff(logp, k, out=out[f"logret_{k}"])
    daily = log_returns(panel)
    for k in RETURN_LAGS:
        panel.lag(daily, k, out=out[f"logret_1_lag_{k}"])
