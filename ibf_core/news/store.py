"""Raw news in the lake: ``news_articles`` (one row per URL) and ``news_mentions`` (article x ticker), plus the
per-source fetch progress that lets an Alpha Vantage backfill resume after the daily quota runs out.

Layout (partitions of the warehouse, written by one ``TableStore.write``):

- ``news_articles`` partitioned by UTC month of ``published_at`` (``lake/news_articles/<YYYY-MM>.parquet``). A URL
  lives in exactly one month: a write first removes its URLs from every month that holds them (a re-published
  article may change month).
- ``news_mentions`` partitioned by symbol: one row per (symbol, url).
- ``<state>/news_progress/<source>.json`` (``lake/`` for the Parquet lake): per symbol the time ranges already fetched completely, and today's request
  count (the daily quota), for one source (base URL), so a loopback server never marks real data as fetched.

Writes are upserts (the new row for a URL / (symbol, url) replaces the old one), so re-running the same fetch
gives identical files. One write is one transaction: any failure while preparing it leaves every table as it was.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd
import pyarrow as pa

from ibf_core.storage import atomic
from ibf_core.storage.interface import WHOLE_TABLE, TableStore, Transaction
from ibf_core.storage.tables import Column, TableSpec

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

_UTC_TS = pa.timestamp("us", tz="UTC")

NEWS_ARTICLES = TableSpec(
    name="news_articles",
    description="Raw news articles, one row per URL (Alpha Vantage or the user's headline file).",
    key=("url",),
    files="<YYYY-MM>.parquet",
    columns=(
        Column("url", pa.string(), "Article URL (file rows without one: urn:ibf:news:<hash>)"),
        Column("title", pa.string(), "Headline"),
        Column("summary", pa.string(), "Summary ('' when absent)"),
        Column("source", pa.string(), "Publisher ('' when absent)"),
        Column("published_at", _UTC_TS, "Publication time, UTC (AV times without a zone are read as US/Eastern)"),
        Column("overall_sentiment_score", pa.float64(), "Overall sentiment -1..1 (AV, or VADER compound for files)"),
        Column("overall_sentiment_label", pa.string(), "Bearish .. Bullish by AV's thresholds"),
        Column("topics", pa.string(), "AV topics as JSON text ('[]' for files)"),
        Column("origin", pa.string(), "alphavantage or file"),
    ),
)

NEWS_MENTIONS = TableSpec(
    name="news_mentions",
    description="Article x ticker: the ticker's relevance and sentiment, and the trading day the article counts for.",
    key=("symbol", "url"),
    columns=(
        Column("symbol", pa.string(), "Ticker symbol"),
        Column("date", pa.date32(), "NYSE session the article counts for (after the close: the next session)"),
        Column("url", pa.string(), "Article URL (joins news_articles)"),
        Column("published_at", _UTC_TS, "Publication time, UTC"),
        Column("relevance", pa.float64(), "Ticker relevance 0..1 (1 for file rows)"),
        Column("ticker_sentiment", pa.float64(), "Ticker sentiment -1..1"),
        Column("label", pa.string(), "Ticker sentiment label (AV thresholds)"),
        Column("origin", pa.string(), "alphavantage or file"),
    ),
)

NEWS_TABLES = (NEWS_ARTICLES, NEWS_MENTIONS)


class NewsStoreError(RuntimeError):
    """Raw news could not be written or read."""


@dataclass(frozen=True)
class ReplaceScope:
    """Also delete stored mentions of ``origin`` for ``symbols`` x [start, end] that the new write lacks."""

    symbols: tuple[str, ...]
    start: dt.date
    end: dt.date
    origin: str


@dataclass(frozen=True)
class NewsWriteResult:
    articles: int  # article rows written (new or replaced)
    mentions: int
    mentions_removed: int  # by a ReplaceScope
    files: int


# ----- frames ---------------------------------------------------------------------------------------
def empty_frame(spec: TableSpec) -> pd.DataFrame:
    """An empty frame with the table's columns and dtypes (``date`` as datetime64)."""
    return _to_pandas(spec, spec.schema.empty_table())


