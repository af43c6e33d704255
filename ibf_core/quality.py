"""Data-quality rules for market bars, independent of Dagster (the asset checks call these)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import pandas as pd

from ibf_core.bars import OHLC_TOLERANCE, unexplained_jumps
from ibf_core.calendar import latest_complete_session, trading_days

# |log return| above this is flagged unless a split explains it (a split is already adjusted away).
MAX_ABS_LOG_RETURN = 0.4
MAX_EXAMPLES = 5


@dataclass(frozen=True)
class QualityResult:
    name: str
    passed: bool
    summary: str
    details: dict[str, object] = field(default_factory=dict)


def _examples(frame: pd.DataFrame) -> list[str]:
    return [f"{r.symbol} {pd.Timestamp(r.date).date()}" for r in frame.head(MAX_EXAMPLES).itertuples()]


def check_ohlc_consistency(bars: pd.DataFrame) -> QualityResult:
    """Prices positive and open/close inside [low, high]."""
    slack = bars["high"] * OHLC_TOLERANCE
    bad = (
        (bars[["open", "high", "low", "close", "adj_close"]] <= 0).any(axis=1)
        | (bars["high"] < bars["low"] - slack)
        | (bars[["open", "close"]].max(axis=1) > bars["high"] + slack)
        | (bars[["open", "close"]].min(axis=1) < bars["low"] - slack)
        | bars[["open", "high", "low", "close", "adj_close", "volume"]].isna().any(axis=1)
    )
    n = int(bad.sum())
    return QualityResult(
        "ohlc_consistent",
        n == 0,
        f"{n} of {len(bars)} rows break OHLC ordering or have non-positive/missing prices",
        {"bad_rows": n, "examples": _examples(bars[bad])},
    )


def check_unique_key(bars: pd.DataFrame) -> QualityResult:
    dup = bars.duplicated(["symbol", "date"], keep=False)
    n = int(dup.sum())
    return QualityResult(
        "unique_symbol_date", n == 0, f"{n} rows share a (symbol, date)", {"duplicate_rows": n, "examples": _examples(bars[dup])}
    )


def missing_trading_days(bars: pd.DataFrame) -> pd.DataFrame:
    """Per symbol, NYSE sessions between its first and last stored bar that have no bar."""
    rows = []
    for symbol, group in bars.groupby("symbol", sort=True):
        expected = trading_days(group["date"].min(), group["date"].max())
        missing = expected.difference(pd.DatetimeIndex(group["date"]))
        rows.extend({"symbol": symbol, "date": d} for d in missing)
    return pd.DataFrame(rows, columns=["symbol", "date"])


def check_missing_days(bars: pd.DataFrame) -> QualityResult:
    missing = missing_trading_days(bars)
    per_symbol = missing.groupby("symbol").size().to_dict() if len(missing) else {}
    return QualityResult(
        "no_missing_trading_days",
        missing.empty,
        f"{len(missing)} NYSE sessions missing inside the stored range",
        {"missing_by_symbol": {k: int(v) for k, v in per_symbol.items()}, "examples": _examples(missing)},
    )


def check_return_jumps(bars: pd.DataFrame, bound: float = MAX_ABS_LOG_RETURN) -> QualityResult:
    jumps = unexplained_jumps(bars, bound)
    return QualityResult(
        "no_unexplained_jumps",
        jumps.empty,
        f"{len(jumps)} daily |log return| above {bound} not explained by a split",
        {
            "jumps": [
                f"{r.symbol} {pd.Timestamp(r.date).date()} {r.log_return:+.3f}" for r in jumps.head(MAX_EXAMPLES).itertuples()
            ]
        },
    )


def check_freshness(latest_by_symbol: dict[str, dt.date], max_age_sessions: int, now: pd.Timestamp | None = None) -> QualityResult:
    """Every symbol's newest bar is at most ``max_age_sessions`` sessions behind the latest complete session."""
    if not latest_by_symbol:
        return QualityResult("fresh", False, "no bars stored yet", {})
    latest_session = latest_complete_session(now)
    ages = {s: max(len(trading_days(d, latest_session)) - 1, 0) for s, d in latest_by_symbol.items()}
    stale = {s: a for s, a in ages.items() if a > max_age_sessions}
    oldest = max(ages.values())
    return QualityResult(
        "fresh",
        not stale,
        f"{len(stale)} of {len(ages)} symbols more than {max_age_sessions} sessions behind {latest_session}"
        f" (oldest is {oldest} sessions behind)",
        {"latest_complete_session": latest_session.isoformat(), "stale_sessions_by_symbol": stale},
    )
