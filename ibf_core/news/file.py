"""Offline news: the user's headline file (CSV, JSON or JSON Lines) scored with VADER.

Columns: ``published_at, symbol, title`` and optionally ``summary, url, source``. The whole file is validated before
anything is returned, so a bad file fails with one error naming the file and the line (CSV) or record (JSON) and
nothing is written.

- ``published_at``: ISO 8601 or AV's ``YYYYMMDDTHHMMSS``; a time without a zone is US/Eastern (as for Alpha
  Vantage). A bare date (``2024-05-03``) has no time, so it is taken as 23:59:59 US/Eastern that day: after the close,
  it counts for the next session (a headline of unknown hour must not feed the same day's features).
- Score: VADER's compound score of ``title`` (+ ``". " + summary`` when present). It already lies in -1..1, AV's
  scale, and is used as it is for both the overall and the ticker sentiment; labels use AV's thresholds
  (+-0.15, +-0.35), not VADER's +-0.05. Relevance is 1 (the user put the row under that symbol).
- ``url``: when absent, ``urn:ibf:news:<sha256 of published_at, title, summary>``, so the same headline listed under
  two symbols is one article with two mentions.
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import Any

import pandas as pd

from ibf_core.news.aggregate import assign_trading_day
from ibf_core.news.alphavantage import DEFAULT_TZ, NewsError
from ibf_core.news.feed import parse_av_time, sentiment_label
from ibf_core.settings import normalize_symbol

# Heavy imports (vaderSentiment) stay inside the functions that need them: importing this module loads none of them.

REQUIRED = ("published_at", "symbol", "title")
OPTIONAL = ("summary", "url", "source")
_DATE_ONLY = re.compile(r"^\d{4}-\d{2}-\d{2}$|^\d{8}$")
_AV_TIME = re.compile(r"^\d{8}T\d{4}")


class NewsFileError(NewsError):
    """The headline file is unusable; ``row`` is the CSV line or the JSON record number (None: the whole file)."""

    def __init__(self, path: Path | str, message: str, row: int | None = None, unit: str = "line"):
        self.path, self.row = Path(path), row
        where = f"{path}" + (f", {unit} {row}" if row is not None else "")
        super().__init__(f"{where}: {message}")


def _records(path: Path) -> tuple[pd.DataFrame, str]:
    """All rows as text, with ``_row`` = the CSV line or JSON record number; returns (frame, unit)."""
    if not path.is_file():
        raise NewsFileError(path, "no such file")
    suffix = "".join(path.suffixes[-2:]).lower() if path.name.lower().endswith(".gz") else path.suffix.lower()
    try:
        if suffix in (".json", ".jsonl", ".ndjson"):
            text = path.read_text(encoding="utf-8-sig")
            if suffix == ".json":
                data = json.loads(text) if text.strip() else []
                if isinstance(data, dict):
                    data = data.get("articles", data.get("feed"))
                if not isinstance(data, list):
                    raise NewsFileError(path, "JSON must be a list of records or {\"articles\": [...]}")
            else:
                data = [json.loads(line) for line in text.splitlines() if line.strip()]
            bad = next((i for i, r in enumerate(data) if not isinstance(r, dict)), None)
            if bad is not None:
                raise NewsFileError(path, "is not an object", bad + 1, "record")
            frame = pd.DataFrame.from_records(data) if data else pd.DataFrame()
            frame = frame.map(lambda v: None if v is None or (isinstance(v, float) and v != v) else str(v))
            return frame.assign(_row=range(1, len(frame) + 1)), "record"
        with warnings.catch_warnings():
            # index_col=False: a row with an extra field (an unquoted comma) must fail, not become the index
            warnings.simplefilter("error", pd.errors.ParserWarning)
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True, index_col=False)
        return frame.assign(_row=frame.index + 2), "line"
    except NewsFileError:
        raise
    except pd.errors.EmptyDataError:
        raise NewsFileError(path, "the file is empty") from None
    except pd.errors.ParserWarning:
        raise NewsFileError(path, "more fields than the header (quote fields that contain commas)", 2) from None
    except (OSError, UnicodeDecodeError, ValueError, pd.errors.ParserError) as exc:
        raise NewsFileError(path, f"cannot read ({str(exc).splitlines()[0]})") from None


def _parse_time(raw: str, source_tz: str) -> pd.Timestamp:
    text = raw.strip()
    if _DATE_ONLY.match(text):
        text = (text if "-" in text else f"{text[:4]}-{text[4:6]}-{text[6:]}") + " 23:59:59"
    if _AV_TIME.match(text):
        return parse_av_time(text, source_tz)
    ts = pd.Timestamp(text)
    if ts is pd.NaT:
        raise ValueError("empty")
    if ts.tzinfo is None:
        ts = ts.tz_localize(source_tz, ambiguous=True, nonexistent="shift_forward")
    return ts.tz_convert("UTC")


def _synthetic_url(published_at: pd.Timestamp, title: str, summary: str) -> str:
    digest = hashlib.sha256(f"{published_at.isoformat()}\n{title}\n{summary}".encode()).hexdigest()
    return f"urn:ibf:news:{digest[:32]}"


def read_news_file(
    path: Path | str,
    *,
    known_symbols: Iterable[str] | None = None,
    source_tz: str = DEFAULT_TZ,
) -> pd.DataFrame:
    """The validated rows: ``published_at`` (UTC), ``symbol``, ``title``, ``summary``, ``url``, ``source``, ``_row``."""
    path = Path(path).expanduser()
    raw, unit = _records(path)
    columns = {c: c.strip().lower() for c in raw.columns if c != "_row"}
    raw = raw.rename(columns=columns)
    missing = [c for c in REQUIRED if c not in raw.columns]
    if missing:
        found = ", ".join(c for c in raw.columns if c != "_row") or "none"
        raise NewsFileError(path, f"missing column(s) {', '.join(missing)} (found: {found})")
    if raw.empty:
        raise NewsFileError(path, "the file has no rows")
    known = None if known_symbols is None else set(known_symbols)
    rows = []
    for rec in raw.to_dict("records"):
        row = rec["_row"]
        stamp_text = (rec.get("published_at") or "").strip()
        try:
            published = _parse_time(stamp_text, source_tz)
        except (ValueError, TypeError, OverflowError):
            raise NewsFileError(path, f"published_at {stamp_text!r} is not a date/time", row, unit) from None
        try:
            symbol = normalize_symbol(rec.get("symbol") or "")
        except ValueError:
            raise NewsFileError(path, f"symbol {rec.get('symbol')!r} is not a valid symbol", row, unit) from None
        if known is not None and symbol not in known:
            raise NewsFileError(path, f"unknown symbol {symbol} (known: {', '.join(sorted(known))})", row, unit)
        title = (rec.get("title") or "").strip()
        if not title:
            raise NewsFileError(path, "title is empty", row, unit)
        summary = (rec.get("summary") or "").strip()
        url = (rec.get("url") or "").strip() or _synthetic_url(published, title, summary)
        rows.append((published, symbol, title, summary, url, (rec.get("source") or "").strip(), row))
    out = pd.DataFrame(rows, columns=["published_at", "symbol", "title", "summary", "url", "source", "_row"])
    _check_duplicates(path, out, unit)
    out.attrs["unit"] = unit
    return out


def _check_duplicates(path: Path, rows: pd.DataFrame, unit: str) -> None:
    """The same (url, symbol) twice, or one URL with two publication times, is a broken file."""
    dup = rows.duplicated(["url", "symbol"], keep="first")
    if dup.any():
        bad = rows[dup].iloc[0]
        first = rows[(rows["url"] == bad["url"]) & (rows["symbol"] == bad["symbol"])].iloc[0]
        raise NewsFileError(path, f"repeats {unit} {first['_row']} ({bad['symbol']}, {bad['url']})", bad["_row"], unit)
    times = rows.groupby("url")["published_at"].transform("first")
    clash = rows["published_at"] != times
    if clash.any():
        bad = rows[clash].iloc[0]
        raise NewsFileError(path, f"url {bad['url']} has two different published_at values", bad["_row"], unit)


@lru_cache(maxsize=1)
def _analyzer() -> Any:
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


def vader_scores(texts: Iterable[str]) -> list[float]:
    """VADER compound scores (-1..1) of ``texts``."""
    analyzer = _analyzer()
    return [float(analyzer.polarity_scores(t)["compound"]) for t in texts]


def score_news_file(
    path: Path | str,
    *,
    known_symbols: Iterable[str] | None = None,
    source_tz: str = DEFAULT_TZ,
    close_margin: Any = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(articles, mentions) frames for ``news_articles``/``news_mentions`` from the file (origin='file')."""
    rows = read_news_file(path, known_symbols=known_symbols, source_tz=source_tz)
    texts = [f"{t}. {s}" if s else t for t, s in zip(rows["title"], rows["summary"])]
    rows["score"] = vader_scores(texts)
    rows["label"] = [sentiment_label(s) for s in rows["score"]]
    rows["date"] = assign_trading_day(rows["published_at"], close_margin).to_numpy()
    outside = rows["date"].isna()
    if outside.any():
        bad = rows[outside].iloc[0]
        message = f"published_at {bad['published_at']} lies outside the NYSE calendar"
        raise NewsFileError(path, message, int(bad["_row"]), rows.attrs.get("unit", "line"))
    first = rows.drop_duplicates("url", keep="first")
    articles = pd.DataFrame(
        {
            "url": first["url"], "title": first["title"], "summary": first["summary"], "source": first["source"],
            "published_at": first["published_at"], "overall_sentiment_score": first["score"],
            "overall_sentiment_label": first["label"], "topics": "[]", "origin": "file",
        }
    ).reset_index(drop=True)  # fmt: skip
    mentions = pd.DataFrame(
        {
            "symbol": rows["symbol"], "date": rows["date"], "url": rows["url"], "published_at": rows["published_at"],
            "relevance": 1.0, "ticker_sentiment": rows["score"], "label": rows["label"], "origin": "file",
        }
    ).reset_index(drop=True)  # fmt: skip
    return articles, mentions