def _to_pandas(spec: TableSpec, table: pa.Table) -> pd.DataFrame:
    frame = table.to_pandas()
    if "date" in frame.columns:
        frame["date"] = pd.to_datetime(frame["date"])
    for column in ("published_at",):
        if column in frame.columns:
            frame[column] = pd.to_datetime(frame[column], utc=True)
    return frame


def conform(spec: TableSpec, frame: pd.DataFrame) -> pd.DataFrame:
    """Columns in schema order with storable types; raises naming the missing column or null key."""
    missing = [c for c in spec.column_names if c not in frame.columns]
    if missing:
        raise NewsStoreError(f"{spec.name}: frame lacks column(s) {', '.join(missing)}")
    out = frame[spec.column_names].copy()
    if "published_at" in out.columns:
        out["published_at"] = pd.to_datetime(out["published_at"], utc=True)
    if "date" in out.columns:
        out["date"] = pd.to_datetime(out["date"]).dt.normalize()
    for column in spec.key + (("date", "published_at") if "date" in out.columns else ("published_at",)):
        if out[column].isna().any():
            raise NewsStoreError(f"{spec.name}: {column} is empty in {int(out[column].isna().sum())} row(s)")
    if out.duplicated(list(spec.key)).any():
        dup = out.loc[out.duplicated(list(spec.key)), list(spec.key)].iloc[0].tolist()
        raise NewsStoreError(f"{spec.name}: duplicate key {dup} in the frame being written")
    return out


def _arrow(spec: TableSpec, frame: pd.DataFrame) -> pa.Table:
    data = frame.assign(date=frame["date"].to_numpy().astype("datetime64[D]")) if "date" in frame.columns else frame
    return pa.Table.from_pandas(data, schema=spec.schema, preserve_index=False)


def _sorted(spec: TableSpec, frame: pd.DataFrame) -> pd.DataFrame:
    order = ["date", "published_at", "url"] if spec is NEWS_MENTIONS else ["published_at", "url"]
    return frame.sort_values(order, kind="stable").reset_index(drop=True)


# ----- layout ---------------------------------------------------------------------------------------
def ensure_news_tables(warehouse: TableStore) -> None:
    """Folders, schema files and the DuckDB views ``news_articles`` and ``news_mentions``."""
    for spec in NEWS_TABLES:
        warehouse.ensure_table(spec)


def _check_symbol(symbol: str) -> str:
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9.\-_]*$", symbol):
        raise NewsStoreError(f"news_mentions: symbol {symbol!r} cannot be stored")
    return symbol


# ----- writes ---------------------------------------------------------------------------------------
def write_news(
    warehouse: TableStore,
    articles: pd.DataFrame,
    mentions: pd.DataFrame,
    *,
    replace: ReplaceScope | None = None,
) -> NewsWriteResult:
    """Upsert articles (by URL) and mentions (by symbol, url); every mention's URL must be among ``articles``."""
    articles = conform(NEWS_ARTICLES, articles)
    mentions = conform(NEWS_MENTIONS, mentions)
    orphans = set(mentions["url"]) - set(articles["url"])
    if orphans:
        raise NewsStoreError(f"news_mentions: {len(orphans)} mention(s) without an article, e.g. {sorted(orphans)[0]}")
    if replace is None and articles.empty and mentions.empty:
        return NewsWriteResult(0, 0, 0, 0)
    ensure_news_tables(warehouse)
    symbols = sorted(set(mentions["symbol"]) | set(replace.symbols if replace else ()))
    for symbol in symbols:
        _check_symbol(symbol)

    def build(tx: Transaction) -> NewsWriteResult:
        # Articles first (the lake swaps in that order): a crash in between leaves articles without mentions,
        # never mentions without articles.
        changed = _put_articles(warehouse, tx, articles)
        removed, touched = _put_mentions(tx, mentions, symbols, replace)
        return NewsWriteResult(len(articles), len(mentions), removed, changed + touched)

    # The whole articles table (a URL may move between months) and the mentions of each symbol.
    locks = [(NEWS_ARTICLES, WHOLE_TABLE)] + [(NEWS_MENTIONS, s) for s in symbols]
    return warehouse.write(locks, build)


