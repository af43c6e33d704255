"""A thin Alpha Vantage client on ``httpx``, with typed errors: ``NEWS_SENTIMENT`` pages, and any other function's
JSON (``get_json``) or CSV (``get_csv``) body for the fundamentals layer (``ibf_core.fundamentals``).

Why not the ``alpha_vantage`` package (3.0.0): its HTTP call sets no timeout (a stalled server hangs a Dagster run
forever), its base URL is a process-global class attribute (a loopback test server would leak into every other
caller in the process), and every failure - daily quota, premium endpoint, bad call - is the same bare
``ValueError``, so a caller cannot tell "stop and resume tomorrow" from "this request is wrong". It also returns a
DataFrame, losing the per-article fields we validate. This client is ~one GET per page with a timeout, tenacity
retries with exponential backoff on transport errors and 5xx, and every HTTP-200 error body mapped to an error class.

Time zone: Alpha Vantage does not document the zone of ``time_published`` (``YYYYMMDDTHHMMSS``) nor of the
``time_from``/``time_to`` parameters. We treat both as US/Eastern (``source_tz``, the exchange's zone) unless the
value carries a zone (``Z`` or ``+HHMM``); stored timestamps are UTC. If the real zone were UTC an article would move
by 4-5 hours; the trading-day assignment then errs towards a *later* session for evening articles, never earlier,
so no look-ahead is introduced for articles published after the close.

The API key never appears in a log record, an exception message or ``repr``: URLs are redacted (``apikey=***``)
before they reach either, and a filter on the ``httpx`` logger redacts its request log line.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pandas as pd

from ibf_core.news.feed import (
    DEFAULT_TZ,
    BadArticle,
    NewsPage,
    RejectedArticle,
    format_av_time,
    parse_item,
    time_or_none,
    utc_timestamp,
)

if TYPE_CHECKING:  # pragma: no cover
    import httpx
    import pandas as pd

# Heavy imports (httpx, tenacity) stay inside the functions that need them: importing this module loads none of them.

log = logging.getLogger(__name__)
MAX_LIMIT = 1000

_APIKEY_IN_TEXT = re.compile(r"(apikey=)[^&\s\"'<>]+", re.IGNORECASE)


# ----- errors ---------------------------------------------------------------------------------------
class NewsError(RuntimeError):
    """News could not be loaded."""


class MissingApiKeyError(NewsError):
    """``IBF_NEWS_SOURCE=alphavantage`` without the ``ALPHAVANTAGE_API_KEY`` environment variable."""


class AlphaVantageError(NewsError):
    """Alpha Vantage refused or garbled a request; the message names the symbol and window, never the key."""

    def __init__(self, message: str, *, symbol: str | None = None):
        self.symbol = symbol
        super().__init__(redact(message))


class RateLimitedError(AlphaVantageError):
    """The rate limit answered (``Information``/``Note``); ``daily`` False for the per-second burst limit."""

    def __init__(self, message: str, *, symbol: str | None = None, daily: bool = True):
        self.daily = daily
        super().__init__(message, symbol=symbol)


class BudgetExhaustedError(RateLimitedError):
    """Our own daily request budget (``alphavantage_requests_per_day``) is spent; no request was sent."""


class NotEntitledError(AlphaVantageError):
    """The key may not use this endpoint (premium endpoint, or the ``demo`` key)."""


class BadRequestError(AlphaVantageError):
    """``Error Message``: the call itself is invalid (parameters, ticker, key)."""


class MalformedResponseError(AlphaVantageError):
    """The body is not the documented shape; names the field and, for an article, its URL."""

    def __init__(self, message: str, *, symbol: str | None = None, field: str | None = None, url: str | None = None):
        self.field, self.url = field, url
        super().__init__(message, symbol=symbol)


class ServiceUnavailableError(AlphaVantageError):
    """Transport errors, timeouts or HTTP 5xx still failing after the configured retries."""


def redact(text: str, *secrets: str) -> str:
    """``text`` with ``apikey=...`` query values and any of ``secrets`` replaced by ``***``."""
    text = _APIKEY_IN_TEXT.sub(r"\1***", str(text))
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


class _RedactFilter(logging.Filter):
    """Redacts the API key from httpx's ``HTTP Request: GET <url>`` INFO line (the URL carries it)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "apikey" in message.lower():
            record.msg, record.args = redact(message), ()
        return True


