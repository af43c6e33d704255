"""Bars + features -> the modelling panel: session ordinals, daily and h-day log-return targets, scalers.

Targets are defined on the NYSE calendar from split- and dividend-adjusted closes (``adj_close``): ``target_h``
at origin t is log(adj_close[session t + h] / adj_close[t]), where t + h counts NYSE sessions; it is NULL when
the bar at t + h is missing (a gap, or not in the data yet), so a missing bar never turns a 5-day target into a
6-day one. ``y`` (what the neural members model) is the same-session daily return log(adj_close[t] /
adj_close[t - 1 session]), NULL after a missing session. The h-day return is the sum of the next h values of
``y`` where no session is missing. Sessions are ordinals of the NYSE calendar (``session``), which is the
trading-day frequency NeuralForecast sees (``freq=1`` on integer time stamps: no weekends, no holidays).
``no_volume`` / ``no_range`` carry the features' input flags (``ibf_core.features.Panel.input_missing``), so
training can say why a feature is left out.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ibf_core.calendar import all_sessions
from ibf_core.features import INPUT_NAMES
from ibf_core.models import ModelDataError

# Heavy imports (talib) stay inside the functions that need them: importing this module loads none of them.

CLIP = 10.0  # robust z-scores beyond this are outliers, not information
VOL_WINDOW = 20  # sessions of the trailing daily-return volatility that scales the intervals


def session_ordinals(dates: pd.Series | pd.DatetimeIndex) -> np.ndarray:
    """NYSE session number of each date (position in ``all_sessions()``); a non-session date is an error."""
    sessions = all_sessions()
    values = pd.DatetimeIndex(pd.to_datetime(dates)).normalize()
    index = sessions.get_indexer(values)
    if (index < 0).any():
        bad = values[index < 0][:3]
        raise ModelDataError(f"dates that are not NYSE sessions: {', '.join(str(d.date()) for d in bad)}")
    return index.astype(np.int64)


def build_panel(bars: pd.DataFrame, features: pd.DataFrame, horizons: tuple[int, ...]) -> pd.DataFrame:
    """One row per (symbol, session with a bar): prices, every feature, ``session``, ``y``, ``target_<h>``, ``vol``.

    ``vol`` is the trailing daily volatility (of the defined ``y`` among the last 20 bars). Gaps in a symbol's
    sessions are allowed: targets and ``y`` that would span one are NULL. Raises ``ModelDataError`` naming the
    symbol and date when bars and features disagree.
    """
    from ibf_core.features.pipeline import input_flags

    if bars.empty:
        raise ModelDataError("no bars to model")
    prices = bars[["symbol", "date", "close", "adj_close"]].copy()
    prices["symbol"] = prices["symbol"].astype(str)
    prices["date"] = pd.to_datetime(prices["date"]).dt.normalize()
    feats = _with_canonical_keys(features)
    panel = prices.merge(feats, on=["symbol", "date"], how="inner", validate="one_to_one")
    if len(panel) != len(prices):
        missing = prices.merge(feats[["symbol", "date"]], how="left", indicator=True)
        first = missing[missing["_merge"] == "left_only"].iloc[0]
        raise ModelDataError(f"{first['symbol']}: no feature row for {first['date'].date()} (materialize features)")
    # The merge keeps the bars' order, which the warehouse reads sorted: sorting again would copy the panel.
    if not _sorted_by_symbol_date(panel):
        panel = panel.sort_values(["symbol", "date"], kind="stable").reset_index(drop=True)
    panel["session"] = session_ordinals(panel["date"])
    flags = input_flags(bars.assign(symbol=bars["symbol"].astype(str)))
    flags["date"] = pd.to_datetime(flags["date"]).dt.normalize()
    flags = flags.rename(columns={"volume": "no_volume", "range": "no_range"})
    # Joined on the keys alone and added as columns: a merge of the whole panel would copy every column.
    joined = panel[["symbol", "date"]].merge(flags, on=["symbol", "date"], how="left")
    for column in flags.columns.drop(["symbol", "date"]):
        panel[column] = joined[column].to_numpy()

    log_price = np.log(panel["adj_close"].to_numpy(dtype=np.float64))
    panel["y"] = log_price - session_shift(panel, log_price, -1)
    for h in horizons:
        panel[f"target_{h}"] = session_shift(panel, log_price, h) - log_price
    rolling = panel.groupby("symbol", sort=False)["y"].rolling(VOL_WINDOW, min_periods=VOL_WINDOW // 2)
    panel["vol"] = rolling.std().reset_index(level=0, drop=True)
    return panel


def _with_canonical_keys(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with ``symbol`` as str and ``date`` as midnight datetime64: itself when it already is (as the
    warehouse reads it; a copy of the features is 1.2 GB at 500 symbols x 10 years), else a copy."""
    dates = frame["date"]
    canonical = (
        frame["symbol"].dtype == object
        and pd.api.types.is_datetime64_ns_dtype(dates.dtype)
        and getattr(dates.dtype, "tz", None) is None
        and bool((dates.dt.normalize() == dates).all())
        and bool(frame["symbol"].map(type).eq(str).all())
    )
    if canonical:
        return frame
    out = frame.copy()
    out["symbol"] = out["symbol"].astype(str)
    out["date"] = pd.to_datetime(out["date"]).dt.normalize()
    return out


