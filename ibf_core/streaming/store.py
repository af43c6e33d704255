"""Micro-batches appended atomically: each batch is one warehouse write over the (date, symbol) partitions it
touches; rows whose key is already stored are dropped (the stored row is kept), so a batch re-sent after a
reconnect or a restart adds nothing twice."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa

from ibf_core.storage.interface import TableStore, Transaction
from ibf_core.storage.tables import TableSpec


def partition_name(date: object, symbol: str) -> str:
    return f"{pd.Timestamp(date):%Y-%m-%d}.{symbol}"


def append_rows(store: TableStore, spec: TableSpec, rows: pd.DataFrame, floor: str | None = None) -> int:
    """Append ``rows`` (the table's columns); returns how many were new. With ``floor`` (a column), rows below the
    partition's stored maximum of it are taken as stored already (a stream re-sending its recent past)."""
    if rows.empty:
        return 0
    rows = rows.assign(date=pd.to_datetime(rows["date"]).dt.normalize())
    groups = {partition_name(d, s): g for (d, s), g in rows.groupby(["date", "symbol"], sort=True)}
    key = list(spec.key)

    def build(tx: Transaction) -> int:
        stored = tx.read_many(spec, sorted(groups))
        added = 0
        for name, new in groups.items():
            new = new.drop_duplicates(key, keep="first")
            old = stored.get(name)
            if old is not None:
                old_frame = old.to_pandas().assign(date=lambda f: pd.to_datetime(f["date"]))
                if floor is not None and len(old_frame):
                    new = new[new[floor] >= old_frame[floor].max()]
                seen = pd.MultiIndex.from_frame(old_frame[key])
                new = new[~pd.MultiIndex.from_frame(new[key]).isin(seen)]
                if new.empty:
                    continue
                merged = pd.concat([old_frame, new[spec.column_names]], ignore_index=True)
            else:
                merged = new[spec.column_names]
            added += len(new)
            merged = merged.sort_values(key, kind="stable")
            merged = merged.assign(date=merged["date"].to_numpy().astype("datetime64[D]"))
            tx.put(spec, name, pa.Table.from_pandas(merged, schema=spec.schema, preserve_index=False))
        return added

    return store.write([(spec, name) for name in groups], build)
