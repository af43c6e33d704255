"""The ``features`` table: one column per registered feature, declared beside the feature registry."""

from __future__ import annotations

from functools import lru_cache

import pyarrow as pa

from ibf_core.storage.tables import Column, TableSpec

# Heavy imports (talib) stay inside the functions that need them: importing this module loads none of them.


@lru_cache(maxsize=1)
def features_spec() -> TableSpec:
    """The ``features`` table: one column per registered feature (``ibf_core.features``), plus the warm-up flag."""
    from ibf_core.features.pipeline import FEATURES

    columns = [Column("symbol", pa.string(), "Ticker symbol"), Column("date", pa.date32(), "NYSE trading day")]
    columns += [
        Column(f.name, pa.float64(), f"{f.description}{' (future-known)' if f.future_known else ''}", optional=False)
        for f in FEATURES
    ]
    columns.append(Column("warmup", pa.bool_(), "True while the symbol has too little history for every window"))
    return TableSpec(
        name="features",
        description="Model-ready, scale-free features per symbol and trading day (data known at the close only).",
        columns=tuple(columns),
    )
