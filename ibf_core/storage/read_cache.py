"""Memoized reads of a warehouse: ``ReadCache(store)`` answers a repeated ``read``/``query`` from memory until
a writer commits a change to a table it read.

A read's answer is kept together with the ``table_stamp`` of every table it depends on (the lake: the folder's
modification time, which a swap changes; DuckLake: the table's newest snapshot), taken *before* reading: a write that
lands during the read makes the next call read again. A long-running reader (the REST service's ``fresh``
predictions) uses it; every other attribute is the wrapped warehouse's.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable, Iterable, Sequence
from typing import Any

import pandas as pd

from ibf_core.storage.interface import views_needed
from ibf_core.storage.registry import registered_catalog
from ibf_core.storage.tables import TableSpec


class ReadCache:
    def __init__(self, store, entries: int = 8):
        self._store, self._entries = store, entries
        self._lock = threading.Lock()
        self._memo: OrderedDict[Hashable, tuple[tuple, pd.DataFrame]] = OrderedDict()
        self.hits = self.misses = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def _stamps(self, tables: Iterable[TableSpec]) -> tuple:
        out = []
        for spec in sorted(tables, key=lambda t: t.name):
            out.append((spec.name, self._store.table_stamp(spec)))
        return tuple(out)

    def _cached(self, key: Hashable, tables: Iterable[TableSpec], compute) -> pd.DataFrame:
        stamps = self._stamps(tables)  # before the read: a swap during it invalidates the answer
        with self._lock:
            found = self._memo.get(key)
            if found is not None and found[0] == stamps:
                self._memo.move_to_end(key)
                self.hits += 1
                return found[1].copy()
        value = compute()
        with self._lock:
            self.misses += 1
            self._memo[key] = (stamps, value)
            self._memo.move_to_end(key)
            while len(self._memo) > self._entries:
                self._memo.popitem(last=False)
        return value.copy()  # callers may change their frame; the kept one stays as read

    def memo(self, key: Hashable, tables: Iterable[TableSpec], compute) -> pd.DataFrame:
        """``compute()`` (a frame built from ``tables``) kept until a writer changes one of them; a copy each call."""
        return self._cached(("memo", key), tables, compute)

    def read(self, spec: TableSpec, symbols: Iterable[str] | None = None, start=None, end=None, columns=None) -> pd.DataFrame:
        names = None if symbols is None else tuple(symbols)
        chosen = None if columns is None else tuple(columns)
        key = ("read", spec.name, tuple(spec.column_names), names, str(start), str(end), chosen)
        return self._cached(key, [spec], lambda: self._store.read(spec, names, start, end, chosen))

    def query(self, sql: str, params: Sequence[object] | None = None, on_damaged=None) -> pd.DataFrame:
        if on_damaged is not None:  # the caller wants to hear about damaged files: not from memory
            return self._store.query(sql, params, on_damaged)
        catalog = registered_catalog()
        tables = views_needed(catalog, sql)
        folders = [t for t in catalog.tables if t.name in tables]
        key = ("query", sql, _hashable(params))
        return self._cached(key, folders, lambda: self._store.query(sql, params))


def _hashable(value: Any) -> Hashable:
    if isinstance(value, (list, tuple)):
        return tuple(_hashable(v) for v in value)
    return value