def _install_log_redaction() -> None:
    logger = logging.getLogger("httpx")
    if not any(isinstance(f, _RedactFilter) for f in logger.filters):
        logger.addFilter(_RedactFilter())


# ----- error bodies ---------------------------------------------------------------------------------
_DAILY_WORDS = ("per day", "daily")
_SPREAD_WORDS = ("sparingly", "per second")
_BURST_WORDS = (*_SPREAD_WORDS, "per minute")
_RATE_WORDS = ("rate limit", "call frequency", "requests per", "calls per")
_ENTITLEMENT_WORDS = ("premium endpoint", "premium plan", "demo")
_EMPTY_WORDS = ("no articles",)
NOTICE_KEYS = ("Information", "Note", "Error Message")  # a body with one of these is a notice, whatever the function


def classify_notice(text: str, *, symbol: str | None, context: str) -> AlphaVantageError | None:
    """The error an ``Information``/``Note`` text stands for; None when it means "no articles"."""
    lower = text.lower()
    message = f"{context}: Alpha Vantage says {text!r}"
    # Rate-limit texts also advertise the premium plans, so they are recognised first; the burst text
    # ("more sparingly (1 request per second)") also quotes the daily limit, so it is recognised before that.
    if any(w in lower for w in _SPREAD_WORDS):
        return RateLimitedError(message, symbol=symbol, daily=False)
    if any(w in lower for w in _DAILY_WORDS) and any(w in lower for w in (*_RATE_WORDS, "requests")):
        return RateLimitedError(message, symbol=symbol, daily=True)
    if any(w in lower for w in _BURST_WORDS):
        return RateLimitedError(message, symbol=symbol, daily=False)
    if any(w in lower for w in _RATE_WORDS):
        return RateLimitedError(message, symbol=symbol, daily=True)
    if any(w in lower for w in _ENTITLEMENT_WORDS) or "premium" in lower:
        return NotEntitledError(message, symbol=symbol)
    if any(w in lower for w in _EMPTY_WORDS):
        return None
    return BadRequestError(message, symbol=symbol)


class _Retryable(Exception):
    """A failure worth another attempt (transport error, timeout, HTTP 5xx/429, burst rate limit)."""

    def __init__(self, message: str, final: AlphaVantageError | None = None):
        super().__init__(message)
        self.final = final


