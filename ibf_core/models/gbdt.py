"""The GBDT member: one global LightGBM regressor per horizon on every feature, predicting the h-day log return.

Training rows are origins whose h-day target lies inside the training window (purged at the window's end);
the last ``early_stopping_sessions`` origins are the early-stopping set. Every origin with a realized target
is a training row, also before a feature's warm-up ends: LightGBM routes missing values natively, and a
listing younger than the longest window is exactly what it meets at prediction time. Models are stored in
LightGBM's own text format (no pickle).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ibf_core.models import ModelDataError
from ibf_core.models.config import ModelConfig


def fit(train: pd.DataFrame, features: list[str], config: ModelConfig) -> tuple[dict[int, Any], dict[str, Any]]:
    """One booster per horizon; returns ({h: Booster}, facts)."""
    import lightgbm as lgb

    params = {
        "objective": "l2",
        "learning_rate": config.gbdt_learning_rate,
        "num_leaves": config.gbdt_leaves,
        "min_data_in_leaf": config.gbdt_min_leaf,
        "feature_fraction": 0.8,
        "bagging_fraction": 0.8,
        "bagging_freq": 1,
        "lambda_l2": 1.0,
        "seed": config.seed,
        "deterministic": True,
        "force_row_wise": True,
        "num_threads": config.threads,
        "verbosity": -1,
    }
    started = time.perf_counter()
    boosters: dict[int, Any] = {}
    rounds: dict[str, int] = {}
    stopped_early: dict[str, bool] = {}
    for h in config.horizons:
        rows = train[np.isfinite(train[f"target_{h}"].to_numpy(dtype=np.float64))]
        if len(rows) < 2 * config.gbdt_min_leaf:
            raise ModelDataError(
                f"too little history for horizon {h}: {len(rows)} training rows with a realized {h}-day return"
            )
        # Early-stopping origins sit after a purge of h sessions behind the fitting origins.
        last = rows["session"].max()
        split = last - config.early_stopping_sessions
        fit_rows = rows[rows["session"] <= split - h]
        stop_rows = rows[rows["session"] > split]
        if len(fit_rows) < 2 * config.gbdt_min_leaf or stop_rows.empty:
            fit_rows, stop_rows = rows, None  # recorded: no early stopping at this horizon
        stopped_early[str(h)] = stop_rows is not None
        data = lgb.Dataset(fit_rows[features].to_numpy(dtype=np.float64), fit_rows[f"target_{h}"].to_numpy(), feature_name=features, free_raw_data=True)
        valid = []
        callbacks = []
        if stop_rows is not None:
            valid = [lgb.Dataset(stop_rows[features].to_numpy(dtype=np.float64), stop_rows[f"target_{h}"].to_numpy(), reference=data)]
            callbacks = [lgb.early_stopping(config.gbdt_early_stopping, verbose=False)]
        booster = lgb.train(params, data, num_boost_round=config.gbdt_rounds, valid_sets=valid, callbacks=callbacks)
        boosters[h] = booster
        rounds[str(h)] = int(booster.best_iteration or booster.current_iteration())
    facts = {
        "seconds": time.perf_counter() - started,
        "rounds": rounds,
        "steps": sum(rounds.values()),
        "features": len(features),
        "early_stopping": stopped_early,
    }
    return boosters, facts


def predict(boosters: dict[int, Any], rows: pd.DataFrame, features: list[str]) -> pd.DataFrame:
    """``h<h>`` columns, one per horizon, aligned with ``rows``."""
    x = rows[features].to_numpy(dtype=np.float64)
    return pd.DataFrame(
        {f"h{h}": booster.predict(x, num_iteration=booster.best_iteration or None) for h, booster in boosters.items()},
        index=rows.index,
    )


def save(boosters: dict[int, Any], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for h, booster in boosters.items():
        booster.save_model(str(folder / f"h{h}.txt"), num_iteration=booster.best_iteration or None)


def load(folder: Path, horizons: tuple[int, ...]) -> dict[int, Any]:
    import lightgbm as lgb

    return {h: lgb.Booster(model_file=str(folder / f"h{h}.txt")) for h in horizons}