def _sorted_by_symbol_date(frame: pd.DataFrame) -> bool:
    symbols, dates = frame["symbol"].to_numpy(dtype=object), frame["date"].to_numpy()
    same = symbols[1:] == symbols[:-1]
    return bool(((symbols[1:] > symbols[:-1]) | (same & (dates[1:] >= dates[:-1]))).all())


def session_shift(panel: pd.DataFrame, values: np.ndarray, k: int) -> np.ndarray:
    """``values`` of the same symbol's bar k NYSE sessions later (k < 0: earlier); NaN where that bar is missing.

    ``panel`` is sorted by symbol, then session (``build_panel``'s order).
    """
    codes = pd.factorize(panel["symbol"], sort=False)[0].astype(np.int64)
    stride = np.int64(len(all_sessions()) + abs(k) + 1)  # keys of two symbols never meet
    keys = codes * stride + panel["session"].to_numpy(dtype=np.int64)
    wanted = keys + k
    at = np.searchsorted(keys, wanted)
    hit = at < len(keys)
    hit[hit] = keys[at[hit]] == wanted[hit]
    out = np.full(len(keys), np.nan)
    out[hit] = np.asarray(values, dtype=np.float64)[at[hit]]
    return out


def missing_sessions(panel: pd.DataFrame) -> dict[str, int]:
    """Per symbol with gaps: NYSE sessions between its first and last bar that have no bar."""
    span = panel.groupby("symbol")["session"].agg(["min", "max", "size"])
    missing = span["max"] - span["min"] + 1 - span["size"]
    return {str(s): int(n) for s, n in missing[missing > 0].items()}


def truncate(panel: pd.DataFrame, last_date: dt.date | pd.Timestamp) -> pd.DataFrame:
    """Rows up to ``last_date`` with every target that reaches beyond it blanked (nothing leaks past the cut)."""
    last = pd.Timestamp(last_date)
    out = panel[panel["date"] <= last].copy()
    last_session = int(all_sessions().searchsorted(last.normalize(), side="right")) - 1
    for column in [c for c in out.columns if c.startswith("target_")]:
        h = int(column.split("_")[1])
        out.loc[out["session"] + h > last_session, column] = np.nan
    return out


def select_features(train: pd.DataFrame, candidates: list[str]) -> tuple[list[str], dict[str, str]]:
    """(features a model can use on ``train``, left-out feature -> why): all NaN, constant, or a missing input.

    A feature is left out when it has no finite value on the training rows (then the reason names the bar
    input it reads that is missing, or its warm-up when no symbol has that much history) or one value only.
    """
    from ibf_core.features.pipeline import feature_by_name

    registry = feature_by_name()
    values = train[candidates].to_numpy(dtype=np.float64)
    finite = np.isfinite(values)
    kept, reasons = [], {}
    for i, name in enumerate(candidates):
        column = values[finite[:, i], i]
        if len(column) and column.min() < column.max():
            kept.append(name)
            continue
        if len(column):
            reasons[name] = f"constant ({column[0]:g}) in the training window"
            continue
        feature = registry.get(name)
        lacking = [INPUT_NAMES[k] for k in sorted(feature.inputs) if f"no_{k}" in train and train[f"no_{k}"].fillna(False).any()] if feature else []
        if lacking:
            reasons[name] = f"missing input: {', '.join(lacking)}"
        elif feature and len(train) and train.groupby("symbol").size().max() < feature.min_history:
            reasons[name] = f"warm-up: needs {feature.min_history} bars of history"
        else:
            reasons[name] = "all NaN in the training window"
    return kept, reasons


@dataclass(frozen=True)
class RobustScaler:
    """Per-feature median / IQR fitted on the training window only; NaN -> 0 (the training median)."""

    center: dict[str, float]
    scale: dict[str, float]

    @classmethod
    def fit(cls, frame: pd.DataFrame, columns: list[str]) -> "RobustScaler":
        center, scale = {}, {}
        for column in columns:
            values = frame[column].to_numpy(dtype=np.float64)
            values = values[np.isfinite(values)]
            if not len(values):
                raise ModelDataError(f"feature {column!r} has no finite value in the training window")
            q25, q50, q75 = np.quantile(values, [0.25, 0.5, 0.75])
            spread = q75 - q25
            if not spread > 0:
                spread = float(np.std(values)) or 1.0
            center[column], scale[column] = float(q50), float(spread)
        return cls(center, scale)

    def transform(self, frame: pd.DataFrame) -> pd.DataFrame:
        out = pd.DataFrame(index=frame.index)
        for column, center in self.center.items():
            z = (frame[column].to_numpy(dtype=np.float64) - center) / self.scale[column]
            out[column] = np.nan_to_num(np.clip(z, -CLIP, CLIP), nan=0.0)
        return out

    def to_dict(self) -> dict[str, dict[str, float]]:
        return {"center": self.center, "scale": self.scale}

    @classmethod
    def from_dict(cls, data: dict[str, dict[str, float]]) -> "RobustScaler":
        return cls(dict(data["center"]), dict(data["scale"]))


def fingerprint(frame: pd.DataFrame, columns: list[str]) -> str:
    """SHA-256 over the rows and columns a model was trained on (recorded with every model version)."""
    digest = hashlib.sha256()
    digest.update(",".join(columns).encode())
    hashed = pd.util.hash_pandas_object(frame[columns], index=False).to_numpy()
    digest.update(hashed.tobytes())
    return digest.hexdigest()
