"""The per-symbol Parquet cache of downloaded bars, with the date ranges already asked for in its metadata."""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from ibf_core.market.bars import BAR_COLUMNS, BAR_DTYPES, empty_bars
from ibf_core.sources.ibkr.parsing import SPREAD
from ibf_core.storage import atomic

# Heavy imports (pyarrow) stay inside the functions that need them: importing this module loads none of them.

log = logging.getLogger("ibf_core.sources.ibkr")  # the name it logged under before the split

CACHE_SUBDIR = "ibkr"
COVERED_KEY = b"ibf.ibkr.covered"  # Parquet schema metadata: date ranges already downloaded
QUOTES_COVERED_KEY = b"ibf.ibkr.covered.bid_ask"  # ... and the ranges whose BID_ASK bars were asked for


# ---- cache --------------------------------------------------------------------------------------------
class BarCache:
    """Per-symbol Parquet files ``<root>/ibkr/<SYMBOL>.parquet`` holding bars plus the ranges downloaded."""

    def __init__(self, cache_dir: Path | None):
        self.root = Path(cache_dir) / CACHE_SUBDIR if cache_dir is not None else None

    def path(self, symbol: str) -> Path | None:
        return self.root / f"{symbol}.parquet" if self.root is not None else None

    def load(
        self, symbol: str
    ) -> tuple[pd.DataFrame, list[tuple[dt.date, dt.date]], list[tuple[dt.date, dt.date]]]:
        """Cached bars (with ``spread`` when BID_ASK bars were ever fetched), the ranges whose TRADES bars and
        the ranges whose BID_ASK bars were downloaded."""
        path = self.path(symbol)
        if path is None or not path.is_file():
            return empty_bars(), [], []
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
            metadata = table.schema.metadata or {}
            covered = _ranges(metadata.get(COVERED_KEY, b"[]"))
            quote_covered = _ranges(metadata.get(QUOTES_COVERED_KEY, b"[]"))
            frame = table.to_pandas()
            columns = BAR_COLUMNS + ([SPREAD] if SPREAD in frame.columns else [])
            frame = frame[columns].astype({**BAR_DTYPES, SPREAD: "float64"} if SPREAD in columns else BAR_DTYPES)
        except Exception as exc:  # a damaged cache file is re-downloaded, never fatal
            log.warning("ignoring unreadable IB cache %s: %s", path, exc)
            return empty_bars(), [], []
        return frame, covered, quote_covered

    def save(
        self,
        symbol: str,
        frame: pd.DataFrame,
        covered: Sequence[tuple[dt.date, dt.date]],
        quote_covered: Sequence[tuple[dt.date, dt.date]] = (),
    ) -> None:
        """Replace the symbol's file atomically and durably (``ibf_core.storage.atomic``): readers never see half
        a file, a crash leaves the old one. The symbol's lock is held for the write, so a temp file of the symbol
        found meanwhile is a dead writer's and is removed."""
        path = self.path(symbol)
        if path is None:
            return
        import pyarrow as pa

        table = pa.Table.from_pandas(frame.reset_index(drop=True), preserve_index=False)
        meta = dict(table.schema.metadata or {})
        meta[COVERED_KEY] = json.dumps([[a.isoformat(), b.isoformat()] for a, b in covered]).encode()
        if quote_covered:
            meta[QUOTES_COVERED_KEY] = json.dumps([[a.isoformat(), b.isoformat()] for a, b in quote_covered]).encode()
        table = table.replace_schema_metadata(meta)
        with atomic.lock(path.parent, symbol):
            atomic.remove_stale_temps(path.parent, held=[path.name])
            atomic.write_parquet(path, table)


def _ranges(raw: bytes) -> list[tuple[dt.date, dt.date]]:
    return [(dt.date.fromisoformat(a), dt.date.fromisoformat(b)) for a, b in json.loads(raw)]
