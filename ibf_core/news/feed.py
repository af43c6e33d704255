"""Alpha Vantage NEWS_SENTIMENT items parsed: articles, per-symbol mentions, rejected items, pages and their frames."""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

import pandas as pd

DEFAULT_TZ = "America/New_York"
# Alpha Vantage's label thresholds (overall and ticker sentiment share them).
BEARISH_MAX = -0.35
SOMEWHAT_BEARISH_MAX = -0.15
SOMEWHAT_BULLISH_MIN = 0.15
BULLISH_MIN = 0.35
_TIME_RE = re.compile(r"^(\d{8})T(\d{2})(\d{2})(\d{2})?(Z|[+-]\d{2}:?\d{2})?$")


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


class BadArticle(Exception):
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
    local = utc_timestamp(ts).tz_convert(source_tz)
    local = local.ceil("min") if ceil else local.floor("min")
    return local.strftime("%Y%m%dT%H%M")


def utc_timestamp(value: Any) -> pd.Timestamp:
    ts = pd.Timestamp(value)
    if ts.tzinfo is None:
        raise ValueError(f"timestamp {value!r} has no time zone")
    return ts.tz_convert("UTC")


def _number(item: Mapping[str, Any], name: str, lo: float, hi: float, where: str = "") -> float:
    """A finite number in [lo, hi]; AV sends some scores as strings, so strings are parsed."""
    label = f"{where}{name}"
    if name not in item or item[name] is None or item[name] == "":
        raise BadArticle(label, "is missing")
    raw = item[name]
    if isinstance(raw, bool):
        raise BadArticle(label, f"is not a number ({raw!r})")
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise BadArticle(label, f"is not a number ({str(raw)[:40]!r})") from None
    if not math.isfinite(value) or not lo <= value <= hi:
        raise BadArticle(label, f"is outside {lo}..{hi} ({value})")
    return value


def _text(item: Mapping[str, Any], name: str, *, required: bool) -> str:
    value = item.get(name)
    if value is None:
        if required:
            raise BadArticle(name, "is missing")
        return ""
    if not isinstance(value, str):
        raise BadArticle(name, f"is not text ({type(value).__name__})")
    if required and not value.strip():
        raise BadArticle(name, "is empty")
    return value


def parse_item(item: Any, symbol: str, source_tz: str = DEFAULT_TZ) -> tuple[Article, Mention]:
    """One feed entry as (article, the symbol's mention); raises ``BadArticle`` naming the field."""
    if not isinstance(item, dict):
        raise BadArticle("feed[]", f"is not an object ({type(item).__name__})")
    url = _text(item, "url", required=True).strip()
    title = _text(item, "title", required=True)
    raw_time = item.get("time_published")
    if raw_time is None:
        raise BadArticle("time_published", "is missing")
    try:
        published = parse_av_time(raw_time, source_tz)
    except ValueError:
        raise BadArticle("time_published", f"is not YYYYMMDDTHHMMSS ({str(raw_time)[:40]!r})") from None
    overall = _number(item, "overall_sentiment_score", -1.0, 1.0)
    overall_label = _text(item, "overall_sentiment_label", required=False) or sentiment_label(overall)
    tickers = item.get("ticker_sentiment")
    if not isinstance(tickers, list):
        raise BadArticle("ticker_sentiment", "is missing" if tickers is None else "is not a list")
    entry = next((t for t in tickers if isinstance(t, dict) and str(t.get("ticker", "")).upper() == symbol), None)
    if entry is None:
        raise BadArticle(f"ticker_sentiment[{symbol}]", "is missing")
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


def time_or_none(item: Any, source_tz: str) -> pd.Timestamp | None:
    try:
        return parse_av_time(item["time_published"], source_tz)
    except (KeyError, TypeError, ValueError):
        return None


# ----- frames ---------------------------------------------------------------------------------------
def pages_to_frames(pages: list[NewsPage]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(articles, mentions) frames of the pages, one article row per URL (the last seen wins)."""
    articles = pd.DataFrame([a.__dict__ for p in pages for a in p.articles], columns=list(Article.__dataclass_fields__))
    mentions = pd.DataFrame([m.__dict__ for p in pages for m in p.mentions], columns=list(Mention.__dataclass_fields__))
    articles = articles.drop_duplicates("url", keep="last").assign(origin="alphavantage")
    mentions = mentions.drop_duplicates(["symbol", "url"], keep="last").assign(origin="alphavantage")
    return articles.reset_index(drop=True), mentions.reset_index(drop=True)
