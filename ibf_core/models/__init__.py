"""Forecasting models: one global model per member across the whole universe, multi-horizon, with intervals.

Modules: ``config`` (hyper-parameters and horizons), ``dataset`` (bars + features -> the modelling panel,
targets and scalers), ``members`` (the member protocol and registry: baselines, LSTM/TFT, GBDT), ``neural``
(NeuralForecast LSTM/TFT), ``gbdt`` (LightGBM per horizon), ``ensemble`` (weights and conformal intervals),
``training`` (train every member up to a cut-off into a ``ModelBundle``), ``bundle`` (save/load with
checksums), ``predict`` (batch inference and ranking), ``registry`` (MLflow).
"""

from __future__ import annotations

from typing import Any

from ibf_core.models import names

HORIZONS: tuple[int, ...] = (1, 3, 5, 10, 15, 20)


def __getattr__(name: str) -> Any:
    # NEURAL_MEMBERS and TRAINED_MEMBERS are read from the member names when asked for, so a member
    # registered later is included.
    if name in ("NEURAL_MEMBERS", "TRAINED_MEMBERS"):
        return names.neural_members() if name == "NEURAL_MEMBERS" else names.trained_members()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class ModelDataError(ValueError):
    """The data cannot train or feed a model (too little history, gaps, all-NaN features); names the culprit."""


class ModelLoadError(RuntimeError):
    """A saved model cannot be loaded (missing files, checksum mismatch, unknown version)."""
