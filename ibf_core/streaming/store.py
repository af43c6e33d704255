"""Micro-batches appended atomically: each batch is one warehouse write over the (date, symbol) partitions it
touches; rows whose key is already stored are dropped (the stored row is kept), so a batch re-sent after a
reconnect or a restart adds nothing twice.

An :class:`Appender` keeps, per partition it wrote, the stored rows (Arrow) and their key set, so a batch costs
one partition file write per touched partition and no re-read: the lake's files are only changed by this process
while it streams. The memory is checked against the table's stamp (which every commit changes) before each batch
and dropped when another writer committed meanwhile, so a restart, a second writer or a deletion re-reads."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ibf_core.storage.interface import TableStore, Transaction
from ibf_core.storage.tables import TableSpec


def partition_name(date: object, symbol: str) -> str:
    return f"{pd.Timestamp(date):%Y-%m-%d}.{symbol}"


@dataclass
class _Stored:
    table: pa.Table
    keys: set[tuple]
    floor: object | None  # max of the floor column, None when no rows


def _keys(frame: pd.DataFrame, key: list[str]) -> list[tuple]:
    return list(zip(*(frame[k].tolist() for k in key)))


class Appender:
    """Keyed appends of one table, remembering what it stored (see the module docstring)."""

    def __init__(self, store: TableStore, spec: TableSpec, floor: str | None = None):
        self.store, self.spec, self.floor = store, spec, floor
        self._stored: dict[str, _Stored] = {}
        self._stamp: Hashable | None = None

    def _remember(self, table: pa.Table) -> _Stored:
        frame = table.select(list(self.spec.key)).to_pandas()
        frame = frame.assign(date=pd.to_datetime(frame["date"]))
        top = pc.max(table.column(self.floor)).as_py() if self.floor is not None and table.num_rows else None
        return _Stored(table, set(_keys(frame, list(self.spec.key))), None if top is None else pd.Timestamp(top))

    def append(self, rows: pd.DataFrame) -> int:
        """Append ``rows`` (the table's columns); returns how many were new. With ``floor`` (a column), rows below
        the partition's stored maximum of it are taken as stored already (a stream re-sending its recent past)."""
        if rows.empty:
            return 0
        spec, key = self.spec, list(self.spec.key)
        if self.store.table_stamp(spec) != self._stamp:
            self._stored.clear()  # someone else committed: what we remember may be stale
        rows = rows.assign(date=pd.to_datetime(rows["date"]).dt.normalize())
        rows = rows.drop_duplicates(key, keep="first").reset_index(drop=True)
        names = [partition_name(d, s) for d, s in zip(rows["date"], rows["symbol"])]
        rows_keys = _keys(rows, key)
        wanted = sorted(set(names))
        by_name: dict[str, list[int]] = {}
        for i, name in enumerate(names):
            by_name.setdefault(name, []).append(i)
        arrow = pa.Table.from_pandas(
            rows[spec.column_names].assign(date=rows["date"].to_numpy().astype("datetime64[D]")),
            schema=spec.schema, preserve_index=False)
        order = [(k, "ascending") for k in key]

        def build(tx: Transaction) -> tuple[dict[str, _Stored], int]:
            # Only reads through the transaction and computes: it may run again after a commit conflict.
            missing = [n for n in wanted if n not in self._stored]
            found = {n: self._remember(t) for n, t in tx.read_many(spec, missing).items()}
            changed: dict[str, _Stored] = {}
            added = 0
            for name in wanted:
                old = self._stored.get(name) or found.get(name)
                picked = by_name[name]
                if old is not None:
                    picked = [i for i in picked if rows_keys[i] not in old.keys
                              and (old.floor is None or rows.at[i, self.floor] >= old.floor)]
                if not picked:
                    continue
                added += len(picked)
                new = arrow.take(pa.array(picked, pa.int64()))
                merged = new if old is None else pa.concat_tables([old.table, new])
                merged = merged.take(pc.sort_indices(merged, order))
                tx.put(spec, name, merged)
                top = old.floor if old is not None else None
                if self.floor is not None:
                    latest = pd.Timestamp(max(rows.at[i, self.floor] for i in picked))
                    top = latest if top is None else max(top, latest)
                keys = (old.keys if old is not None else set()) | {rows_keys[i] for i in picked}
                changed[name] = _Stored(merged, keys, top)
            for name, value in found.items():
                changed.setdefault(name, value)
            return changed, added

        changed, added = self.store.write([(spec, name) for name in wanted], build)
        self._stamp = self.store.table_stamp(spec)
        self._stored.update(changed)
        return added


def append_rows(store: TableStore, spec: TableSpec, rows: pd.DataFrame, floor: str | None = None) -> int:
    """Append ``rows`` (the table's columns) with a fresh :class:`Appender` (reads the partitions); returns how
    many were new."""
    return Appender(store, spec, floor).append(rows)