def _put(tx: Transaction, spec: TableSpec, name: str, frame: pd.DataFrame) -> None:
    """Write ``frame`` as the partition ``name``, or delete it when nothing is left."""
    if frame.empty:
        tx.delete(spec, name)
    else:
        tx.put(spec, name, _arrow(spec, _sorted(spec, frame)))


def _put_articles(warehouse: TableStore, tx: Transaction, articles: pd.DataFrame) -> int:
    """Each touched month: its articles without the incoming URLs, plus the incoming ones of that month."""
    if articles.empty:
        return 0
    month = articles["published_at"].dt.tz_convert("UTC").dt.strftime("%Y-%m")
    incoming = set(articles["url"])
    targets = {m: articles[month == m] for m in sorted(set(month))}
    touched = dict.fromkeys(targets)
    for name in warehouse.partitions(NEWS_ARTICLES):
        stored = tx.read(NEWS_ARTICLES, name, ["url"])
        if stored is not None and incoming.intersection(stored.column("url").to_pylist()):
            touched[name] = None
    for name in sorted(touched):
        parts = []
        old = tx.read(NEWS_ARTICLES, name)
        if old is not None:
            old = _to_pandas(NEWS_ARTICLES, old)
            parts.append(old[~old["url"].isin(incoming)])
        if name in targets:
            parts.append(targets[name])
        _put(tx, NEWS_ARTICLES, name, _concat(parts))
    return len(touched)


def _put_mentions(
    tx: Transaction,
    mentions: pd.DataFrame,
    symbols: Sequence[str],
    replace: ReplaceScope | None,
) -> tuple[int, int]:
    """Each symbol's mentions upserted (and cut by ``replace``); the mentions ``replace`` removed, partitions written."""
    removed = touched = 0
    before = tx.read_many(NEWS_MENTIONS, symbols)
    for symbol in symbols:
        new = mentions[mentions["symbol"] == symbol]
        parts = []
        stored = before.get(symbol)
        if stored is not None:
            old = _to_pandas(NEWS_MENTIONS, stored)
            keep = ~old["url"].isin(set(new["url"]))
            if replace is not None and symbol in replace.symbols:
                scoped = (
                    (old["origin"] == replace.origin)
                    & (old["date"] >= pd.Timestamp(replace.start))
                    & (old["date"] <= pd.Timestamp(replace.end))
                )
                removed += int((keep & scoped).sum())
                keep &= ~scoped
            if keep.all() and new.empty:
                continue  # nothing changes for this symbol
            parts.append(old[keep])
        elif new.empty:
            continue
        parts.append(new)
        _put(tx, NEWS_MENTIONS, symbol, _concat(parts))
        touched += 1
    return removed, touched


def _concat(parts: list[pd.DataFrame]) -> pd.DataFrame:
    parts = [p for p in parts if not p.empty]
    if not parts:
        return pd.DataFrame()
    return pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0].reset_index(drop=True)


# ----- reads ----------------------------------------------------------------------------------------
def read_mentions(
    warehouse: TableStore,
    symbols: Iterable[str] | None = None,
    start: Any = None,
    end: Any = None,
) -> pd.DataFrame:
    """Stored mentions (optionally of ``symbols`` with ``date`` in [start, end]), sorted by symbol, date, time, url."""
    names = None if symbols is None else [_check_symbol(s) for s in symbols]
    out = _to_pandas(NEWS_MENTIONS, warehouse.read_partitions(NEWS_MENTIONS, names))
    if start is not None:
        out = out[out["date"] >= pd.Timestamp(start)]
    if end is not None:
        out = out[out["date"] <= pd.Timestamp(end)]
    return out.sort_values(["symbol", "date", "published_at", "url"], kind="stable").reset_index(drop=True)


def read_articles(warehouse: TableStore, urls: Iterable[str] | None = None) -> pd.DataFrame:
    """Stored articles (optionally only ``urls``), sorted by published_at, url."""
    out = _to_pandas(NEWS_ARTICLES, warehouse.read_partitions(NEWS_ARTICLES))
    if urls is not None:
        out = out[out["url"].isin(set(urls))]
    return out.sort_values(["published_at", "url"], kind="stable").reset_index(drop=True)


# ----- fetch progress -------------------------------------------------------------------------------
Interval = tuple["pd.Timestamp", "pd.Timestamp"]


