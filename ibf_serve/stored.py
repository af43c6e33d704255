"""The newest origin's stored forecasts as pre-rendered JSON records, so the common request (newest origin, a few
symbols, or a ranking) is answered by joining bytes: no DataFrame, no per-value encoding on the request path.

``StoredIndex.of(forecasts)`` renders each (symbol, horizon) record once per origin; the ``ServedNewest`` wrapper
rebuilds it only when :class:`ibf_core.forecasts.NewestForecasts` hands out a different origin (after a write).
"""

from __future__ import annotations

import bisect
import datetime as dt
import json
import math
import threading
from dataclasses import dataclass
from typing import Any

from ibf_core.forecasts import Forecasts, NewestForecasts


def jsonable(value: Any) -> Any:
    """NaN/inf become null; dates ISO strings; numpy scalars plain numbers."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is not None and type(value).__name__ in ("NaTType", "NAType"):
        return None
    return value


def records(frame) -> list[dict[str, Any]]:
    return [jsonable(r) for r in frame.to_dict("records")]


def dumps(value: Any) -> bytes:
    """Compact JSON, the bytes every pre-rendered response is made of."""
    return json.dumps(value, separators=(",", ":"), allow_nan=False).encode("utf-8")


@dataclass(frozen=True)
class Selection:
    """Some records of one origin: their JSON, in the served order, and the newest model version among them."""

    as_of: dt.date
    parts: list[bytes]
    model_version: str | None

    def body(self, head: dict[str, Any], key: str) -> bytes:
        """``head`` plus ``key``: the records, as one JSON object (the same document ``JSONResponse`` would give)."""
        prefix = dumps({"as_of": self.as_of.isoformat(), **head, "model_version": self.model_version})
        return prefix[:-1] + b',"' + key.encode() + b'":[' + b",".join(self.parts) + b"]}"


class StoredIndex:
    """One origin's forecasts: per (symbol, horizon) the served position, JSON record and model version."""

    def __init__(self, forecasts: Forecasts):
        self.as_of = forecasts.as_of
        frame = forecasts.frame  # ordered by horizon, rank, symbol: a record's position is its served order
        rendered = records(frame)
        self._parts = [dumps(r) for r in rendered]
        self._versions = [r["model_version"] for r in rendered]
        self._at = {(r["symbol"], int(r["horizon"])): i for i, r in enumerate(rendered)}
        self.symbols = frozenset(r["symbol"] for r in rendered)
        by_horizon: dict[int, tuple[list[float], list[int]]] = {}
        for i, r in enumerate(rendered):
            if r["rank"] is None:
                continue
            ranks, rows = by_horizon.setdefault(int(r["horizon"]), ([], []))
            ranks.append(float(r["rank"]))
            rows.append(i)
        self._by_horizon = by_horizon

    def _selection(self, rows: list[int]) -> Selection:
        versions = [self._versions[i] for i in rows if self._versions[i] is not None]
        return Selection(self.as_of, [self._parts[i] for i in rows], max(versions) if versions else None)

    def select(self, symbols: list[str], horizons: list[int]) -> Selection:
        """The records of ``symbols`` x ``horizons`` in served order (horizon, rank, symbol)."""
        at = self._at
        rows = sorted(i for h in horizons for s in symbols if (i := at.get((s, h))) is not None)
        return self._selection(rows)

    def top(self, horizon: int, top: int) -> Selection:
        """Ranks 1..``top`` at ``horizon`` in rank order."""
        ranks, rows = self._by_horizon.get(horizon, ([], []))
        return self._selection(rows[: bisect.bisect_right(ranks, float(top))])


class ServedNewest:
    """``NewestForecasts`` plus its rendered index, rebuilt only when the newest origin's forecasts change."""

    def __init__(self, newest: NewestForecasts):
        self.newest = newest
        self._lock = threading.Lock()
        self._source: Forecasts | None = None
        self._index: StoredIndex | None = None
        self._reloading = 0

    def index(self) -> StoredIndex | None:
        """The newest origin's index; reads the files again first when a writer swapped one in (blocking)."""
        current = self.newest.is_current()
        if not current:
            self._reloading += 1
        try:
            forecasts = self.newest.get()  # the same object while no writer swapped a predictions file in
            if forecasts is None:
                return None
            with self._lock:
                if forecasts is not self._source:
                    self._index, self._source = StoredIndex(forecasts), forecasts
                return self._index
        finally:
            if not current:
                self._reloading -= 1

    def without_waiting(self) -> tuple[bool, StoredIndex | None]:
        """(True, index) when it can be answered without reading files: the files did not change, or another
        request is reading them already (then the previous origin's index answers, consistent, a moment old);
        (False, None) when the caller must call ``index()`` (in a thread)."""
        if self.newest.is_current():
            return True, self._index if self._source is self.newest.get() else self.index()
        if self._reloading and self._index is not None:
            return True, self._index
        return False, None
