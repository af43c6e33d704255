"""Data-quality rules for market bars, independent of Dagster (the asset checks call these)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ibf_core.calendar import latest_complete_session, trading_days
from ibf_core.market.bars import OHLC_TOLERANCE, unexplained_jumps
from ibf_core.market.issues import IssueSummary

# Heavy imports (talib) stay inside the functions that need them: importing this module loads none of them.

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


def check_ohlc_consistency(bars: pd.DataFrame, issues: pd.DataFrame | None = None) -> QualityResult:
    """Stored prices positive and open/close inside [low, high] (volume may be NULL: a source without one).

    It judges the rows as stored, i.e. after the bar policy's repairs; ``issues`` (what the load recorded in
    ``bar_issues`` for this slice) adds how many rows were repaired or dropped to get there.
    """
    slack = bars["high"] * OHLC_TOLERANCE
    prices = ["open", "high", "low", "close", "adj_close"]
    bad = (
        (bars[prices] <= 0).any(axis=1)
        | (bars["high"] < bars["low"] - slack)
        | (bars[["open", "close"]].max(axis=1) > bars["high"] + slack)
        | (bars[["open", "close"]].min(axis=1) < bars["low"] - slack)
        | bars[prices].isna().any(axis=1)
    )
    n = int(bad.sum())
    summary = f"{n} of {len(bars)} stored rows break OHLC ordering or have non-positive/missing prices"
    details: dict[str, object] = {"bad_rows": n, "examples": _examples(bars[bad])}
    if issues is not None:
        recorded = IssueSummary.of(issues)
        summary += f"; the load: {recorded.line()}"
        details.update(
            rows_repaired=recorded.rows_repaired, rows_dropped=recorded.rows_dropped, issues_by_rule=recorded.by_rule
        )
    return QualityResult("ohlc_consistent", n == 0, summary, details)


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
        f"{len(missing)} NYSE sessions missing inside the stored range (each one a missing_session row of bar_issues)",
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


# ----- features and news ------------------------------------------------------------------------------
# A feature column may be at most this share NaN on rows past the warm-up (sparse inputs such as the real
# spread or news sentiment are exempt through ``allowed_sparse``).
MAX_NAN_SHARE_AFTER_WARMUP = 0.05


def check_no_infinities(frame: pd.DataFrame, columns: list[str]) -> QualityResult:
    values = frame[columns].to_numpy(dtype="float64", na_value=np.nan)
    bad = np.isinf(values)
    per_column = {c: int(n) for c, n in zip(columns, bad.sum(axis=0)) if n}
    return QualityResult(
        "no_infinities", not per_column, f"{int(bad.sum())} infinite values in {len(per_column)} columns",
        {"infinite_by_column": per_column},
    )


def check_nan_share_after_warmup(
    frame: pd.DataFrame,
    columns: list[str],
    allowed_sparse: set[str],
    threshold: float = MAX_NAN_SHARE_AFTER_WARMUP,
    support: pd.DataFrame | None = None,
) -> QualityResult:
    """Share of NaN per feature after *its own* warm-up; sparse-by-nature columns are reported, not judged.

    ``support``: the support-state frame of ``frame``'s rows (``compute_features_with_support``). A feature is
    then judged only on the rows where the data supports it (past its own ``min_history`` bars, every bar input
    it reads present); a feature no row supports (a close-only file has no volume features) is reported with
    the reason, not judged. Without ``support`` the rows past the common ``warmup`` flag are judged.
    """
    judged = [c for c in columns if c not in allowed_sparse]
    if support is None:
        ready = frame.loc[~frame["warmup"].astype(bool), columns]
        if ready.empty:
            return QualityResult("nan_share_after_warmup", True, "no rows past the warm-up in this slice", {})
        shares, sparse_shares, unsupported = ready[judged].isna().mean(), ready.isna().mean(), {}
    else:
        shares, sparse_shares, unsupported = _supported_nan_shares(frame, support, columns, judged)
    over = shares[shares > threshold].sort_values(ascending=False)
    note = f"; {len(unsupported)} not supported by the data (not judged)" if unsupported else ""
    return QualityResult(
        "nan_share_after_warmup",
        over.empty,
        f"{len(over)} of {len(shares)} features above {threshold:.0%} NaN after their warm-up (worst: "
        f"{over.index[0] if len(over) else '-'} {over.iloc[0] if len(over) else 0:.1%}){note}",
        {"over_threshold": {k: round(float(v), 4) for k, v in over.items()},
         "sparse_columns": {c: round(float(sparse_shares[c]), 4) for c in columns if c in allowed_sparse and c in sparse_shares},
         "not_supported": unsupported},
    )


def _supported_nan_shares(
    frame: pd.DataFrame, support: pd.DataFrame, columns: list[str], judged: list[str]
) -> tuple[pd.Series, pd.Series, dict[str, str]]:
    """(NaN share of each judged feature on its supported rows, NaN share of every column, unsupported -> why)."""
    from ibf_core.features.pipeline import unsupported_reasons

    if len(support) != len(frame):
        raise ValueError(f"support frame has {len(support)} rows, the features {len(frame)}")
    return nan_shares_where_supported(frame, support, judged), frame[columns].isna().mean(), unsupported_reasons(support, judged)


def nan_shares_where_supported(frame: pd.DataFrame, support: pd.DataFrame, columns: list[str]) -> pd.Series:
    """NaN share of each feature on the rows where the data supports it; features no row supports are left out."""
    from ibf_core.features.pipeline import SUPPORTED

    shares = {}
    for column in columns:
        ok = support[column].to_numpy() == SUPPORTED
        if ok.any():
            shares[column] = float(np.isnan(frame[column].to_numpy(dtype=np.float64)[ok]).mean())
    return pd.Series(shares, dtype=float)


def check_schema(frame: pd.DataFrame, expected: list[str]) -> QualityResult:
    got = [c for c in frame.columns]
    missing = [c for c in expected if c not in got]
    extra = [c for c in got if c not in expected]
    return QualityResult(
        "schema_matches", not missing and not extra and got == expected,
        f"{len(missing)} missing, {len(extra)} unexpected columns" + ("" if got == expected or missing or extra else "; order differs"),
        {"missing": missing, "unexpected": extra},
    )


def check_news_coverage(daily: pd.DataFrame, symbols: list[str], news_source: str, min_share: float = 0.2) -> QualityResult:
    """Share of sessions with at least one article, per symbol (WARN when a symbol is mostly uncovered)."""
    if news_source == "none":
        return QualityResult("news_coverage", True, "news disabled (IBF_NEWS_SOURCE=none): features carry no news", {})
    covered = daily.assign(has=daily["news_count"] > 0).groupby("symbol")["has"].mean() if len(daily) else pd.Series(dtype=float)
    shares = {s: round(float(covered.get(s, 0.0)), 4) for s in symbols}
    low = {s: v for s, v in shares.items() if v < min_share}
    return QualityResult(
        "news_coverage", not low,
        f"{len(low)} of {len(symbols)} symbols have news on fewer than {min_share:.0%} of sessions",
        {"share_of_sessions_with_news": shares},
    )
