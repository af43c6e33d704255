"""Forecasting models: one global model per member across the whole universe, multi-horizon, with intervals.

Modules: ``config`` (hyper-parameters and horizons), ``dataset`` (bars + features -> the modelling panel,
targets and scalers), ``neural`` (NeuralForecast LSTM/TFT), ``gbdt`` (LightGBM per horizon), ``ensemble``
(weights and conformal intervals), ``training`` (train every member up to a cut-off into a ``ModelBundle``),
``bundle`` (save/load with checksums), ``predict`` (batch inference and ranking), ``registry`` (MLflow).
"""

from __future__ import annotations

HORIZONS: tuple[int, ...] = (1, 3, 5, 10, 15, 20)
NEURAL_MEMBERS: tuple[str, ...] = ("lstm", "tft")
TRAINED_MEMBERS: tuple[str, ...] = ("lstm", "tft", "gbdt")


class ModelDataError(ValueError):
    """The data cannot train or feed a model (too little history, gaps, all-NaN features); names the culprit."""


class ModelLoadError(RuntimeError):
    """A saved model cannot be loaded (missing files, checksum mismatch, unknown version)."""
