"""Loading fundamentals, earnings and macro series into the warehouse, and reading them back (the package's entry points)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from ibf_core.fundamentals.alphavantage import Issue, parse_calendar, parse_earnings, parse_macro, parse_overview
from ibf_core.fundamentals.inputs import (
    CALENDAR_COLUMNS,
    EARNINGS_COLUMNS,
    MACRO_COLUMNS,
    MACRO_INDICATORS,
    OVERVIEW_COLUMNS,
    SNAPSHOT_COLUMNS,
    FundamentalInputs,
)
from ibf_core.fundamentals.pit import RELEASE_LAG, recording_session
from ibf_core.fundamentals.sample import SAMPLE_SOURCE_NOTE, sample_overview
from ibf_core.fundamentals.store import (
    EARNINGS,
    EARNINGS_CALENDAR,
    FUNDAMENTALS,
    FUNDAMENTALS_ISSUES,
    FUNDAMENTALS_TABLES,
    MACRO_INDICATORS_TABLE,
    Batch,
    empty,
    read_table,
    write_batch,
)
from ibf_core.news.alphavantage import (
    AlphaVantageClient,
    BudgetExhaustedError,
    MissingApiKeyError,
    NotEntitledError,
    RateLimitedError,
    redact,
)
from ibf_core.news.store import NewsProgress, source_id
from ibf_core.settings import normalize_symbol
from ibf_core.sources.sample import SAMPLE_SYMBOLS
from ibf_core.storage.interface import TableStore

__all__ = [
    "FUNDAMENTALS_TABLES",
    "RELEASE_LAG",
    "FundamentalInputs",
    "FundamentalsIncompleteError",
    "FundamentalsLoadResult",
    "load_fundamentals",
    "load_macro",
    "read_inputs",
    "read_issues",
]  # fmt: skip

log = logging.getLogger("ibf_core.fundamentals")  # the name it logged under before the move

API_KEY_ENV = "ALPHAVANTAGE_API_KEY"
SOURCES = ("alphavantage", "sample", "none")
CALENDAR_HORIZON = "3month"
TABLES_OF = {  # what each load reports counts for
    "fundamentals": (FUNDAMENTALS.name, EARNINGS.name, EARNINGS_CALENDAR.name, FUNDAMENTALS_ISSUES.name),
    "macro": (MACRO_INDICATORS_TABLE.name, FUNDAMENTALS_ISSUES.name),
}
READ_LOOKBACK_DAYS = 400  # read_inputs keeps this much before ``start``: a year of quarters and monthly values


class FundamentalsIncompleteError(RuntimeError):
    """Raised by ``FundamentalsLoadResult.raise_if_incomplete``: the quota ran out; the message names what remains."""


@dataclass(frozen=True)
class FundamentalsLoadResult:
    """What one load did: rows written per table, requests sent, the issues it recorded and what remains."""

    what: str  # fundamentals or macro
    source: str
    session: pd.Timestamp | None  # the recording session (snapshots, calendar rows, issues without a date)
    rows: Mapping[str, int] = field(default_factory=dict)
    requests: int = 0
    issues: tuple[tuple[str, str, str], ...] = ()  # (subject, endpoint, reason)
    complete: bool = True
    remaining: tuple[tuple[str, str], ...] = ()  # (subject, endpoint) not fetched because the quota ran out
    note: str = ""

    def raise_if_incomplete(self) -> None:
        if not self.complete:
            raise FundamentalsIncompleteError(self.note)

    def metadata(self) -> dict[str, Any]:
        """Plain values for Dagster metadata (never the API key)."""
        return {
            f"{self.what}_source": self.source,
            "recording_session": str(self.session.date()) if self.session is not None else "-",
            **{f"rows_{name}": int(n) for name, n in self.rows.items()},
            "requests": self.requests,
            "issues": len(self.issues),
            "issue_examples": "; ".join(f"{s} {e}: {r}" for s, e, r in self.issues[:5]) or "-",
            "complete": self.complete,
            "remaining": ", ".join(f"{s} {e}" for s, e in self.remaining) or "-",
            "note": self.note,
        }


# ----- fetching ---------------------------------------------------------------------------------------------
class _Fetcher:
    """Sends requests in order; a not-entitled endpoint becomes an issue, a rate limit stops every later request."""

    def __init__(self, client: AlphaVantageClient):
        self.client = client
        self.issues: list[Issue] = []
        self.remaining: list[tuple[str, str]] = []
        self.stopped: RateLimitedError | None = None

    def fetch(self, subjects: Sequence[str], endpoint: str, call: Callable[[], Any]) -> tuple[bool, Any]:
        """(True, the body), or (False, None) when skipped (recorded) or stopped (remaining)."""
        if self.stopped is None:
            try:
                return True, call()
            except NotEntitledError as exc:
                reason = f"not available to this API key (premium endpoint or demo key): {exc}"
                self.issues.extend(Issue(s, endpoint, reason) for s in subjects)
                return False, None
            except RateLimitedError as exc:
                self.stopped = exc  # the quota is spent: keep what is complete, report the rest
        self.remaining.extend((s, endpoint) for s in subjects)
        return False, None


def _clock(now: Any) -> pd.Timestamp:
    stamp = pd.Timestamp.now(tz="UTC") if now is None else pd.Timestamp(now)
    return (stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")).floor("us")


def _symbols(symbols: Sequence[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(normalize_symbol(s) for s in symbols))


def _run_alphavantage(
    settings: Any,
    store: TableStore,
    now: pd.Timestamp,
    client: AlphaVantageClient | None,
    timeout: float,
    retries: int,
    steps: Callable[[_Fetcher], Batch],
) -> tuple[Batch, _Fetcher, int, str]:
    """Run ``steps`` with a client whose every request counts against the shared daily budget; (batch, fetcher,
    requests sent, the key to redact)."""
    base_url = getattr(settings, "alphavantage_url", "https://www.alphavantage.co")
    per_day = int(getattr(settings, "alphavantage_requests_per_day", 25))
    secret = getattr(settings, "alphavantage_api_key", None)
    key = secret.get_secret_value().strip() if secret is not None else ""
    own = client is None
    if own:
        if not key:
            raise MissingApiKeyError(f"IBF_FUNDAMENTALS_SOURCE=alphavantage needs the environment variable {API_KEY_ENV}")
        client = AlphaVantageClient(base_url, key, timeout=timeout, retries=retries)
    progress = NewsProgress(store, source_id(client.base_url))
    today = now.tz_convert("America/New_York").date()

    def take_request() -> None:
        if progress.take_request(today, per_day) < 0:
            raise BudgetExhaustedError(
                f"the daily budget of {per_day} Alpha Vantage requests (IBF_ALPHAVANTAGE_REQUESTS_PER_DAY) is spent for {today}"
            )

    previous_hook, sent_before = client.on_request, client.requests_sent
    client.on_request = take_request
    fetcher = _Fetcher(client)
    try:
        batch = steps(fetcher)
    finally:
        client.on_request = previous_hook
        requests = client.requests_sent - sent_before
        if own:
            client.close()
    return batch, fetcher, requests, client.api_key


def _issues_frame(issues: Sequence[Issue], session: pd.Timestamp, now: pd.Timestamp, secret: str) -> pd.DataFrame:
    rows = [
        {"subject": i.subject, "endpoint": i.endpoint, "date": i.date if i.date is not None else session,
         "reason": redact(i.reason, secret), "recorded_at": now}
        for i in issues
    ]  # fmt: skip
    frame = pd.DataFrame(rows, columns=FUNDAMENTALS_ISSUES.column_names) if rows else empty(FUNDAMENTALS_ISSUES)
    return frame.drop_duplicates(list(FUNDAMENTALS_ISSUES.key)).reset_index(drop=True)


def _finish(
    what: str,
    source: str,
    store: TableStore,
    batch: Batch,
    issues: Sequence[Issue],
    session: pd.Timestamp,
    now: pd.Timestamp,
    *,
    requests: int = 0,
    remaining: Sequence[tuple[str, str]] = (),
    stopped: RateLimitedError | None = None,
    secret: str = "",
) -> FundamentalsLoadResult:
    """Write the batch (with its issues) in one transaction and describe it."""
    batch.issues = _issues_frame(issues, session, now, secret)
    written = write_batch(store, batch)
    rows = {name: written.get(name, 0) for name in TABLES_OF[what]}
    recorded = tuple((i.subject, i.endpoint, redact(i.reason, secret)) for i in issues)
    note = f"{what} ({source}): " + ", ".join(f"{n} {t} row(s)" for t, n in rows.items()) + f"; {requests} request(s)"
    if recorded:
        note += f"; {len(recorded)} issue(s) recorded in fundamentals_issues"
    if stopped is not None:
        left = ", ".join(f"{s} {e}" for s, e in remaining)
        note += (
            f". STOPPED, quota exhausted: {redact(str(stopped), secret)}. What was fetched completely is kept; "
            f"not yet fetched: {left}. The next run fetches them."
        )
    (log.warning if stopped is not None or recorded else log.info)("%s", note)
    return FundamentalsLoadResult(
        what, source, session, rows, requests, recorded, stopped is None, tuple(remaining), note
    )


# ----- fundamentals -----------------------------------------------------------------------------------------
def load_fundamentals(
    settings: Any,
    store: TableStore,
    symbols: Sequence[str],
    now: Any = None,
    *,
    client: AlphaVantageClient | None = None,
    timeout: float = 30.0,
    retries: int = 3,
) -> FundamentalsLoadResult:
    """Fetch and store OVERVIEW and EARNINGS of ``symbols`` and their EARNINGS_CALENDAR rows (``now``: the clock,
    UTC; ``client`` replaces the one built from the settings, for tests)."""
    source = getattr(settings, "fundamentals_source", "sample")
    names, stamp = _symbols(symbols), _clock(now)
    session = recording_session(stamp)
    if source == "none":
        return FundamentalsLoadResult("fundamentals", "none", session, note="IBF_FUNDAMENTALS_SOURCE=none: nothing loaded")
    if source == "sample":
        return _load_sample(store, names, session, stamp)
    if source != "alphavantage":
        raise ValueError(f"IBF_FUNDAMENTALS_SOURCE: unknown source {source!r} ({', '.join(SOURCES)})")

    def steps(fetcher: _Fetcher) -> Batch:
        batch, issues = Batch(), fetcher.issues
        got, text = fetcher.fetch(names, "EARNINGS_CALENDAR", lambda: fetcher.client.get_csv(
            "EARNINGS_CALENDAR", {"horizon": CALENDAR_HORIZON}))  # fmt: skip
        if got:
            calendar, found = parse_calendar(text, names, session)
            batch.calendar, batch.calendar_scope = calendar.assign(fetched_at=stamp), tuple((s, session) for s in names)
            issues.extend(found)
        overviews, earnings = [], []
        for symbol in names:
            got, body = fetcher.fetch([symbol], "OVERVIEW", lambda s=symbol: fetcher.client.get_json("OVERVIEW", symbol=s))
            if got:
                row, found = parse_overview(body, symbol)
                issues.extend(found)
                if row is not None:
                    overviews.append({**row, "date": session, "fetched_at": stamp, "origin": "alphavantage"})
            got, body = fetcher.fetch([symbol], "EARNINGS", lambda s=symbol: fetcher.client.get_json("EARNINGS", symbol=s))
            if got:
                frame, found = parse_earnings(body, symbol)
                issues.extend(found)
                earnings.append(frame)
        if overviews:
            batch.overview = pd.DataFrame(overviews, columns=FUNDAMENTALS.column_names)
        if any(len(f) for f in earnings):
            batch.earnings = pd.concat([f for f in earnings if len(f)], ignore_index=True)
        return batch

    batch, fetcher, requests, secret = _run_alphavantage(settings, store, stamp, client, timeout, retries, steps)
    return _finish(
        "fundamentals", "alphavantage", store, batch, fetcher.issues, session, stamp,
        requests=requests, remaining=fetcher.remaining, stopped=fetcher.stopped, secret=secret,
    )  # fmt: skip


def _load_sample(store: TableStore, names: tuple[str, ...], session: pd.Timestamp, stamp: pd.Timestamp) -> FundamentalsLoadResult:
    """The embedded real classification of the sample symbols; everything else recorded as not in the sample."""
    rows, issues = [], []
    for symbol in names:
        row = sample_overview(symbol)
        if row is None:
            reason = f"{symbol} is not in the embedded sample ({', '.join(SAMPLE_SYMBOLS)}): no overview"
            issues.append(Issue(symbol, "OVERVIEW", reason))
        else:
            snapshot = dict.fromkeys(SNAPSHOT_COLUMNS, float("nan"))
            rows.append({**row, **snapshot, "date": session, "fetched_at": stamp, "origin": "sample"})
        for endpoint in ("EARNINGS", "EARNINGS_CALENDAR"):
            issues.append(Issue(symbol, endpoint, SAMPLE_SOURCE_NOTE.format(what="earnings")))
    batch = Batch()
    if rows:
        batch.overview = pd.DataFrame(rows, columns=FUNDAMENTALS.column_names)
    return _finish("fundamentals", "sample", store, batch, issues, session, stamp)


# ----- macro ------------------------------------------------------------------------------------------------
def load_macro(
    settings: Any,
    store: TableStore,
    now: Any = None,
    *,
    client: AlphaVantageClient | None = None,
    timeout: float = 30.0,
    retries: int = 3,
) -> FundamentalsLoadResult:
    """Fetch and store every indicator of ``MACRO_INDICATORS``, each value dated by ``pit.macro_dates``."""
    source = getattr(settings, "fundamentals_source", "sample")
    stamp = _clock(now)
    session = recording_session(stamp)
    if source == "none":
        return FundamentalsLoadResult("macro", "none", session, note="IBF_FUNDAMENTALS_SOURCE=none: nothing loaded")
    if source == "sample":
        issues = [Issue(name, function, SAMPLE_SOURCE_NOTE.format(what="macro")) for name, (function, _) in MACRO_INDICATORS.items()]
        return _finish("macro", "sample", store, Batch(), issues, session, stamp)
    if source != "alphavantage":
        raise ValueError(f"IBF_FUNDAMENTALS_SOURCE: unknown source {source!r} ({', '.join(SOURCES)})")

    def steps(fetcher: _Fetcher) -> Batch:
        frames = []
        for name, (function, params) in MACRO_INDICATORS.items():
            got, body = fetcher.fetch([name], function, lambda f=function, p=params: fetcher.client.get_json(f, p))
            if not got:
                continue
            frame, unit, found = parse_macro(body, name)
            fetcher.issues.extend(found)
            if len(frame):
                frames.append(frame.assign(unit=unit, release_lag_days=RELEASE_LAG[name]))
        batch = Batch()
        if frames:
            batch.macro = pd.concat(frames, ignore_index=True)
        return batch

    batch, fetcher, requests, secret = _run_alphavantage(settings, store, stamp, client, timeout, retries, steps)
    return _finish(
        "macro", "alphavantage", store, batch, fetcher.issues, session, stamp,
        requests=requests, remaining=fetcher.remaining, stopped=fetcher.stopped, secret=secret,
    )  # fmt: skip


# ----- reading ----------------------------------------------------------------------------------------------
def _window(frame: pd.DataFrame, start: Any, end: Any, lookback_days: int) -> pd.DataFrame:
    if start is not None:
        frame = frame[frame["date"] >= pd.Timestamp(start) - pd.Timedelta(days=lookback_days)]
    if end is not None:
        frame = frame[frame["date"] <= pd.Timestamp(end)]
    return frame.reset_index(drop=True)


def read_inputs(
    store: TableStore,
    symbols: Sequence[str],
    start: Any = None,
    end: Any = None,
    *,
    lookback_days: int = READ_LOOKBACK_DAYS,
) -> FundamentalInputs:
    """The stored values as the features' point-in-time frames (dates datetime64, numbers float64).

    Earnings, calendar and macro rows are those dated in [start - ``lookback_days``, end] (what a feature of a
    session in [start, end] may need: the values in force and a year of history); macro is not filtered by symbol.
    ``overview`` keeps every recording of ``symbols`` whatever its date: the newest gives the classification.
    """
    names = list(_symbols(symbols))
    overview = read_table(store, FUNDAMENTALS, names)[list(OVERVIEW_COLUMNS)]
    earnings = _window(read_table(store, EARNINGS, names), start, end, lookback_days)
    calendar = _window(read_table(store, EARNINGS_CALENDAR, names), start, end, lookback_days)
    macro = _window(read_table(store, MACRO_INDICATORS_TABLE), start, end, lookback_days)
    return FundamentalInputs(
        overview=overview.reset_index(drop=True),
        earnings=earnings[list(EARNINGS_COLUMNS)],
        calendar=calendar[list(CALENDAR_COLUMNS)],
        macro=macro.sort_values(["indicator", "date", "period"], kind="stable")[list(MACRO_COLUMNS)].reset_index(drop=True),
    )


def read_issues(store: TableStore, endpoints: Sequence[str] | None = None) -> pd.DataFrame:
    """Stored ``fundamentals_issues`` (optionally of some Alpha Vantage functions), sorted by key."""
    return read_table(store, FUNDAMENTALS_ISSUES, endpoints)
