"""Alpha Vantage ``OVERVIEW``, ``EARNINGS``, ``EARNINGS_CALENDAR`` (CSV) and economic-indicator bodies as frames.

Alpha Vantage sends numbers as strings and marks a missing one ``"None"``, ``"-"``, ``""`` or (economic series)
``"."``. Parsing never invents a value: a missing number is NaN, a missing macro value leaves its period out, and a
row that cannot be dated is skipped. Every such decision is an :class:`Issue` (stored in ``fundamentals_issues``).
A body of the wrong shape (not an object, no ``quarterlyEarnings``/``data`` list, a CSV without its columns, another
symbol's data) is a :class:`MalformedResponseError`: the format changed, so the load stops rather than guess.
``{}`` is Alpha Vantage's "no data" (a symbol it does not cover, an ETF or fund without fundamentals).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

from ibf_core.fundamentals import pit
from ibf_core.fundamentals.inputs import CALENDAR_COLUMNS, EARNINGS_COLUMNS, MACRO_COLUMNS, MACRO_INDICATORS
from ibf_core.news.alphavantage import MalformedResponseError

MISSING_TEXTS = frozenset({"", "none", "-", ".", "null", "n/a", "nan"})
# OVERVIEW key -> column (text columns first, then the numeric snapshot fields).
OVERVIEW_TEXT = {"AssetType": "asset_type", "Exchange": "exchange", "Sector": "sector", "Industry": "industry",
                 "Name": "name"}  # fmt: skip
OVERVIEW_NUMBERS = {
    "SharesOutstanding": "shares_outstanding", "AnalystTargetPrice": "analyst_target_price",
    "AnalystRatingStrongBuy": "analyst_strong_buy", "AnalystRatingBuy": "analyst_buy",
    "AnalystRatingHold": "analyst_hold", "AnalystRatingSell": "analyst_sell",
    "AnalystRatingStrongSell": "analyst_strong_sell",
}  # fmt: skip
EARNINGS_NUMBERS = {"reportedEPS": "reported_eps", "estimatedEPS": "estimated_eps", "surprise": "surprise",
                    "surprisePercentage": "surprise_pct"}  # fmt: skip
REPORT_TIMES = frozenset({"pre-market", "post-market"})
CALENDAR_FIELDS = ("symbol", "reportDate", "fiscalDateEnding", "estimate")


@dataclass(frozen=True)
class Issue:
    """Something a load skipped or could not read, and why; ``date`` None means the recording session."""

    subject: str  # symbol or indicator
    endpoint: str  # Alpha Vantage function
    reason: str
    date: pd.Timestamp | None = None


def _missing(raw: Any) -> bool:
    return raw is None or (isinstance(raw, float) and math.isnan(raw)) or str(raw).strip().lower() in MISSING_TEXTS


def _number(raw: Any, label: str, issues: list[Issue], subject: str, endpoint: str, when: Any = None) -> float:
    """A finite float, NaN when missing; an unreadable value is NaN and an issue."""
    if _missing(raw):
        return math.nan
    try:
        value = float(str(raw).strip().replace(",", ""))
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        issues.append(Issue(subject, endpoint, f"{label} {str(raw)[:40]!r} is not a number: stored as missing", when))
        return math.nan
    return value


def _day(raw: Any) -> pd.Timestamp | None:
    """An ISO ``YYYY-MM-DD`` as a midnight timestamp; None when missing or unreadable."""
    if _missing(raw):
        return None
    try:
        return pd.Timestamp(pd.to_datetime(str(raw).strip(), format="%Y-%m-%d"))
    except (ValueError, TypeError):
        return None


def _text(raw: Any) -> str | None:
    return None if _missing(raw) else str(raw).strip()


def _object(body: Any, subject: str, context: str) -> Mapping[str, Any]:
    if not isinstance(body, Mapping):
        raise MalformedResponseError(f"{context}: the top level is not an object", symbol=subject, field="<body>")
    return body


def _frame(rows: list[dict[str, Any]], columns: Iterable[str]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=list(columns))


# ----- OVERVIEW ---------------------------------------------------------------------------------------------
def parse_overview(body: Any, symbol: str) -> tuple[dict[str, Any] | None, list[Issue]]:
    """The overview row of ``symbol`` (classification, name and snapshot fields; no date), or None for ``{}``."""
    context = f"OVERVIEW {symbol}"
    body = _object(body, symbol, context)
    if not body:
        reason = "no overview: Alpha Vantage answers {} (a symbol it does not cover, or an ETF/fund without fundamentals)"
        return None, [Issue(symbol, "OVERVIEW", reason)]
    got = str(body.get("Symbol", "")).strip().upper()
    if got != symbol:
        what = f"is {got!r}" if got else "is missing"
        raise MalformedResponseError(f"{context}: 'Symbol' {what}", symbol=symbol, field="Symbol")
    issues: list[Issue] = []
    row: dict[str, Any] = {"symbol": symbol}
    row.update({column: _text(body.get(key)) for key, column in OVERVIEW_TEXT.items()})
    row.update({column: _number(body.get(key), key, issues, symbol, "OVERVIEW") for key, column in OVERVIEW_NUMBERS.items()})
    return row, issues


# ----- EARNINGS ---------------------------------------------------------------------------------------------
def parse_earnings(body: Any, symbol: str) -> tuple[pd.DataFrame, list[Issue]]:
    """``quarterlyEarnings`` as ``EARNINGS_COLUMNS`` rows dated by ``pit.earnings_dates``; bad rows are issues."""
    context = f"EARNINGS {symbol}"
    body = _object(body, symbol, context)
    if not body:
        return _frame([], EARNINGS_COLUMNS), [Issue(symbol, "EARNINGS", "no earnings: Alpha Vantage answers {}")]
    got = str(body.get("symbol", symbol)).strip().upper()
    if got != symbol:
        raise MalformedResponseError(f"{context}: 'symbol' is {got!r}", symbol=symbol, field="symbol")
    quarters = body.get("quarterlyEarnings")
    if not isinstance(quarters, list):
        what = "is missing" if quarters is None else "is not a list"
        raise MalformedResponseError(f"{context}: 'quarterlyEarnings' {what}", symbol=symbol, field="quarterlyEarnings")
    if not quarters:
        return _frame([], EARNINGS_COLUMNS), [Issue(symbol, "EARNINGS", "no quarterly earnings (an ETF or fund?)")]
    rows, issues, seen = [], [], set()
    for i, item in enumerate(quarters):
        if not isinstance(item, Mapping):
            issues.append(Issue(symbol, "EARNINGS", f"quarterlyEarnings[{i}] is not an object: skipped"))
            continue
        fiscal, reported = _day(item.get("fiscalDateEnding")), _day(item.get("reportedDate"))
        if fiscal is None or reported is None:
            name, raw = ("fiscalDateEnding", item.get("fiscalDateEnding")) if fiscal is None else (
                "reportedDate", item.get("reportedDate"))  # fmt: skip
            reason = f"quarterlyEarnings[{i}] {name} {str(raw)[:40]!r} is not a date: row skipped"
            issues.append(Issue(symbol, "EARNINGS", reason, fiscal or reported))
            continue
        if fiscal in seen:
            issues.append(Issue(symbol, "EARNINGS", f"fiscalDateEnding {fiscal.date()} listed twice: the first kept", fiscal))
            continue
        seen.add(fiscal)
        time = str(item.get("reportTime") or "").strip().lower()
        row = {"symbol": symbol, "fiscal_date_ending": fiscal, "reported_date": reported,
               "report_time": time if time in REPORT_TIMES else ""}  # fmt: skip
        row.update({c: _number(item.get(k), k, issues, symbol, "EARNINGS", fiscal) for k, c in EARNINGS_NUMBERS.items()})
        rows.append(row)
    frame = _frame(rows, [c for c in EARNINGS_COLUMNS if c != "date"])
    frame.insert(EARNINGS_COLUMNS.index("date"), "date", pit.earnings_dates(frame["reported_date"], frame["report_time"]))
    return _dated(frame, symbol, "EARNINGS", "reported_date", issues)


def _dated(frame: pd.DataFrame, subject: str, endpoint: str, source: str, issues: list[Issue]) -> tuple[pd.DataFrame, list[Issue]]:
    """Rows whose ``date`` has a session (beyond the loaded calendar: skipped and an issue)."""
    lost = frame["date"].isna()
    for day in frame.loc[lost, source]:
        issues.append(Issue(subject, endpoint, f"{source} {pd.Timestamp(day).date()} is beyond the NYSE calendar: skipped", day))
    return frame.loc[~lost].reset_index(drop=True), issues


# ----- EARNINGS_CALENDAR ------------------------------------------------------------------------------------
def parse_calendar(text: str, symbols: Iterable[str], session: pd.Timestamp) -> tuple[pd.DataFrame, list[Issue]]:
    """The CSV's rows of ``symbols`` as ``CALENDAR_COLUMNS`` recorded on ``session``; undated rows are issues."""
    wanted = set(symbols)
    if not text.strip():
        return _frame([], CALENDAR_COLUMNS), []
    reader = csv.DictReader(io.StringIO(text))
    missing = [f for f in CALENDAR_FIELDS if f not in (reader.fieldnames or ())]
    if missing:
        raise MalformedResponseError(
            f"EARNINGS_CALENDAR: the CSV lacks column(s) {', '.join(missing)}", field=missing[0]
        )
    rows, issues, seen = [], [], set()
    for line, item in enumerate(reader, start=2):
        symbol = str(item.get("symbol") or "").strip().upper()
        if symbol not in wanted:
            continue
        report, fiscal = _day(item.get("reportDate")), _day(item.get("fiscalDateEnding"))
        if report is None:
            reason = f"line {line} reportDate {str(item.get('reportDate'))[:40]!r} is not a date: row skipped"
            issues.append(Issue(symbol, "EARNINGS_CALENDAR", reason))
            continue
        if (symbol, report) in seen:
            issues.append(Issue(symbol, "EARNINGS_CALENDAR", f"reportDate {report.date()} listed twice: the first kept"))
            continue
        seen.add((symbol, report))
        estimate = _number(item.get("estimate"), "estimate", issues, symbol, "EARNINGS_CALENDAR")
        rows.append({"symbol": symbol, "date": session, "report_date": report, "fiscal_date_ending": fiscal,
                     "estimate": estimate})  # fmt: skip
    return _frame(rows, CALENDAR_COLUMNS), issues


