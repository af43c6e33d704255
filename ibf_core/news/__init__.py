"""News sentiment: Alpha Vantage ``NEWS_SENTIMENT`` (or the user's headline file scored with VADER) stored once per
article URL in ``news_articles``, per ticker in ``news_mentions``, and aggregated per symbol and NYSE session.

The two entry points the Dagster asset calls:

- ``load_news(settings, warehouse, symbols, start, end)`` fetches what is missing for the sessions [start, end]
  (``settings.news_source``: alphavantage, file or none) and writes it; on an error nothing is written. When the
  Alpha Vantage daily quota runs out it keeps the complete pages fetched so far, saves the progress and returns a
  result with ``complete=False`` naming what remains; the next run resumes there.
- ``daily_news(warehouse, symbols, start, end)`` aggregates the stored mentions for every session in [start, end].
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ibf_core.calendar import all_sessions, to_date, trading_days
from ibf_core.news.aggregate import DAILY_COLUMNS, aggregate_daily, assign_trading_day, session_window
from ibf_core.news.alphavantage import (
    AlphaVantageClient,
    AlphaVantageError,
    BadRequestError,
    BudgetExhaustedError,
    MalformedResponseError,
    MissingApiKeyError,
    NewsError,
    NotEntitledError,
    RateLimitedError,
    RejectedArticle,
    ServiceUnavailableError,
)
from ibf_core.news.feed import pages_to_frames
from ibf_core.news.file import NewsFileError, score_news_file
from ibf_core.news.store import (
    NEWS_ARTICLES,
    NEWS_MENTIONS,
    NewsProgress,
    ReplaceScope,
    empty_frame,
    read_articles,
    read_mentions,
    source_id,
    write_news,
)
from ibf_core.settings import normalize_symbol

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from ibf_core.storage.warehouse import Warehouse

__all__ = [
    "API_KEY_ENV", "AlphaVantageClient", "AlphaVantageError", "BadRequestError", "BudgetExhaustedError",
    "DAILY_COLUMNS", "MalformedResponseError", "MissingApiKeyError", "NEWS_ARTICLES", "NEWS_MENTIONS",
    "NewsError", "NewsFileError", "NewsIncompleteError", "NewsLoadResult", "NotEntitledError", "RateLimitedError",
    "ServiceUnavailableError", "aggregate_daily", "assign_trading_day", "daily_news", "load_news",
    "read_articles", "read_mentions", "session_window",
]  # fmt: skip

log = logging.getLogger(__name__)

API_KEY_ENV = "ALPHAVANTAGE_API_KEY"
EASTERN = "America/New_York"
# Alpha Vantage indexes articles with some delay: the newest half hour is never marked as fetched, so the
# next run asks for it again (re-seen articles dedupe by URL).
SETTLE_MINUTES = 30


class NewsIncompleteError(NewsError):
    """Raised by ``NewsLoadResult.raise_if_incomplete``: the quota ran out; the message names what remains."""


Interval = tuple["pd.Timestamp", "pd.Timestamp"]


@dataclass(frozen=True, eq=False)  # eq=False: it holds a DataFrame
class NewsLoadResult:
    """What one ``load_news`` call did. ``mentions``: the loaded mentions of ``symbols`` dated in [start, end]."""

    source: str
    symbols: tuple[str, ...]
    start: dt.date
    end: dt.date
    mentions: pd.DataFrame = field(repr=False)
    articles: int = 0  # distinct articles written by this call
    requests: int = 0  # HTTP requests sent (retries included)
    rejected: tuple[RejectedArticle, ...] = ()  # articles skipped for a missing/invalid field
    complete: bool = True  # False: the quota ran out; ``remaining`` says what is left
    remaining: Mapping[str, tuple[Interval, ...]] = field(default_factory=dict)
    note: str = ""

    def raise_if_incomplete(self) -> None:
        if not self.complete:
            raise NewsIncompleteError(self.note)

    def metadata(self) -> dict[str, Any]:
        """Plain values for Dagster metadata (never the API key)."""
        return {
            "news_source": self.source,
            "articles_loaded": self.articles,
            "mentions_loaded": int(len(self.mentions)),
            "requests": self.requests,
            "rejected_articles": len(self.rejected),
            "complete": self.complete,
            "remaining": _format_remaining(self.remaining) or "-",
            "note": self.note,
        }


def _format_interval(lo: pd.Timestamp, hi: pd.Timestamp) -> str:
    return f"{lo:%Y-%m-%d %H:%M}Z..{hi:%Y-%m-%d %H:%M}Z"


def _format_remaining(remaining: Mapping[str, Sequence[Interval]]) -> str:
    parts = (f"{s} " + ", ".join(_format_interval(a, b) for a, b in gaps) for s, gaps in remaining.items() if gaps)
    return "; ".join(parts)


def _symbols(symbols: Sequence[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(normalize_symbol(s) for s in symbols))


def _result(
    source: str, symbols: tuple[str, ...], start: Any, end: Any, mentions: pd.DataFrame, **kw: Any
) -> NewsLoadResult:
    lo, hi = to_date(start), to_date(end)
    mask = mentions["symbol"].isin(symbols) & mentions["date"].between(pd.Timestamp(lo), pd.Timestamp(hi))
    return NewsLoadResult(source, symbols, lo, hi, mentions.loc[mask].reset_index(drop=True), **kw)


def load_news(
    settings: Any,
    warehouse: Warehouse,
    symbols: Sequence[str],
    start: Any,
    end: Any,
    *,
    client: AlphaVantageClient | None = None,
    close_margin: Any = None,
    now: Any = None,
    timeout: float = 30.0,
    retries: int = 3,
    page_limit: int = 1000,
) -> NewsLoadResult:
    """Fetch and store the news for ``symbols`` and the sessions in [start, end] from ``settings.news_source``.

    ``client`` replaces the Alpha Vantage client built from the settings (tests); ``close_margin`` (default 5 min)
    moves the close cutoff earlier; ``now`` (UTC) is the clock.
    """
    names = _symbols(symbols)
    source = getattr(settings, "news_source", "none")
    if source == "none":
        note = "IBF_NEWS_SOURCE=none: no news fetched"
        return _result("none", names, start, end, empty_frame(NEWS_MENTIONS), note=note)
    if source == "file":
        return _load_file(settings, warehouse, names, start, end, close_margin)
    if source == "alphavantage":
        return _load_alphavantage(
            settings, warehouse, names, start, end, client=client, close_margin=close_margin, now=now,
            timeout=timeout, retries=retries, page_limit=page_limit,
        )  # fmt: skip
    raise NewsError(f"IBF_NEWS_SOURCE: unknown news source {source!r} (alphavantage, file or none)")


def _load_file(
    settings: Any, warehouse: Warehouse, symbols: tuple[str, ...], start: Any, end: Any, margin: Any
) -> NewsLoadResult:
    path = getattr(settings, "news_file", None)
    if path is None:
        raise NewsError("IBF_NEWS_SOURCE=file needs IBF_NEWS_FILE")
    known = set(getattr(settings, "universe", None) or ()) | set(symbols)
    benchmark = getattr(settings, "benchmark", None)
    if benchmark:
        known.add(benchmark)
    articles, mentions = score_news_file(path, known_symbols=known, close_margin=margin)
    lo, hi = to_date(start), to_date(end)
    mentions = mentions[mentions["symbol"].isin(symbols) & mentions["date"].between(pd.Timestamp(lo), pd.Timestamp(hi))]
    articles = articles[articles["url"].isin(set(mentions["url"]))]
    # The file is the whole truth for its rows: mentions it no longer has are removed from this slice.
    write_news(warehouse, articles, mentions, replace=ReplaceScope(symbols, lo, hi, "file"))
    note = f"{path}: {len(mentions)} headline mention(s) scored with VADER for {len(symbols)} symbol(s), {lo}..{hi}"
    log.info(note)
    return _result("file", symbols, lo, hi, mentions, articles=len(articles), note=note)


def _load_alphavantage(
    settings: Any,
    warehouse: Warehouse,
    symbols: tuple[str, ...],
    start: Any,
    end: Any,
    *,
    client: AlphaVantageClient | None,
    close_margin: Any,
    now: Any,
    timeout: float,
    retries: int,
    page_limit: int,
) -> NewsLoadResult:
    base_url = getattr(settings, "alphavantage_url", "https://www.alphavantage.co")
    per_day = int(getattr(settings, "alphavantage_requests_per_day", 25))
    now = pd.Timestamp.now(tz="UTC") if now is None else pd.Timestamp(now)
    now = now.tz_localize("UTC") if now.tzinfo is None else now.tz_convert("UTC")
    window = session_window(start, end, close_margin)
    if window is None:
        note = f"no NYSE sessions in {start}..{end}"
        return _result("alphavantage", symbols, start, end, empty_frame(NEWS_MENTIONS), note=note)
    lo, hi = window[0], min(window[1], now)
    settled = now - pd.Timedelta(minutes=SETTLE_MINUTES)
    progress = NewsProgress(warehouse, source_id(client.base_url if client is not None else base_url))
    today = now.tz_convert(EASTERN).date()

    def take_request() -> None:
        if progress.take_request(today, per_day) < 0:
            raise BudgetExhaustedError(
                f"the daily budget of {per_day} Alpha Vantage requests "
                f"(IBF_ALPHAVANTAGE_REQUESTS_PER_DAY) is spent for {today}"
            )

    own = client is None
    if own:
        secret = getattr(settings, "alphavantage_api_key", None)
        key = secret.get_secret_value().strip() if secret is not None else ""
        if not key:
            raise MissingApiKeyError(f"IBF_NEWS_SOURCE=alphavantage needs the environment variable {API_KEY_ENV}")
        client = AlphaVantageClient(base_url, key, timeout=timeout, retries=retries)
    previous_hook, sent_before = client.on_request, client.requests_sent
    client.on_request = take_request
    pages, fetched, stopped = [], [], None
    try:
        for symbol in symbols:
            for gap_lo, gap_hi in progress.gaps(symbol, lo, hi):
                for page in client.iter_pages(symbol, gap_lo, gap_hi, limit=page_limit):
                    pages.append(page)
                    covered_to = min(page.covered_to, settled)
                    if covered_to > page.time_from:
                        fetched.append((symbol, page.time_from, covered_to))
    except RateLimitedError as exc:
        stopped = exc  # quota spent: keep the complete pages, save progress, report what remains
    finally:
        client.on_request = previous_hook
        requests = client.requests_sent - sent_before
        if own:
            client.close()
    articles, mentions = pages_to_frames(pages)
    mentions["date"] = assign_trading_day(mentions["published_at"], close_margin).to_numpy()
    write_news(warehouse, articles, mentions)
    progress.add(fetched)  # only after the data is stored: a crash in between refetches, never skips
    rejected = tuple(r for p in pages for r in p.rejected)
    remaining = {}
    if stopped is not None:
        remaining = {s: tuple(g) for s in symbols if (g := progress.gaps(s, lo, max(lo, min(hi, settled))))}
    note = _note(symbols, start, end, len(articles), requests, rejected, stopped, remaining)
    (log.warning if stopped is not None or rejected else log.info)("%s", note)
    return _result(
        "alphavantage", symbols, start, end, mentions, articles=len(articles), requests=requests, rejected=rejected,
        complete=stopped is None, remaining=remaining, note=note,
    )  # fmt: skip


def _note(
    symbols: tuple[str, ...],
    start: Any,
    end: Any,
    articles: int,
    requests: int,
    rejected: tuple[RejectedArticle, ...],
    stopped: RateLimitedError | None,
    remaining: Mapping[str, Sequence[Interval]],
) -> str:
    text = (
        f"Alpha Vantage: {articles} article(s) for {len(symbols)} symbol(s), {start}..{end}, "
        f"in {requests} request(s)"
    )
    if rejected:
        examples = "; ".join(str(r) for r in rejected[:3])
        text += f"; {len(rejected)} article(s) skipped for a missing/invalid field (e.g. {examples})"
    if stopped is not None:
        left = _format_remaining(remaining) or "nothing (the last request was not needed)"
        text += (
            f". STOPPED, quota exhausted: {stopped}. The fetched articles are kept. Not yet fetched: {left}. "
            "The next run resumes from the saved point."
        )
    return text


def daily_news(
    warehouse: Warehouse,
    symbols: Sequence[str],
    start: Any,
    end: Any,
    *,
    window: int = 60,
    min_periods: int = 20,
) -> pd.DataFrame:
    """Daily news features (``DAILY_COLUMNS``) of the stored mentions for every session in [start, end].

    Days without articles have count 0. ``news_volume_z`` looks ``window`` sessions back from each day, also
    before ``start``, so a day's value does not depend on where the requested range begins; sessions before a
    symbol's first stored article are taken as never fetched and left out of that baseline.
    """
    names = list(_symbols(symbols))
    sessions = trading_days(start, end)
    if len(sessions) == 0 or not names:
        return aggregate_daily(read_mentions(warehouse, []), names, [], window=window, min_periods=min_periods)
    every = all_sessions()
    first = int(np.searchsorted(every, sessions[0]))
    span = every[max(0, first - window) : int(np.searchsorted(every, sessions[-1], side="right"))]
    stored = read_mentions(warehouse, names)
    observed_from = stored.groupby("symbol")["date"].min().to_dict()
    mentions = stored[stored["date"].between(span[0], span[-1])]
    daily = aggregate_daily(
        mentions, names, span, window=window, min_periods=min_periods, observed_from=observed_from
    )
    daily = daily[daily["date"].isin(sessions)]
    return daily.sort_values(["symbol", "date"], kind="stable").reset_index(drop=True)
