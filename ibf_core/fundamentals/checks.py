"""Quality rules of the fundamentals and macro tables (the Dagster checks call these)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import pandas as pd

from ibf_core.fundamentals.inputs import MACRO_INDICATORS
from ibf_core.market.quality import MAX_EXAMPLES, QualityResult

MONTHLY = frozenset({"cpi", "unemployment"})


def check_earnings_point_in_time(earnings: pd.DataFrame) -> QualityResult:
    """Every report is usable from its own session only when released before the open, else later."""
    name = "earnings_point_in_time"
    if earnings.empty:
        return QualityResult(name, True, "no earnings rows")
    usable = pd.to_datetime(earnings["date"])
    reported = pd.to_datetime(earnings["reported_date"])
    pre_market = earnings["report_time"].fillna("").eq("pre-market")
    bad = earnings[(usable < reported) | ((usable == reported) & ~pre_market)]
    if bad.empty:
        return QualityResult(name, True, f"{len(earnings)} reports, none usable before its publication")
    examples = [f"{r.symbol} {pd.Timestamp(r.fiscal_date_ending).date()} reported {pd.Timestamp(r.reported_date).date()} "
                f"({r.report_time or 'time unknown'}) usable {pd.Timestamp(r.date).date()}" for r in bad.head(MAX_EXAMPLES).itertuples()]
    return QualityResult(name, False, f"{len(bad)} report(s) usable before publication", {"examples": examples})


def check_macro_point_in_time(macro: pd.DataFrame) -> QualityResult:
    """Every value is usable strictly after its period ended (a month's value after the month)."""
    name = "published_before_use"
    if macro.empty:
        return QualityResult(name, True, "no macro rows")
    period = pd.to_datetime(macro["period"])
    end = period.where(~macro["indicator"].isin(MONTHLY), period + pd.offsets.MonthEnd(0))
    bad = macro[pd.to_datetime(macro["date"]) <= end]
    if bad.empty:
        return QualityResult(name, True, f"{len(macro)} values, each usable only after its period")
    examples = [f"{r.indicator} {pd.Timestamp(r.period).date()} usable {pd.Timestamp(r.date).date()}" for r in bad.head(MAX_EXAMPLES).itertuples()]
    return QualityResult(name, False, f"{len(bad)} value(s) usable before their period ended", {"examples": examples})


def check_coverage(symbols: Sequence[str], inputs, issues: Iterable[tuple[str, str, str]]) -> QualityResult:
    """Symbols without an overview or without earnings, each with the recorded reason."""
    reasons: dict[str, str] = {}
    for subject, endpoint, reason in issues:
        reasons.setdefault(subject, f"{endpoint}: {reason}")
    with_overview = set(inputs.overview["symbol"]) if len(inputs.overview) else set()
    with_earnings = set(inputs.earnings["symbol"]) if len(inputs.earnings) else set()
    missing = {s: reasons.get(s, "no rows and no recorded reason") for s in symbols if s not in with_overview or s not in with_earnings}
    summary = f"{len(symbols) - len(missing)} of {len(symbols)} symbols have an overview and earnings"
    return QualityResult("fundamentals_coverage", not missing, summary, {"missing": dict(list(missing.items())[:20])})


def check_macro_coverage(known: pd.DataFrame, end: pd.Timestamp, issues: Iterable[tuple[str, str, str]]) -> QualityResult:
    """Every indicator has a value usable by the partition's end."""
    reasons = {subject: f"{endpoint}: {reason}" for subject, endpoint, reason in issues}
    have = set(known["indicator"]) if len(known) else set()
    missing = {i: reasons.get(i, f"no value published by {end.date()}") for i in MACRO_INDICATORS if i not in have}
    summary = f"{len(have & set(MACRO_INDICATORS))} of {len(MACRO_INDICATORS)} indicators known by {end.date()}"
    return QualityResult("macro_coverage", not missing, summary, {"missing": missing})
