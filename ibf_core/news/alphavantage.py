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

import datetime as dt
import json
import logging
import math
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import httpx
    import pandas as pd

log = logging.getLogger(__name__)

DEFAULT_TZ = "America/New_York"
MAX_LIMIT = 1000
# Alpha Vantage's label thresholds (overall and ticker sentiment share them).
BEARISH_MAX = -0.35
SOMEWHAT_BEARISH_MAX = -0.15
SOMEWHAT_BULLISH_MIN = 0.15
BULLISH_MIN = 0.35

_APIKEY_IN_TEXT = re.compile(r"(apikey=)[^&\s\"'<>]+", re.IGNORECASE)
_TIME_RE = re.compile(r"^(\d{8})T(\d{2})(\d{2})(\d{2})?(Z|[+-]\d{2}:?\d{2})?$")


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


# ----- parsed data ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Article:
    """One article as stored in ``news_articles`` (independent of the ticker it was fetched for)."""

    url: str
    title: str
    summary: str
    source: str
    published_at: pd.Timestamp  # UTC
    overall_sentiment_score: float
    overall_sentiment_label: str
    topics: str  # JSON text of AV's topics list


@dataclass(frozen=True)
class Mention:
    """The requested ticker's entry of an article's ``ticker_sentiment``."""

    url: str
    symbol: str
    relevance: float
    ticker_sentiment: float
    label: str
    published_at: pd.Timestamp  # UTC


@dataclass(frozen=True)
class RejectedArticle:
    """An article skipped because a field was missing or invalid (counted and reported, never silently lost)."""

    symbol: str
    url: str | None
    field: str
    reason: str

    def __str__(self) -> str:
        return f"{self.symbol} {self.url or '<no url>'}: {self.field} {self.reason}"


@dataclass(frozen=True)
class NewsPage:
    """One ``NEWS_SENTIMENT`` response for one symbol and window."""

    symbol: str
    time_from: pd.Timestamp  # UTC, as asked
    time_to: pd.Timestamp  # UTC, as asked
    limit: int
    received: int  # feed length, bad articles included
    articles: tuple[Article, ...] = ()
    mentions: tuple[Mention, ...] = ()
    rejected: tuple[RejectedArticle, ...] = ()
    newest: pd.Timestamp | None = None  # newest parseable time_published in the feed

    @property
    def full(self) -> bool:
        """A full page: more articles may follow in the window."""
        return self.received >= self.limit

    @property
    def covered_to(self) -> pd.Timestamp:
        """Everything published in [time_from, covered_to) has been seen (sort=EARLIEST)."""
        if self.full and self.newest is not None:
            return max(self.time_from, self.newest)
        return self.time_to


class _BadArticle(Exception):
    def __init__(self, field: str, reason: str):
        super().__init__(f"{field} {reason}")
        self.field, self.reason = field, reason


def sentiment_label(score: float) -> str:
    """Alpha Vantage's label for a sentiment score."""
    if score <= BEARISH_MAX:
        return "Bearish"
    if score <= SOMEWHAT_BEARISH_MAX:
        return "Somewhat-Bearish"
    if score < SOMEWHAT_BULLISH_MIN:
        return "Neutral"
    if score < BULLISH_MIN:
        return "Somewhat-Bullish"
    return "Bullish"


def parse_av_time(text: str, source_tz: str = DEFAULT_TZ) -> pd.Timestamp:
    """``YYYYMMDDTHHMM[SS][Z|+HHMM]`` as a UTC timestamp; without a zone the time is in ``source_tz``."""
    import pandas as pd
    from zoneinfo import ZoneInfo

    match = _TIME_RE.match(str(text).strip())
    if not match:
        raise ValueError(f"{text!r} is not YYYYMMDDTHHMMSS")
    day, hh, mm, ss, zone = match.groups()
    naive = dt.datetime.strptime(f"{day}{hh}{mm}{ss or '00'}", "%Y%m%d%H%M%S")
    if zone is None:
        # fold=0: an ambiguous wall time in the autumn DST change is read as the first (EDT) occurrence
        aware = naive.replace(tzinfo=ZoneInfo(source_tz))
    elif zone == "Z":
        aware = naive.replace(tzinfo=dt.timezone.utc)
    else:
        sign = 1 if zone[0] == "+" else -1
        digits = zone[1:].replace(":", "")
        offset = dt.timedelta(hours=int(digits[:2]), minutes=int(digits[2:]))
        aware = naive.replace(tzinfo=dt.timezone(sign * offset))
    return pd.Timestamp(aware).tz_convert("UTC")


def format_av_time(ts: pd.Timestamp, source_tz: str = DEFAULT_TZ, *, ceil: bool = False) -> str:
    """A UTC timestamp as AV's ``YYYYMMDDTHHMM`` in ``source_tz`` (floored, or ceiled, to the minute)."""
    local = _utc(ts).tz_convert(source_tz)
    local = local.ceil("min") if ceil else local.floor("min")
    return local.strftime("%Y%m%dT%H%M")


