"""A loopback Alpha Vantage server for ``NEWS_SENTIMENT`` and the fundamentals, earnings and macro functions, with
switchable faults.

Real HTTP on 127.0.0.1 (stdlib ``http.server`` in a thread): ``GET /query?function=NEWS_SENTIMENT&tickers=...&
time_from=...&time_to=...&sort=...&limit=...&apikey=...`` answers from a list of articles in Alpha Vantage's own
JSON shape (scores as strings where AV sends strings), honouring tickers (several mean AND), the time window (minute
precision, both ends inclusive, times in US/Eastern like AV's), sort (EARLIEST, LATEST, RELEVANCE) and limit
(default 50, at most 1000). Errors come back with HTTP 200 like the real service.

It also serves ``OVERVIEW``, ``EARNINGS`` (``symbol=``), ``EARNINGS_CALENDAR`` (CSV ``symbol,name,reportDate,
fiscalDateEnding,estimate,currency``; ``symbol=`` optional, ``horizon`` accepted but not applied: every stored row of
the symbol is served), ``TREASURY_YIELD`` (``maturity=3month|2year|10year``, default 10year),
``FEDERAL_FUNDS_RATE``, ``CPI`` and ``UNEMPLOYMENT`` in Alpha Vantage's shapes, from a ``fundamentals`` dict
(``{"overview": {SYMBOL: {AV keys}}, "earnings": {SYMBOL: AV EARNINGS body}, "calendar": [CSV rows as dicts],
"macro": {"TREASURY_YIELD:10year" | "CPI" | ...: AV body}}``; default ``synthetic_fundamentals()``, which is
SYNTHETIC: random walks, not market data). A symbol without an overview or earnings answers ``{}``, as Alpha
Vantage does for unknown symbols and for ETFs.

Usage::

    with AlphaVantageSimulator(articles) as sim:      # or AlphaVantageSimulator() for a synthetic feed
        client = AlphaVantageClient(sim.url, "any-key")
        sim.set_faults(rate_limit_after=3)             # from any thread
        sim.request_log                                # parsed requests, apikey redacted

Users run it with ``serve(...)`` (blocking) and point ``IBF_ALPHAVANTAGE_URL`` at it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from ibf_core.news.alphavantage import redact
from ibf_core.sim.alphavantage.content import (
    FUNCTIONS,
    RELEVANCE_DEFINITION,
    SENTIMENT_DEFINITION,
    SimulatorError,
    calendar_csv,
    check_fundamentals,
    macro_key,
    minute_text,
    relevance,
    synthetic_feed,
    synthetic_fundamentals,
)
from ibf_core.sim.faults import FaultSet, FaultSwitchboard, parse_fault_specs, serve_until_stopped

log = logging.getLogger("ibf_core.news.av_sim")  # the name it logged under before the move

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765

MSG_RATE_LIMIT = (
    "Thank you for using Alpha Vantage! Our standard API rate limit is 25 requests per day. Please subscribe to any "
    "of the premium plans at https://www.alphavantage.co/premium/ to instantly remove all daily rate limits."
)
MSG_BURST = (
    "Thank you for using Alpha Vantage! Please consider spreading out your free API requests more sparingly "
    "(1 request per second). You may subscribe to any of the premium plans at https://www.alphavantage.co/premium/ "
    "to lift the free key rate limit (25 requests per day), raise the per-minute limit, "
    "and unlock all premium endpoints"
)
MSG_PREMIUM = (
    "Thank you for using Alpha Vantage! This is a premium endpoint. You may subscribe to any of the premium plans "
    "at https://www.alphavantage.co/premium/ to instantly unlock all premium endpoints"
)
MSG_DEMO = (
    "The **demo** API key is for demo purposes only. Please claim your free API key at "
    "(https://www.alphavantage.co/support/#api-key) to explore our full API offerings. It takes fewer than 20 seconds."
)
MSG_INVALID = (
    "Invalid API call. Please retry or visit the documentation (https://www.alphavantage.co/documentation/) "
    "for NEWS_SENTIMENT."
)
MSG_NO_KEY = (
    "the parameter apikey is invalid or missing. Please claim your free API key on "
    "(https://www.alphavantage.co/support/#api-key)."
)
SORTS = ("LATEST", "EARLIEST", "RELEVANCE")


@dataclasses.dataclass(frozen=True)
class Faults(FaultSet):
    """Switchable misbehaviour; counters apply to the next N requests and count down."""

    rate_limit_after: int | None = None  # serve N requests (since start/reset_quota), then the daily rate limit
    rate_limit_key: str = "Information"  # the rate-limit body's key: Information or Note
    burst_limits: int = 0  # answer the per-second burst limit message
    premium: bool = False  # Information: premium endpoint
    demo: bool = False  # Information: the demo key
    error_message: bool = False  # {"Error Message": "Invalid API call..."}
    malformed_json: int = 0  # a body that is not JSON
    missing_feed: int = 0  # a JSON object without 'feed'
    http_500: int = 0  # HTTP 500 Internal Server Error
    missing_fields: frozenset[str] = frozenset()  # article fields dropped (url, time_published, ticker_sentiment,
    # overall_sentiment_score, relevance_score, ticker_sentiment_score, ...)
    string_scores: bool = False  # overall_sentiment_score as a numeric string (ticker scores always are)
    garbage_scores: bool = False  # scores as non-numeric strings ("N/A")
    bad_articles: int | None = None  # how many articles per page the article faults touch (None: all)
    reply_delay: float = 0.0  # seconds before every reply
    faults_after: int = 0  # answer the next N requests (counted from set_faults) normally, then apply the faults
    premium_functions: frozenset[str] = frozenset()  # these functions answer the premium-endpoint message
    missing_months: int = 0  # "." replaces the value of N periods of every monthly series (2nd, 4th, ... newest)
    unknown_symbols: frozenset[str] = frozenset()  # OVERVIEW/EARNINGS answer {}, EARNINGS_CALENDAR no rows

    COUNTERS = ("burst_limits", "malformed_json", "missing_feed", "http_500", "faults_after")

    def _normalize(self, fixed: dict[str, Any]) -> dict[str, Any]:
        for name, upper in (("missing_fields", False), ("premium_functions", True), ("unknown_symbols", True)):
            if name in fixed:
                value = fixed[name]
                items = value.split(",") if isinstance(value, str) else value
                names = (str(v).strip() for v in items if str(v).strip())
                fixed[name] = frozenset(n.upper() if upper else n for n in names)
        if int(fixed.get("missing_months", 0)) < 0:
            raise ValueError("missing_months must be >= 0")
        if fixed.get("rate_limit_key", "Information") not in ("Information", "Note"):
            raise ValueError("rate_limit_key must be Information or Note")
        return fixed


def parse_faults(specs: Iterable[str]) -> Faults:
    """Faults from ``name=value`` strings, e.g. ``rate_limit_after=3``, ``missing_fields=url,title``, ``premium=1``."""
    return parse_fault_specs(Faults, specs)


@dataclasses.dataclass
class SimRequest:
    """One request as received (``apikey`` replaced by ``***``) and how it was answered."""

    path: str
    params: dict[str, str]
    timestamp: float
    outcome: str = "pending"  # feed:<n>, rate_limit, burst, premium, demo, error_message, malformed_json, ...


# ----- the server -----------------------------------------------------------------------------------


class AlphaVantageSimulator(FaultSwitchboard):
    """Alpha Vantage ``NEWS_SENTIMENT`` on loopback, served from a background thread."""

    _fault_type = Faults

    def __init__(
        self,
        articles: Sequence[Mapping[str, Any]] | None = None,
        faults: Faults | Mapping[str, Any] | None = None,
        *,
        host: str = DEFAULT_HOST,
        port: int = 0,
        api_key: str | None = None,
        fundamentals: Mapping[str, Any] | None = None,
    ):
        """``articles`` in AV's shape (default: ``synthetic_feed()``), ``fundamentals`` as the module docstring says
        (default: ``synthetic_fundamentals()``); ``api_key`` None accepts any non-empty key."""
        self.host, self._requested_port = host, port
        self._articles = [dict(a) for a in (synthetic_feed() if articles is None else articles)]
        self._fundamentals = check_fundamentals(synthetic_fundamentals() if fundamentals is None else fundamentals)
        self._api_key = api_key
        self._faults = Faults.coerce(faults)
        self._lock = threading.Lock()
        self._log: list[SimRequest] = []
        self._served = 0  # requests counted against the rate limit
        self._received = 0  # requests since the faults were last set (for faults_after)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port: int | None = None

    # lifecycle
    def start(self) -> int:
        if self._server is not None:
            raise SimulatorError("simulator already started")
        handler = type("_BoundHandler", (_Handler,), {"sim": self})
        try:
            self._server = ThreadingHTTPServer((self.host, self._requested_port), handler)
        except OSError as exc:
            raise SimulatorError(f"cannot listen on {self.host}:{self._requested_port}: {exc}") from exc
        # A slow reply or a client's idle keep-alive connection must not block stop().
        self._server.daemon_threads = True
        self._server.block_on_close = False
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="av-sim", daemon=True)
        self._thread.start()
        log.info("Alpha Vantage simulator listening on %s", self.url)
        return self.port

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = self._thread = None

    def __enter__(self) -> AlphaVantageSimulator:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """The base URL for ``IBF_ALPHAVANTAGE_URL``."""
        return f"http://{self.host}:{self.port}"

    # faults, data and logs (thread-safe)
    def _faults_changed(self) -> None:
        self._received = 0  # faults_after counts from the last change

    def reset_quota(self) -> None:
        """A new day: the rate-limit counter starts again."""
        with self._lock:
            self._served = 0

    def set_articles(self, articles: Sequence[Mapping[str, Any]]) -> None:
        with self._lock:
            self._articles = [dict(a) for a in articles]

    def set_fundamentals(self, fundamentals: Mapping[str, Any]) -> None:
        """Replace the data of the fundamentals functions (the shape of the constructor's ``fundamentals``)."""
        checked = check_fundamentals(fundamentals)
        with self._lock:
            self._fundamentals = checked

    @property
    def request_log(self) -> list[SimRequest]:
        with self._lock:
            return list(self._log)

    def _count_quota(self) -> bool:
        """Count one request; True when it is over the rate limit."""
        with self._lock:
            limit = self._faults.rate_limit_after
            self._served += 1
            return limit is not None and self._served > limit

    # answering
    def answer(self, path: str, params: dict[str, str], record: SimRequest) -> tuple[int, bytes]:
        """(HTTP status, body) for one request, faults applied."""
        faults = self.faults
        with self._lock:
            self._received += 1
            active = self._received > faults.faults_after
        if not active:
            # only the quota stays in force while faults wait for faults_after requests
            faults = Faults(rate_limit_after=faults.rate_limit_after, rate_limit_key=faults.rate_limit_key)
        if faults.reply_delay > 0:
            time.sleep(faults.reply_delay)
        if active and self._take("http_500"):
            record.outcome = "http_500"
            return 500, b"<html><body><h1>500 Internal Server Error</h1></body></html>"
        if urlsplit(path).path.rstrip("/") != "/query":
            record.outcome = "not_found"
            return 404, b"Not Found"
        if self._count_quota():
            record.outcome = "rate_limit"
            return 200, _json({faults.rate_limit_key: MSG_RATE_LIMIT})
        notice = self._notice(faults, params, active)
        if notice is not None:
            record.outcome = notice[0]
            return 200, _json(notice[1])
        if active and self._take("malformed_json"):
            record.outcome = "malformed_json"
            return 200, b'{"items": "3", "feed": [{"title": "truncated'
        if params.get("function") != "NEWS_SENTIMENT":
            return self._answer_fundamentals(params, faults if active else Faults(), record)
        if active and self._take("missing_feed"):
            record.outcome = "missing_feed"
            return 200, _json({"items": "0", "sentiment_score_definition": SENTIMENT_DEFINITION})
        try:
            feed = self.select(params)
        except ValueError as exc:
            record.outcome = "error_message"
            return 200, _json({"Error Message": f"{MSG_INVALID} ({exc})"})
        feed = _damage(feed, faults)
        record.outcome = f"feed:{len(feed)}"
        return 200, _json(
            {
                "items": str(len(feed)),
                "sentiment_score_definition": SENTIMENT_DEFINITION,
                "relevance_score_definition": RELEVANCE_DEFINITION,
                "feed": feed,
            }
        )

    def _notice(self, faults: Faults, params: dict[str, str], active: bool) -> tuple[str, dict[str, str]] | None:
        if active and self._take("burst_limits"):
            return "burst", {"Information": MSG_BURST}
        if faults.premium or params.get("function", "").upper() in faults.premium_functions:
            return "premium", {"Information": MSG_PREMIUM}
        if faults.demo:
            return "demo", {"Information": MSG_DEMO}
        if faults.error_message:
            return "error_message", {"Error Message": MSG_INVALID}
        key = params.get("apikey", "")
        if not key or (self._api_key is not None and key != self._api_key):
            return "error_message", {"Error Message": MSG_NO_KEY}
        if params.get("function") not in FUNCTIONS:
            return "error_message", {"Error Message": MSG_INVALID}
        return None

    def _answer_fundamentals(self, params: dict[str, str], faults: Faults, record: SimRequest) -> tuple[int, bytes]:
        """OVERVIEW, EARNINGS, EARNINGS_CALENDAR (CSV) and the economic indicators, from the fundamentals data."""
        function = params["function"]
        symbol = params.get("symbol", "").strip().upper()
        with self._lock:
            data = self._fundamentals
        known = symbol not in faults.unknown_symbols
        if function in ("OVERVIEW", "EARNINGS"):
            if not symbol:
                record.outcome = "error_message"
                return 200, _json({"Error Message": MSG_INVALID})
            body = data["overview" if function == "OVERVIEW" else "earnings"].get(symbol) if known else None
            record.outcome = f"{function.lower()}:{'ok' if body else 'empty'}"
            return 200, _json(body or {})
        if function == "EARNINGS_CALENDAR":
            if params.get("horizon", "3month") not in ("3month", "6month", "12month"):
                record.outcome = "error_message"
                return 200, _json({"Error Message": MSG_INVALID})
            rows = [r for r in data["calendar"] if (not symbol or r["symbol"] == symbol)
                    and r["symbol"] not in faults.unknown_symbols]  # fmt: skip
            record.outcome = f"calendar:{len(rows)}"
            return 200, calendar_csv(rows)
        key = macro_key(function, params)
        body = data["macro"].get(key)
        if body is None:
            record.outcome = "error_message"
            return 200, _json({"Error Message": MSG_INVALID})
        body = self._with_missing_months(body, faults)
        record.outcome = f"macro:{key}:{len(body['data'])}"
        return 200, _json(body)

    def _with_missing_months(self, body: Mapping[str, Any], faults: Faults) -> Mapping[str, Any]:
        """A monthly series with "." as the value of its 2nd, 4th, ... newest periods (``missing_months`` of them)."""
        if not faults.missing_months or body.get("interval") != "monthly":
            return body
        data = [dict(row) for row in body["data"]]
        for i in range(1, min(len(data), 2 * faults.missing_months), 2):
            data[i]["value"] = "."
        return {**body, "data": data}

    def select(self, params: dict[str, str]) -> list[dict[str, Any]]:
        """The feed for a request: tickers (AND), window, sort, limit; raises ValueError for a bad parameter."""
        tickers = [t.strip().upper() for t in params.get("tickers", "").split(",") if t.strip()]
        lo = minute_text(params["time_from"]) if params.get("time_from") else None
        hi = minute_text(params["time_to"]) if params.get("time_to") else None
        sort = params.get("sort", "LATEST").upper()
        if sort not in SORTS:
            raise ValueError(f"sort {sort!r}")
        try:
            limit = min(max(int(params.get("limit", "50")), 1), 1000)
        except ValueError:
            raise ValueError(f"limit {params.get('limit')!r}") from None
        with self._lock:
            articles = list(self._articles)
        picked = []
        for article in articles:
            names = {t["ticker"].upper() for t in article.get("ticker_sentiment", [])}
            minute = article["time_published"][:13]
            if all(t in names for t in tickers) and (lo is None or minute >= lo) and (hi is None or minute <= hi):
                picked.append(article)
        if sort == "RELEVANCE":
            picked.sort(key=lambda a: (-relevance(a, tickers), a["time_published"], a["url"]))
        else:
            picked.sort(key=lambda a: (a["time_published"], a["url"]), reverse=sort == "LATEST")
        return picked[:limit]


def _damage(feed: list[dict[str, Any]], faults: Faults) -> list[dict[str, Any]]:
    """Apply the article-level faults to (the first ``bad_articles`` of) a page, on copies."""
    if not (faults.missing_fields or faults.string_scores or faults.garbage_scores):
        return feed
    count = len(feed) if faults.bad_articles is None else faults.bad_articles
    out = []
    for i, article in enumerate(feed):
        article = json.loads(json.dumps(article))
        if faults.string_scores:
            article["overall_sentiment_score"] = str(article["overall_sentiment_score"])
        if i < count:
            if faults.garbage_scores:
                article["overall_sentiment_score"] = "N/A"
                for entry in article["ticker_sentiment"]:
                    entry["ticker_sentiment_score"] = "N/A"
                    entry["relevance_score"] = "unknown"
            for name in faults.missing_fields:
                article.pop(name, None)
                for entry in article.get("ticker_sentiment", []):
                    entry.pop(name, None)
        out.append(article)
    return out


def _json(body: Any) -> bytes:
    return json.dumps(body).encode()


class _Handler(BaseHTTPRequestHandler):
    sim: AlphaVantageSimulator  # set on the bound subclass
    protocol_version = "HTTP/1.1"  # keep-alive, like the real service

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        query = parse_qs(urlsplit(self.path).query, keep_blank_values=True)
        params = {k: v[-1] for k, v in query.items()}
        shown = {k: ("***" if k.lower() == "apikey" else v) for k, v in params.items()}
        record = SimRequest(path=urlsplit(self.path).path, params=shown, timestamp=time.time())
        with self.sim._lock:
            self.sim._log.append(record)
        try:
            status, body = self.sim.answer(self.path, params, record)
        except Exception as exc:  # a simulator bug: answer 500 instead of a dead connection
            log.exception("simulator failed")
            record.outcome = "error"
            status, body = 500, str(exc).encode()
        content_type = "text/html" if status != 200 else "application/json" if body[:1] == b"{" else "text/csv"
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            log.debug("client went away before the reply")  # e.g. it timed out on a slow reply

    def log_message(self, fmt: str, *args: Any) -> None:
        log.debug("av-sim: " + redact(fmt % args))

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True


# ----- CLI entry ------------------------------------------------------------------------------------
def serve(
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    articles: Sequence[Mapping[str, Any]] | None = None,
    faults: Faults | Mapping[str, Any] | None = None,
    *,
    api_key: str | None = None,
    announce: Callable[[str], None] = print,
    stop_event: threading.Event | None = None,
    fundamentals: Mapping[str, Any] | None = None,
) -> None:
    """Run a simulator in the foreground until Ctrl-C, SIGTERM or ``stop_event``; ``articles`` and ``fundamentals``
    None = synthetic."""
    sim = AlphaVantageSimulator(articles, faults, host=host, port=port, api_key=api_key, fundamentals=fundamentals)
    data = sim._fundamentals
    serve_until_stopped(
        sim,
        "Alpha Vantage simulator",
        lambda: (
            f"{sim.url} ({len(sim._articles)} articles, {len(data['overview'])} overviews, "
            f"{len(data['macro'])} macro series); set IBF_ALPHAVANTAGE_URL={sim.url}"
        ),
        announce,
        stop_event,
    )
