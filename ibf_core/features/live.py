"""Microstructure measured on the live tables (``microstructure_daily``, from ``ibf stream``), joined per session.

A session ibf did not stream, or streamed for less than :data:`MIN_COVERAGE` of its 5-second bars, has NULL live
features; the daily-bar proxies (Corwin-Schultz, Roll, Amihud) are always computed beside them, so a model
trained on history without live data keeps working (a column that is NaN on every training row is left out).
Values are joined as measured: never forward-filled, each row uses its own session only (known at its close).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from ibf_core.features import Feature, Panel

MIN_COVERAGE = 0.5  # of the session's 4,680 5-second bars collected


def _f(name: str, description: str) -> Feature:
    return Feature(name, description, "microstructure", 1, ffill=False)


FEATURES: list[Feature] = [
    _f("live_quoted_spread", "Time-weighted relative quoted spread of the session's top-of-book quotes (live data)"),
    _f("live_effective_spread", "Volume-weighted effective spread 2|wap - mid|/mid of the 5-second bars (live data)"),
    _f("live_depth_imbalance", "Time-weighted top-of-book size imbalance (bid - ask)/(bid + ask) (live data)"),
    _f("live_trade_flow_imbalance", "Lee-Ready signed volume / volume of the session (live data)"),
    _f("live_kyle_lambda", "Kyle's lambda as bps of 5-second return per 1% of the session's volume, signed "
       "(scale-free: a split changes neither side) (live data)"),
    _f("live_realized_vol", "Realized volatility of the session's 5-second log returns (live data)"),
    _f("live_vwap_deviation", "log(session's last close / VWAP) (live data)"),
    _f("live_trade_size_dispersion", "log(90th percentile / mean shares per trade) (live data)"),
]
COLUMNS = [f.name for f in FEATURES]


def live_values(daily: pd.DataFrame) -> pd.DataFrame:
    """``symbol, date`` + :data:`COLUMNS` from ``microstructure_daily`` rows covering at least MIN_COVERAGE."""
    rows = daily[pd.to_numeric(daily["coverage"], errors="coerce") >= MIN_COVERAGE]
    kyle = rows["kyle_lambda"] * rows["volume"] * 0.01 / 1e6
    with np.errstate(divide="ignore", invalid="ignore"):
        dispersion = np.log(rows["trade_size_p90"] / rows["trade_size_mean"])
    return pd.DataFrame({
        "symbol": rows["symbol"].to_numpy(dtype=object),
        "date": pd.to_datetime(rows["date"]).dt.normalize().to_numpy(),
        "live_quoted_spread": rows["quoted_spread_tw"].to_numpy(dtype=float),
        "live_effective_spread": rows["effective_spread"].to_numpy(dtype=float),
        "live_depth_imbalance": rows["depth_imbalance"].to_numpy(dtype=float),
        "live_trade_flow_imbalance": rows["trade_flow_imbalance"].to_numpy(dtype=float),
        "live_kyle_lambda": kyle.to_numpy(dtype=float),
        "live_realized_vol": rows["realized_vol"].to_numpy(dtype=float),
        "live_vwap_deviation": rows["vwap_deviation"].to_numpy(dtype=float),
        "live_trade_size_dispersion": dispersion.to_numpy(dtype=float),
    })


def join(panel: Panel, daily: pd.DataFrame | None, rows: Mapping[str, np.ndarray]) -> None:
    """Write the live features of ``daily`` (``microstructure_daily`` rows) into ``rows``; NaN elsewhere."""
    for name in COLUMNS:
        rows[name][:] = np.nan
    if daily is None or daily.empty:
        return
    values = live_values(daily)
    target = panel.row_of(values["symbol"].to_numpy(dtype=object), values["date"].to_numpy(dtype="datetime64[ns]"))
    hit = target >= 0
    if len(np.unique(target[hit])) != int(hit.sum()):
        raise ValueError("microstructure_daily frame has duplicate (symbol, date) rows")
    for name in COLUMNS:
        column = values[name].to_numpy(dtype=np.float64)[hit]
        rows[name][target[hit]] = np.where(np.isfinite(column), column, np.nan)
