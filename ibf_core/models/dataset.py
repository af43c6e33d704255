"""Bars + features -> the modelling panel: session ordinals, daily and h-day log-return targets, scalers.

Targets come from split- and dividend-adjusted closes (``adj_close``): ``target_h`` at origin t is
log(adj_close[t+h] / adj_close[t]) over *trading* sessions of the same symbol, NaN where t+h is not in the
data yet. ``y`` (what the neural members model) is the 1-day log return ending at t, so the h-day return is
the sum of the next h values of ``y``. Sessions are ordinals of the NYSE calendar (``session``), which is the
trading-day frequency NeuralForecast sees (``freq=1`` on integer time stamps: no weekends, no holidays).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ibf_core.calendar import all_sessions
from ibf_core.models import ModelDataError

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
    """One row per (symbol, session): bars' prices, every feature, ``session``, ``y``, ``target_<h>``, ``vol`` (trailing daily volatility).

    Raises ``ModelDataError`` naming the symbol when its sessions have gaps (a missing bar would silently
    turn a 5-day target into a 6-day one) or when bars and features disagree.
    """
    if bars.empty:
        raise ModelDataError("no bars to model")
    prices = bars[["symbol", "date", "close", "adj_close"]].copy()
    prices["symbol"] = prices["symbol"].astype(str)
    prices["date"] = pd.to_datetime(prices["date"]).dt.normalize()
    feats = features.copy()
    feats["symbol"] = feats["symbol"].astype(str)
    feats["date"] = pd.to_datetime(feats["date"]).dt.normalize()
    panel = prices.merge(feats, on=["symbol", "date"], how="inner", validate="one_to_one")
    if len(panel) != len(prices):
        missing = prices.merge(feats[["symbol", "date"]], how="left", indicator=True)
        first = missing[missing["_merge"] == "left_only"].iloc[0]
        raise ModelDataError(f"{first['symbol']}: no feature row for {first['date'].date()} (materialize features)")
    panel = panel.sort_values(["symbol", "date"], kind="stable").reset_index(drop=True)
    panel["session"] = session_ordinals(panel["date"])
    check_gaps(panel)

    log_price = np.log(panel["adj_close"].to_numpy(dtype=np.float64))
    same = panel["symbol"].to_numpy()
    y = np.full(len(panel), np.nan)
    y[1:] = np.where(same[1:] == same[:-1], log_price[1:] - log_price[:-1], np.nan)
    panel["y"] = y
    for h in horizons:
        ahead = np.full(len(panel), np.nan)
        ahead[:-h] = np.where(same[h:] == same[:-h], log_price[h:] - log_price[:-h], np.nan)
        panel[f"target_{h}"] = ahead
    rolling = panel.groupby("symbol", sort=False)["y"].rolling(VOL_WINDOW, min_periods=VOL_WINDOW // 2)
    panel["vol"] = rolling.std().reset_index(level=0, drop=True)
    return panel


def check_gaps(panel: pd.DataFrame) -> None:
    """Every symbol's sessions must be consecutive NYSE sessions."""
    step = np.diff(panel["session"].to_numpy())
    same = panel["symbol"].to_numpy()[1:] == panel["symbol"].to_numpy()[:-1]
    bad = np.flatnonzero(same & (step != 1))
    if len(bad):
        i = bad[0]
        symbol = panel["symbol"].iat[i]
        count = int((same & (step != 1) & (panel["symbol"].to_numpy()[1:] == symbol)).sum())
        sessions = all_sessions()
        lost = int(step[i]) - 1
        raise ModelDataError(
            f"{symbol}: {count} gap(s) in its sessions, the first after {panel['date'].iat[i].date()} "
            f"({lost} session(s) missing, next bar {sessions[panel['session'].iat[i + 1]].date()}); "
            "backfill the missing bars or drop the symbol"
        )


def truncate(panel: pd.DataFrame, last_date: dt.date | pd.Timestamp) -> pd.DataFrame:
    """Rows up to ``last_date`` with every target that reaches beyond it blanked (nothing leaks past the cut)."""
    last = pd.Timestamp(last_date)
    out = panel[panel["date"] <= last].copy()
    last_session = int(all_sessions().searchsorted(last.normalize(), side="right")) - 1
    for column in [c for c in out.columns if c.startswith("target_")]:
        h = int(column.split("_")[1])
        out.loc[out["session"] + h > last_session, column] = np.nan
    return out


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