# ----- economic indicators ----------------------------------------------------------------------------------
def parse_macro(body: Any, indicator: str) -> tuple[pd.DataFrame, str, list[Issue]]:
    """(``MACRO_COLUMNS`` rows dated by ``pit.macro_dates``, the unit); a "." value leaves its period out."""
    function = MACRO_INDICATORS[indicator][0]
    context = f"{function} ({indicator})"
    body = _object(body, indicator, context)
    if not body:
        return _frame([], MACRO_COLUMNS), "", [Issue(indicator, function, "no data: Alpha Vantage answers {}")]
    data = body.get("data")
    if not isinstance(data, list):
        what = "is missing" if data is None else "is not a list"
        raise MalformedResponseError(f"{context}: 'data' {what}", symbol=indicator, field="data")
    rows, issues, seen = [], [], set()
    for i, item in enumerate(data):
        period = _day(item.get("date")) if isinstance(item, Mapping) else None
        if period is None:
            raw = item.get("date") if isinstance(item, Mapping) else item
            issues.append(Issue(indicator, function, f"data[{i}] date {str(raw)[:40]!r} is not a date: skipped"))
            continue
        raw = item.get("value")
        if _missing(raw):
            reason = f"no value for {period.date()} (Alpha Vantage sent {str(raw)!r}): period left out, not filled"
            issues.append(Issue(indicator, function, reason, period))
            continue
        value = _number(raw, f"value of {period.date()}", issues, indicator, function, period)
        if math.isnan(value):
            continue
        if period in seen:
            issues.append(Issue(indicator, function, f"period {period.date()} listed twice: the first kept", period))
            continue
        seen.add(period)
        rows.append({"indicator": indicator, "period": period, "value": value})
    frame = _frame(rows, ["indicator", "period", "value"])
    frame.insert(2, "date", pit.macro_dates(indicator, frame["period"]))
    frame, issues = _dated(frame, indicator, function, "period", issues)
    return frame[list(MACRO_COLUMNS)], str(body.get("unit") or ""), issues
