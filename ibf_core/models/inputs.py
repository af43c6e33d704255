"""Models from the warehouse: the modelling panel (stored bars + features) and training at a cut-off."""

from __future__ import annotations

import datetime as dt

import pandas as pd

from ibf_core.calendar import all_sessions
from ibf_core.features.table import features_spec
from ibf_core.models import HORIZONS, ModelDataError
from ibf_core.models.config import ModelConfig, resolve_device
from ibf_core.models.dataset import build_panel
from ibf_core.models.phases import PhaseMeter
from ibf_core.storage.tables import MARKET_BARS

# Heavy imports (talib) stay inside the functions that need them: importing this module loads none of them.

# Earliest date read when a caller asks for the whole history.
_BEGINNING = dt.date(1900, 1, 1)


def load_panel(store, symbols: list[str], start: dt.date | None, end: dt.date) -> pd.DataFrame:
    """Bars + stored features -> the modelling panel (targets for every horizon) of ``symbols`` over [start, end]."""
    first = start or _BEGINNING

    def build() -> pd.DataFrame:
        bars = store.read(MARKET_BARS, symbols, first, end)
        features = store.read(features_spec(), symbols, first, end)
        return build_panel(bars, features, HORIZONS)

    # A read cache (the API's fresh predictions) keeps the built panel until bars or features change.
    memo = getattr(store, "memo", None)
    if memo is None:
        return build()
    return memo(("panel", tuple(symbols), str(first), str(end)), [MARKET_BARS, features_spec()], build)


def train_from_warehouse(store, settings, cutoff: dt.date, progress=None):
    """Train every configured member on all stored symbols up to ``cutoff``: the ``trained_models`` asset's logic.

    Returns the bundle. A cut-off that is not a session, or a warehouse without features, is an error that
    names it before any training starts.
    """
    from ibf_core.models.training import train_models

    if pd.Timestamp(cutoff) not in set(all_sessions()):
        raise ModelDataError(f"cut-off {cutoff} is not an NYSE session")
    symbols = store.symbols(features_spec())
    if not symbols:
        raise ModelDataError("no features stored: materialize market_bars and features first")
    device = resolve_device(settings.accelerator)
    if progress is not None:
        progress(f"training on {device} (IBF_ACCELERATOR={settings.accelerator})")

    with PhaseMeter() as meter, meter.phase("load panel"):
        panel = load_panel(store, symbols, None, cutoff)
    bundle = train_models(panel, cutoff, ModelConfig.from_settings(settings), device=device, progress=progress,
                          memory_budget_mib=settings.model_memory_budget_mib)
    resources = bundle.facts.setdefault("resources", {})
    resources["phases"] = {**meter.facts()["phases"], **resources.get("phases", {})}
    return bundle