# ----- the client -----------------------------------------------------------------------------------
@dataclass
class AlphaVantageClient:
    """Alpha Vantage over HTTP (``news_sentiment``, ``get_json``, ``get_csv``). One client per run; ``close()`` (or ``with``) releases the connection pool.

    ``on_request`` is called before every HTTP attempt (retries included); it may raise (e.g.
    ``BudgetExhaustedError``) to stop before a request is sent. ``strict`` turns a bad article into a
    ``MalformedResponseError`` instead of skipping and counting it.
    """

    base_url: str
    api_key: str = field(repr=False)
    timeout: float = 30.0
    retries: int = 3
    backoff: float = 1.0  # seconds before the first retry; doubles each time
    max_backoff: float = 30.0
    source_tz: str = DEFAULT_TZ
    strict: bool = False
    on_request: Callable[[], None] | None = field(default=None, repr=False)
    transport: Any = field(default=None, repr=False)  # an httpx transport, for tests
    requests_sent: int = field(default=0, init=False)
    _http: Any = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.api_key:
            raise MissingApiKeyError("no Alpha Vantage API key: set the environment variable ALPHAVANTAGE_API_KEY")
        if self.retries < 0 or self.timeout <= 0:
            raise ValueError("retries must be >= 0 and timeout > 0")
        self.base_url = self.base_url.rstrip("/")
        _install_log_redaction()

    # lifecycle
    def _client(self) -> httpx.Client:
        if self._http is None:
            import httpx

            self._http = httpx.Client(
                timeout=httpx.Timeout(self.timeout), transport=self.transport, headers={"User-Agent": "ibf"}
            )
        return self._http

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None

    def __enter__(self) -> AlphaVantageClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # requests
    def news_sentiment(
        self,
        symbol: str,
        time_from: Any,
        time_to: Any,
        *,
        sort: str = "EARLIEST",
        limit: int = MAX_LIMIT,
    ) -> NewsPage:
        """One page of articles mentioning ``symbol`` published in [time_from, time_to] (tz-aware)."""
        symbol = symbol.strip().upper()
        lo, hi = utc_timestamp(time_from), utc_timestamp(time_to)
        if not 1 <= limit <= MAX_LIMIT:
            raise ValueError(f"limit must be 1..{MAX_LIMIT}")
        params = {
            "function": "NEWS_SENTIMENT",
            "tickers": symbol,
            "time_from": format_av_time(lo, self.source_tz),
            "time_to": format_av_time(hi, self.source_tz, ceil=True),
            "sort": sort,
            "limit": str(limit),
        }
        context = f"NEWS_SENTIMENT {symbol} {params['time_from']}..{params['time_to']}"
        body = self._get(params, symbol, context, "json")
        return self._page(body, symbol, lo, hi, limit, context)

    def iter_pages(self, symbol: str, time_from: Any, time_to: Any, *, limit: int = MAX_LIMIT) -> Iterator[NewsPage]:
        """Pages for the window, oldest first; a full page continues from its newest article's minute."""
        cursor, end = utc_timestamp(time_from), utc_timestamp(time_to)
        while cursor <= end:
            page = self.news_sentiment(symbol, cursor, end, sort="EARLIEST", limit=limit)
            yield page
            if not page.full:
                return
            # time_from has minute precision: restart at the newest article's minute (re-seen articles dedupe by URL)
            nxt = page.covered_to.floor("min")
            if nxt <= cursor.floor("min"):
                nxt = cursor.floor("min") + pd.Timedelta(minutes=1)
                log.warning(
                    "%s: %d or more articles within the minute %s; some in that minute may be missed",
                    symbol, limit, cursor.floor("min"),
                )  # fmt: skip
            cursor = nxt

    def get_json(self, function: str, params: Mapping[str, str] | None = None, *, symbol: str | None = None) -> Any:
        """The parsed JSON body of ``function`` with ``params``; a notice body raises its error, ``{}`` is returned
        as it is ("no data": an unknown symbol, a fund without fundamentals)."""
        query, context = self._query(function, params, symbol)
        return self._get(query, symbol, context, "json")

    def get_csv(self, function: str, params: Mapping[str, str] | None = None, *, symbol: str | None = None) -> str:
        """The CSV text of ``function`` (e.g. ``EARNINGS_CALENDAR``); a JSON notice body instead raises its error."""
        query, context = self._query(function, params, symbol)
        return self._get(query, symbol, context, "csv")

    @staticmethod
    def _query(function: str, params: Mapping[str, str] | None, symbol: str | None) -> tuple[dict[str, str], str]:
        query = {"function": function, **({"symbol": symbol} if symbol else {}), **(params or {})}
        extra = " ".join(f"{k}={v}" for k, v in query.items() if k not in ("function", "symbol", "apikey"))
        return query, " ".join(p for p in (function, symbol, extra) if p)

    def _get(self, params: dict[str, str], symbol: str | None, context: str, kind: str) -> Any:
        from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

        retrying = Retrying(
            retry=retry_if_exception_type(_Retryable),
            stop=stop_after_attempt(self.retries + 1),
            wait=wait_exponential(multiplier=self.backoff, max=self.max_backoff),
            before_sleep=lambda state: log.warning(
                "%s: attempt %d failed (%s); retrying", context, state.attempt_number, state.outcome.exception()
            ),
            reraise=True,
        )
        try:
            for attempt in retrying:
                with attempt:
                    return self._attempt(params, symbol, context, kind)
        except _Retryable as exc:
            if exc.final is not None:
                raise exc.final from None
            raise ServiceUnavailableError(
                f"{context}: {exc} (after {self.retries + 1} attempts)", symbol=symbol
            ) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _attempt(self, params: dict[str, str], symbol: str | None, context: str, kind: str) -> Any:
        import httpx

        if self.on_request is not None:
            self.on_request()
        self.requests_sent += 1
        url = f"{self.base_url}/query"
        try:
            response = self._client().get(url, params={**params, "apikey": self.api_key})
        except httpx.TimeoutException as exc:
            raise _Retryable(f"no answer within {self.timeout:g}s ({type(exc).__name__})") from None
        except httpx.TransportError as exc:
            raise _Retryable(redact(f"{type(exc).__name__}: {exc}", self.api_key)) from None
        except httpx.InvalidURL as exc:
            raise BadRequestError(redact(f"{context}: invalid URL ({exc})", self.api_key), symbol=symbol) from None
        status = response.status_code
        if status >= 500:
            raise _Retryable(f"HTTP {status}")
        if status == 429:
            final = RateLimitedError(f"{context}: HTTP 429 Too Many Requests", symbol=symbol, daily=False)
            raise _Retryable("HTTP 429", final)
        if status != 200:
            raise BadRequestError(f"{context}: HTTP {status} {response.reason_phrase}", symbol=symbol)
        if kind == "csv" and not response.content.lstrip().startswith(b"{"):
            return response.content.decode("utf-8-sig", errors="replace")  # a CSV endpoint's notices are JSON
        try:
            body = json.loads(response.content)
        except ValueError:
            snippet = response.content[:80].decode(errors="replace")
            raise MalformedResponseError(
                f"{context}: the response is not JSON (starts {redact(snippet, self.api_key)!r})",
                symbol=symbol, field="<body>",
            ) from None  # fmt: skip
        if isinstance(body, dict) and any(k in body for k in NOTICE_KEYS):
            self._raise_for_notice(body, symbol, context)
        if kind == "csv":
            if body == {}:
                return ""  # no data
            raise MalformedResponseError(f"{context}: expected CSV, got a JSON object", symbol=symbol, field="<body>")
        return body

    def _raise_for_notice(self, body: dict[str, Any], symbol: str | None, context: str) -> None:
        if "Error Message" in body:
            text = redact(str(body["Error Message"]), self.api_key)
            raise BadRequestError(f"{context}: Alpha Vantage says {text!r}", symbol=symbol)
        for key in ("Information", "Note"):
            if key in body:
                error = classify_notice(redact(str(body[key]), self.api_key), symbol=symbol, context=context)
                if error is None:
                    return  # "no articles": an empty feed
                if isinstance(error, RateLimitedError) and not error.daily:
                    raise _Retryable("burst rate limit", error)
                raise error

    def _page(self, body: Any, symbol: str, lo: pd.Timestamp, hi: pd.Timestamp, limit: int, context: str) -> NewsPage:
        if not isinstance(body, dict):
            raise MalformedResponseError(f"{context}: the top level is not an object", symbol=symbol, field="<body>")
        feed = body.get("feed", [] if any(k in body for k in ("Information", "Note")) else None)
        if feed is None:
            keys = ", ".join(sorted(body)) or "none"
            raise MalformedResponseError(
                f"{context}: no 'feed' in the response (keys: {keys})", symbol=symbol, field="feed"
            )
        if not isinstance(feed, list):
            raise MalformedResponseError(f"{context}: 'feed' is not a list", symbol=symbol, field="feed")
        articles, mentions, rejected, times = [], [], [], []
        for item in feed:
            url = item.get("url") if isinstance(item, dict) and isinstance(item.get("url"), str) else None
            try:
                article, mention = parse_item(item, symbol, self.source_tz)
            except BadArticle as bad:
                if self.strict:
                    raise MalformedResponseError(
                        f"{context}: article {url or '<no url>'}: {bad.field} {bad.reason}",
                        symbol=symbol, field=bad.field, url=url,
                    ) from None  # fmt: skip
                rejected.append(RejectedArticle(symbol, url, bad.field, bad.reason))
                times.append(time_or_none(item, self.source_tz))
                continue
            articles.append(article)
            mentions.append(mention)
            times.append(article.published_at)
        if feed and not articles:
            # Every article bad is a changed format, not a few bad articles: fail loudly.
            first = rejected[0]
            raise MalformedResponseError(
                f"{context}: all {len(feed)} articles are invalid, "
                f"e.g. {first.url or '<no url>'}: {first.field} {first.reason}",
                symbol=symbol, field=first.field, url=first.url,
            )  # fmt: skip
        for bad in rejected:
            log.warning("%s: skipped article %s", context, bad)
        known = [t for t in times if t is not None]
        return NewsPage(
            symbol=symbol, time_from=lo, time_to=hi, limit=limit, received=len(feed), articles=tuple(articles),
            mentions=tuple(mentions), rejected=tuple(rejected), newest=max(known) if known else None,
        )  # fmt: skip