def source_id(base_url: str) -> str:
    """A file-name-safe id of a news source's base URL (scheme dropped, never a key)."""
    bare = re.sub(r"^[a-z]+://", "", base_url.strip().lower()).split("?")[0].rstrip("/")
    return "alphavantage-" + (re.sub(r"[^a-z0-9.\-]+", "_", bare) or "default")


def merge_intervals(intervals: Iterable[Interval]) -> list[Interval]:
    """Sorted, with overlapping or touching [a, b) intervals joined."""
    out: list[list[Any]] = []
    for lo, hi in sorted((a, b) for a, b in intervals if b > a):
        if out and lo <= out[-1][1]:
            out[-1][1] = max(out[-1][1], hi)
        else:
            out.append([lo, hi])
    return [(a, b) for a, b in out]


def subtract_intervals(lo: Any, hi: Any, covered: Iterable[Interval]) -> list[Interval]:
    """The parts of [lo, hi) not in ``covered``."""
    gaps, cursor = [], lo
    for a, b in merge_intervals(covered):
        if b <= cursor or a >= hi:
            continue
        if a > cursor:
            gaps.append((cursor, a))
        cursor = max(cursor, b)
    if cursor < hi:
        gaps.append((cursor, hi))
    return gaps


class NewsProgress:
    """Fetched time ranges per symbol and the day's request count for one source, in one JSON file.

    Every read-modify-write holds the file's lock and replaces the file atomically, so concurrent runs never lose
    each other's progress.
    """

    def __init__(self, warehouse: TableStore, source: str):
        self.warehouse = warehouse
        self.folder = warehouse.state_dir / "news_progress"
        self.path = self.folder / f"{source}.json"
        self.source = source

    def _lock(self):
        return atomic.lock(self.folder, self.path.stem)

    def _load(self) -> dict[str, Any]:
        if not self.path.exists():
            return {"version": 1, "covered": {}, "requests": {"day": None, "count": 0}}
        try:
            return json.loads(self.path.read_text())
        except ValueError as exc:
            raise NewsStoreError(f"{self.path}: not valid JSON ({exc}); delete it to refetch") from None

    def _save(self, state: dict[str, Any]) -> None:
        """Replace the file atomically; the caller holds :meth:`_lock`, so a leftover temp file is a dead writer's."""
        atomic.remove_stale_temps(self.folder, held=[self.path.name])
        atomic.write_json(self.path, state, indent=1, sort_keys=True)

    def covered(self, symbol: str) -> list[Interval]:
        raw = self._load()["covered"].get(symbol, [])
        return [(pd.Timestamp(a), pd.Timestamp(b)) for a, b in raw]

    def gaps(self, symbol: str, lo: Any, hi: Any) -> list[Interval]:
        """Parts of [lo, hi) not fetched yet for ``symbol``."""
        return subtract_intervals(lo, hi, self.covered(symbol))

    def add(self, fetched: Iterable[tuple[str, Any, Any]]) -> None:
        """Record (symbol, from, to) ranges as completely fetched."""
        fetched = list(fetched)
        if not fetched:
            return
        with self._lock():
            state = self._load()
            for symbol in sorted({s for s, _, _ in fetched}):
                old = [(pd.Timestamp(a), pd.Timestamp(b)) for a, b in state["covered"].get(symbol, [])]
                new = [(pd.Timestamp(a), pd.Timestamp(b)) for s, a, b in fetched if s == symbol]
                state["covered"][symbol] = [[a.isoformat(), b.isoformat()] for a, b in merge_intervals(old + new)]
            self._save(state)

    def take_request(self, day: dt.date, per_day: int) -> int:
        """Count one request against ``day``'s quota; returns the count, or -1 (nothing counted) when spent."""
        with self._lock():
            state = self._load()
            requests = state.setdefault("requests", {"day": None, "count": 0})
            if requests.get("day") != day.isoformat():
                requests.update(day=day.isoformat(), count=0)
            if requests["count"] >= per_day:
                return -1
            requests["count"] += 1
            self._save(state)
            return requests["count"]

    def requests_today(self, day: dt.date) -> int:
        requests = self._load().get("requests", {})
        return int(requests.get("count", 0)) if requests.get("day") == day.isoformat() else 0