def _utc(value: Any) -> pd.Timestamp:
    import pandas as pd

    ts = pd.Timestamp(value)
    if ts.tzinfo is None:
        raise ValueError(f"timestamp {value!r} has no time zone")
    return ts.tz_convert("UTC")


def _number(item: Mapping[str, Any], name: str, lo: float, hi: float, where: str = "") -> float:
    """A finite number in [lo, hi]; AV sends some scores as strings, so strings are parsed."""
    label = f"{where}{name}"
    if name not in item or item[name] is None or item[name] == "":
        raise _BadArticle(label, "is missing")
    raw = item[name]
    if isinstance(raw, bool):
        raise _BadArticle(label, f"is not a number ({raw!r})")
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise _BadArticle(label, f"is not a number ({str(raw)[:40]!r})") from None
    if not math.isfinite(value) or not lo <= value <= hi:
        raise _BadArticle(label, f"is outside {lo}..{hi} ({value})")
    return value


def _text(item: Mapping[str, Any], name: str, *, required: bool) -> str:
    value = item.get(name)
    if value is None:
        if required:
            raise _BadArticle(name, "is missing")
        return ""
    if not isinstance(value, str):
        raise _BadArticle(name, f"is not text ({type(value).__name__})")
    if required and not value.strip():
        raise _BadArticle(name, "is empty")
    return value


def parse_item(item: Any, symbol: str, source_tz: str = DEFAULT_TZ) -> tuple[Article, Mention]:
    """One feed entry as (article, the symbol's mention); raises ``_BadArticle`` naming the field."""
    if not isinstance(item, dict):
        raise _BadArticle("feed[]", f"is not an object ({type(item).__name__})")
    url = _text(item, "url", required=True).strip()
    title = _text(item, "title", required=True)
    raw_time = item.get("time_published")
    if raw_time is None:
        raise _BadArticle("time_published", "is missing")
    try:
        published = parse_av_time(raw_time, source_tz)
    except ValueError:
        raise _BadArticle("time_published", f"is not YYYYMMDDTHHMMSS ({str(raw_time)[:40]!r})") from None
    overall = _number(item, "overall_sentiment_score", -1.0, 1.0)
    overall_label = _text(item, "overall_sentiment_label", required=False) or sentiment_label(overall)
    tickers = item.get("ticker_sentiment")
    if not isinstance(tickers, list):
        raise _BadArticle("ticker_sentiment", "is missing" if tickers is None else "is not a list")
    entry = next((t for t in tickers if isinstance(t, dict) and str(t.get("ticker", "")).upper() == symbol), None)
    if entry is None:
        raise _BadArticle(f"ticker_sentiment[{symbol}]", "is missing")
    where = f"ticker_sentiment[{symbol}]."
    relevance = _number(entry, "relevance_score", 0.0, 1.0, where)
    score = _number(entry, "ticker_sentiment_score", -1.0, 1.0, where)
    label = _text(entry, "ticker_sentiment_label", required=False) or sentiment_label(score)
    topics = json.dumps(item.get("topics") or [], sort_keys=True, separators=(",", ":"))
    article = Article(
        url=url, title=title, summary=_text(item, "summary", required=False),
        source=_text(item, "source", required=False), published_at=published,
        overall_sentiment_score=overall, overall_sentiment_label=overall_label, topics=topics,
    )  # fmt: skip
    return article, Mention(url, symbol, relevance, score, label, published)


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
        lo, hi = _utc(time_from), _utc(time_to)
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
        import pandas as pd

        cursor, end = _utc(time_from), _utc(time_to)
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
            except _BadArticle as bad:
                if self.strict:
                    raise MalformedResponseError(
                        f"{context}: article {url or '<no url>'}: {bad.field} {bad.reason}",
                        symbol=symbol, field=bad.field, url=url,
                    ) from None  # fmt: skip
                rejected.append(RejectedArticle(symbol, url, bad.field, bad.reason))
                times.append(_time_or_none(item, self.source_tz))
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


def _time_or_none(item: Any, source_tz: str) -> pd.Timestamp | None:
    try:
        return parse_av_time(item["time_published"], source_tz)
    except (KeyError, TypeError, ValueError):
        return None


# ----- frames ---------------------------------------------------------------------------------------
def pages_to_frames(pages: list[NewsPage]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(articles, mentions) frames of the pages, one article row per URL (the last seen wins)."""
    import pandas as pd

    articles = pd.DataFrame([a.__dict__ for p in pages for a in p.articles], columns=list(Article.__dataclass_fields__))
    mentions = pd.DataFrame([m.__dict__ for p in pages for m in p.mentions], columns=list(Mention.__dataclass_fields__))
    articles = articles.drop_duplicates("url", keep="last").assign(origin="alphavantage")
    mentions = mentions.drop_duplicates(["symbol", "url"], keep="last").assign(origin="alphavantage")
    return articles.reset_index(drop=True), mentions.reset_index(drop=True)
