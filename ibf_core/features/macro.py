"""Macro features (yield curve, rate changes, inflation, unemployment) from ``macro_indicators``, point in time.

Each indicator's value at session d is the newest one *published* by d (``date <= d``, the release lag applied
by ``ibf_core.fundamentals``), never the value of period d: a CPI for May is unknown in May. Changes compare
the value known at d with the value known k sessions earlier, so they too use only what was published by then.
Inflation and unemployment changes are computed between periods of the series (CPI of month m against month
m - 12) and become usable when the newer period is published; a missing month leaves its change NULL.
Every symbol gets the same macro values on a date.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from ibf_core.calendar import all_sessions
from ibf_core.features import Feature, Panel
from ibf_core.features.fundamental import session_ordinals

_DAY_NS = 86_400_000_000_000


def _f(name: str, description: str) -> Feature:
    return Feature(name, description, "macro", 1, ffill=False)


FEATURES: list[Feature] = [
    _f("macro_curve_10y_2y", "10-year minus 2-year Treasury yield, percentage points (as published by that session)"),
    _f("macro_curve_10y_3m", "10-year minus 3-month Treasury yield, percentage points"),
    _f("macro_ust10y_chg_20", "Change of the 10-year Treasury yield over 20 sessions, percentage points"),
    _f("macro_ust2y_chg_20", "Change of the 2-year Treasury yield over 20 sessions, percentage points"),
    _f("macro_fedfunds_chg_60", "Change of the effective federal funds rate over 60 sessions, percentage points"),
    _f("macro_cpi_yoy", "log(CPI / CPI 12 months earlier) of the newest published month"),
    _f("macro_unemployment_chg_3m", "Unemployment rate of the newest published month minus 3 months earlier"),
]
COLUMNS = [f.name for f in FEATURES]


def _day_numbers(values: object) -> np.ndarray:
    return pd.to_datetime(pd.Series(values)).dt.normalize().to_numpy(dtype="datetime64[ns]").astype(np.int64) // _DAY_NS


class _Series:
    """One indicator's published values: lookup of the value known on given days."""

    def __init__(self, frame: pd.DataFrame) -> None:
        frame = frame.assign(_day=_day_numbers(frame["date"]), _period=pd.to_datetime(frame["period"]))
        frame = frame.assign(value=pd.to_numeric(frame["value"], errors="coerce"))
        frame = frame[np.isfinite(frame["value"].to_numpy(dtype=np.float64))]
        # Published in order of period; among same-day publications the newest period is what is known.
        self.frame = frame.sort_values(["_day", "_period"], kind="stable").reset_index(drop=True)

    def known_on(self, days: np.ndarray, values: np.ndarray | None = None) -> np.ndarray:
        """The newest value (or ``values`` row) published on or before each day; NaN before the first."""
        source = self.frame["value"].to_numpy(dtype=np.float64) if values is None else values
        at = np.searchsorted(self.frame["_day"].to_numpy(), days, side="right") - 1
        out = np.full(len(days), np.nan)
        out[at >= 0] = source[at[at >= 0]]
        return out

    def period_change(self, months: int, log: bool = False) -> np.ndarray:
        """Per published row: its value against the period ``months`` earlier (NaN when that period is absent)."""
        by_period = pd.Series(self.frame["value"].to_numpy(), index=self.frame["_period"].dt.to_period("M"))
        by_period = by_period[~by_period.index.duplicated(keep="last")]
        earlier = by_period.reindex(self.frame["_period"].dt.to_period("M") - months).to_numpy(dtype=np.float64)
        now = self.frame["value"].to_numpy(dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            change = np.log(now / earlier) if log else now - earlier
        change[~np.isfinite(change)] = np.nan
        return change


def compute(panel: Panel, rows: Mapping[str, np.ndarray], macro: pd.DataFrame | None = None) -> None:
    """Fill :data:`COLUMNS` of ``rows`` from ``macro_indicators`` rows; NaN without them."""
    for name in COLUMNS:
        rows[name][:] = np.nan
    if macro is None or macro.empty:
        return
    series = {name: _Series(part) for name, part in macro.groupby("indicator", sort=False)}
    days = panel.days.to_numpy(dtype="datetime64[ns]").astype(np.int64) // _DAY_NS
    sessions = all_sessions().to_numpy(dtype="datetime64[ns]").astype(np.int64) // _DAY_NS
    ordinal = session_ordinals(days).astype(np.int64)

    def earlier(k: int) -> np.ndarray:
        return sessions[np.clip(ordinal - k, 0, len(sessions) - 1)]

    def level(name: str, on: np.ndarray = days) -> np.ndarray:
        return series[name].known_on(on) if name in series else np.full(len(on), np.nan)

    per_day = {
        "macro_curve_10y_2y": level("treasury_10y") - level("treasury_2y"),
        "macro_curve_10y_3m": level("treasury_10y") - level("treasury_3m"),
        "macro_ust10y_chg_20": level("treasury_10y") - level("treasury_10y", earlier(20)),
        "macro_ust2y_chg_20": level("treasury_2y") - level("treasury_2y", earlier(20)),
        "macro_fedfunds_chg_60": level("fed_funds") - level("fed_funds", earlier(60)),
    }
    if "cpi" in series:
        per_day["macro_cpi_yoy"] = series["cpi"].known_on(days, series["cpi"].period_change(12, log=True))
    if "unemployment" in series:
        per_day["macro_unemployment_chg_3m"] = series["unemployment"].known_on(days, series["unemployment"].period_change(3))
    for name, values in per_day.items():
        rows[name][:] = values[panel.day]
