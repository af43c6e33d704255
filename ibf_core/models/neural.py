"""The neural members: one global NeuralForecast LSTM or TFT across every symbol of the universe.

The network models the daily log return ``y`` (divided by its training-window standard deviation) and
forecasts ``max(horizons)`` sessions at once; the h-day return is the sum of the first h steps. Inputs:
historical exogenous features (robust-scaled with statistics of the training window only) and the
future-known calendar features as future exogenous inputs. No static covariates exist in the bar or news
sources, so none are passed. Time stamps are NYSE session ordinals with ``freq=1``.

Inference for many (symbol, origin) pairs is one ``predict`` call: every pair becomes its own short series
``<symbol>|<session>`` holding the last ``input_size`` sessions up to the origin.
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ibf_core.calendar import all_sessions
from ibf_core.models import ModelDataError
from ibf_core.models.config import ModelConfig
from ibf_core.models.dataset import RobustScaler


def future_known_features() -> list[str]:
    from ibf_core.features.pipeline import FEATURES

    return [f.name for f in FEATURES if f.future_known]


def _quiet() -> None:
    warnings.filterwarnings("ignore", module="pytorch_lightning")
    warnings.filterwarnings("ignore", module="lightning_fabric")
    for name in ("pytorch_lightning", "lightning_fabric", "lightning", "neuralforecast"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _plateau_callback(patience: int, factor: float = 0.5):
    """Halve the learning rate after ``patience`` validation checks without improvement (NeuralForecast's own
    scheduler is a fixed step decay; ReduceLROnPlateau needs a monitored metric Lightning only gives callbacks)."""
    import pytorch_lightning as pl

    class ReduceLROnPlateau(pl.Callback):
        def __init__(self) -> None:
            self.best, self.bad, self.reductions, self.steps = float("inf"), 0, 0, 0

        def on_train_end(self, trainer, pl_module) -> None:
            self.steps = int(trainer.global_step)

        def on_validation_end(self, trainer, pl_module) -> None:
            loss = trainer.callback_metrics.get("ptl/val_loss")
            if loss is None:
                return
            value = float(loss)
            if value < self.best - 1e-9:
                self.best, self.bad = value, 0
                return
            self.bad += 1
            if self.bad >= patience:
                for optimizer in trainer.optimizers:
                    for group in optimizer.param_groups:
                        group["lr"] *= factor
                self.bad, self.reductions = 0, self.reductions + 1

    return ReduceLROnPlateau()


def build_model(kind: str, config: ModelConfig, hist: list[str], futr: list[str], device: str, callbacks: list):
    from neuralforecast.losses.pytorch import MSE
    from neuralforecast.models import LSTM, TFT

    common: dict[str, Any] = dict(
        h=config.max_horizon,
        input_size=config.input_size,
        hist_exog_list=hist,
        futr_exog_list=futr,
        scaler_type="identity",  # inputs are already scaled with training-window statistics
        loss=MSE(),
        max_steps=config.max_steps,
        learning_rate=config.learning_rate,
        val_check_steps=config.val_check_steps,
        early_stop_patience_steps=config.early_stop_patience,
        batch_size=config.batch_size,
        windows_batch_size=config.windows_batch_size,
        random_seed=config.seed,
        alias=kind,
        accelerator=device,
        devices=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
        enable_checkpointing=False,
        callbacks=callbacks,
    )
    if kind == "lstm":
        return LSTM(
            **common,
            encoder_hidden_size=config.lstm_hidden_size,
            decoder_hidden_size=config.lstm_hidden_size,
            encoder_n_layers=1,
        )
    if kind == "tft":
        return TFT(**common, hidden_size=config.tft_hidden_size, n_head=2, dropout=0.1)
    raise ValueError(f"unknown neural member {kind!r}")


def _frame(panel: pd.DataFrame, ids: np.ndarray, scaler: RobustScaler, y_sigma: float, futr: list[str]) -> pd.DataFrame:
    frame = scaler.transform(panel)
    frame.insert(0, "y", np.nan_to_num(panel["y"].to_numpy(dtype=np.float64) / y_sigma))
    frame.insert(0, "ds", panel["session"].to_numpy())
    frame.insert(0, "unique_id", ids)
    for column in futr:
        frame[column] = panel[column].to_numpy(dtype=np.float64)
    return frame.reset_index(drop=True)


def fit(
    kind: str, train: pd.DataFrame, config: ModelConfig, scaler: RobustScaler, y_sigma: float, device: str
) -> tuple[Any, dict[str, Any]]:
    """Fit one global model on the training rows; returns (NeuralForecast, facts for the record)."""
    import torch
    from neuralforecast import NeuralForecast

    _quiet()
    torch.set_num_threads(config.threads)
    futr = future_known_features()
    hist = list(scaler.center)
    frame = _frame(train, train["symbol"].to_numpy(), scaler, y_sigma, futr)
    plateau = _plateau_callback(config.lr_patience)
    model = build_model(kind, config, hist, futr, device, [plateau])
    nf = NeuralForecast(models=[model], freq=1)
    started = time.perf_counter()
    nf.fit(frame, val_size=config.early_stopping_sessions)
    facts = {
        "seconds": time.perf_counter() - started,
        "steps": plateau.steps,
        "lr_reductions": plateau.reductions,
        "best_val_loss": None if plateau.best == float("inf") else plateau.best,
        "series": int(frame["unique_id"].nunique()),
        "rows": len(frame),
    }
    return nf, facts


def predict(
    nf: Any, kind: str, panel: pd.DataFrame, origins: pd.DataFrame, config: ModelConfig, scaler: RobustScaler, y_sigma: float
) -> pd.DataFrame:
    """Cumulative h-day log-return forecasts: ``symbol, date`` + one column ``h<h>`` per horizon.

    ``origins``: rows of ``panel`` (symbol, date, session) to forecast from; each needs ``input_size``
    sessions of history in ``panel`` ending at the origin.
    """
    _quiet()
    futr = future_known_features()
    n = config.input_size
    windows, ids = _windows(panel, origins, n)
    ids_frame = _frame(windows, np.repeat(ids, n), scaler, y_sigma, futr)
    future = _future_calendar(origins, ids, config.max_horizon, futr)
    forecast = nf.predict(df=ids_frame, futr_df=future)
    forecast = forecast.sort_values(["unique_id", "ds"], kind="stable")
    steps = forecast[kind].to_numpy(dtype=np.float64).reshape(len(ids), config.max_horizon) * y_sigma
    order = forecast["unique_id"].to_numpy()[:: config.max_horizon]
    cumulative = np.cumsum(steps, axis=1)
    out = pd.DataFrame({"key": order})
    for h in config.horizons:
        out[f"h{h}"] = cumulative[:, h - 1]
    keys = pd.DataFrame({"key": ids, "symbol": origins["symbol"].to_numpy(), "date": origins["date"].to_numpy()})
    return keys.merge(out, on="key", how="left").drop(columns="key")


def _windows(panel: pd.DataFrame, origins: pd.DataFrame, n: int) -> tuple[pd.DataFrame, np.ndarray]:
    """The ``n`` sessions ending at each origin, stacked, and one id ``<symbol>|<session>`` per origin."""
    row_of = pd.Series(np.arange(len(panel)), index=pd.MultiIndex.from_arrays([panel["symbol"], panel["session"]]))
    end = row_of.reindex(pd.MultiIndex.from_arrays([origins["symbol"], origins["session"]])).to_numpy()
    if np.isnan(end).any():
        bad = origins.iloc[int(np.flatnonzero(np.isnan(end))[0])]
        raise ModelDataError(f"{bad['symbol']}: no row for origin {pd.Timestamp(bad['date']).date()}")
    end = end.astype(np.int64)
    symbol = panel["symbol"].to_numpy()
    start = end - (n - 1)
    first_usable = _first_usable_rows(panel)
    short = (start < 0) | (start < first_usable[np.clip(end, 0, None)])
    if short.any():
        bad = origins.iloc[int(np.flatnonzero(short)[0])]
        have = int(end[np.flatnonzero(short)[0]] - first_usable[end[np.flatnonzero(short)[0]]] + 1)
        raise ModelDataError(
            f"{bad['symbol']}: too little history at {pd.Timestamp(bad['date']).date()} "
            f"({max(have, 0)} usable sessions past the feature warm-up, the neural members need {n})"
        )
    rows = (start[:, None] + np.arange(n)[None, :]).ravel()
    assert (symbol[rows] == np.repeat(symbol[end], n)).all()
    ids = np.array([f"{s}|{q}" for s, q in zip(origins["symbol"], origins["session"])], dtype=object)
    return panel.iloc[rows].reset_index(drop=True), ids


def _first_usable_rows(panel: pd.DataFrame) -> np.ndarray:
    """Per row: the first row of its symbol past the warm-up (where every input is defined)."""
    usable = ~panel["warmup"].to_numpy(dtype=bool) & np.isfinite(panel["y"].to_numpy(dtype=np.float64))
    index = np.where(usable, np.arange(len(panel)), len(panel))
    symbol = panel["symbol"].to_numpy()
    starts = np.flatnonzero(np.r_[True, symbol[1:] != symbol[:-1]])
    first = np.minimum.reduceat(index, starts)
    counts = np.diff(np.r_[starts, len(panel)])
    return np.repeat(first, counts)


def _future_calendar(origins: pd.DataFrame, ids: np.ndarray, h: int, futr: list[str]) -> pd.DataFrame:
    """Future-known calendar features of the ``h`` sessions after each origin."""
    from ibf_core.features.calendar_features import calendar_table

    sessions = all_sessions()
    steps = origins["session"].to_numpy()[:, None] + np.arange(1, h + 1)[None, :]
    if steps.max() >= len(sessions):
        raise ModelDataError("the exchange calendar does not reach far enough ahead for the forecast horizon")
    flat = steps.ravel()
    unique, inverse = np.unique(flat, return_inverse=True)
    table = calendar_table(sessions[unique])
    future = pd.DataFrame({"unique_id": np.repeat(ids, h), "ds": flat})
    for column in futr:
        future[column] = table[column][inverse]
    return future


def save(nf: Any, path: Path) -> None:
    nf.save(path=str(path), save_dataset=False, overwrite=True)


def load(path: Path) -> Any:
    from neuralforecast import NeuralForecast

    _quiet()
    return NeuralForecast.load(path=str(path))
