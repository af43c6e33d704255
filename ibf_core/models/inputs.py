"""The modelling panel read from the warehouse: stored bars + stored features over a date range."""

from __future__ import annotations

import datetime as dt

import pandas as pd

from ibf_core.features.table import features_spec
from ibf_core.storage.tables import MARKET_BARS

# Earliest date read when a caller asks for the whole history.
_BEGINNING = dt.date(1900, 1, 1)


def load_panel(store, symbols: list[str], start: dt.date | None, end: dt.date) -> pd.DataFrame:
    """Bars + stored features -> the modelling panel (targets for every horizon) of ``symbols`` over [start, end]."""
    from ibf_core.models import HORIZONS
    from ibf_core.models.dataset import build_panel

    first = start or _BEGINNING
    bars = store.read(MARKET_BARS, symbols, first, end)
    features = store.read(features_spec(), symbols, first, end)
    return build_panel(bars, features, HORIZONS)
