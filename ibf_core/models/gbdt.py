"""The GBDT members: global LightGBM regressors per horizon on every feature, predicting the h-day log return.

``gbdt``: one regressor per horizon on the raw features. Training rows are origins whose h-day target lies
inside the training window (purged at the window's end); the last ``early_stopping_sessions`` origins are the
early-stopping set, behind a purge of h sessions (``split_rows``). Every origin with a realized target is a
training row, also before a feature's warm-up ends: LightGBM routes missing values natively, and a listing
younger than the longest window is exactly what it meets at prediction time. Models are stored in LightGBM's
own text format (no pickle).

**Categoricals.** The columns of ``CATEGORICAL_FEATURES`` present among the features (sector / industry codes:
integer-valued floats up to 32749, NaN when unknown) are passed to LightGBM as ``categorical_feature``. LightGBM
accepts the raw codes from a float matrix, but warns about sparse values and stores a bitset up to the largest
code in every categorical split (a text model about 5x larger), so each column is first mapped to the dense
index of its code in the vocabulary seen in the training rows (``categories``, saved with the models:
``categories.json`` for ``gbdt``, inside ``rank.json`` for ``gbdt_rank``); a code unseen in training, or an
unknown one, is NaN: LightGBM's missing category (the "other" side of every categorical split). The text
model keeps the categorical splits, so a loaded booster routes them the same way. Without such columns the
parameters, the files and the models are exactly what they were before categoricals existed.

``gbdt_rank`` (the practice behind Qlib's published LightGBM benchmarks): every non-categorical feature is
replaced by its percentile rank among the symbols of the same session, mapped to [-0.5, 0.5] (NaN stays NaN;
one symbol that session: 0), and the label is the centred percentile rank of the h-day target that session.
Sessions where fewer than ``MIN_RANK_SYMBOLS`` symbols have a realized target cannot be ranked and are left
out of fitting. Early stopping (same windows as ``gbdt``) watches the mean per-session rank IC of the
early-stopping origins. The score is a cross-sectional ordering, not a return: it is centred per session (minus the
mean score of the symbols with a bar that session; one symbol alone scores 0) and mapped to an h-day log return
by ``scale_h x score``, where ``scale_h`` is the no-intercept OLS slope of the realized h-day return on the
centred in-sample score over the fitting rows (training window only; floored at 0). The forecast therefore sums to
zero across a session (no market component: it says which symbols beat the others, by how much in
return units); a horizon that cannot be ranked at all (fewer than ``MIN_RANK_SYMBOLS`` symbols) forecasts 0,
the random walk, and the fit's facts say why. Files: ``h<h>.txt`` (LightGBM text) and ``rank.json``
(scales, ranked columns, categorical vocabulary).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ibf_core.evaluation.metrics import mean_rank_ic
from ibf_core.models import ModelDataError
from ibf_core.models.config import CATEGORICAL_FEATURES, ModelConfig

# Heavy imports (lightgbm) stay inside the functions that need them: importing this module loads none of them.

MIN_RANK_SYMBOLS = 3  # symbols with a realized target a session needs before its targets can be ranked
RANK_FILE = "rank.json"
CATEGORIES_FILE = "categories.json"

Categories = dict[str, list[int]]  # categorical feature -> the codes seen in training (index = LightGBM category)


def categorical_columns(features: list[str]) -> list[str]:
    """The members' features that are categorical codes (``CATEGORICAL_FEATURES`` present among ``features``)."""
    return [f for f in features if f in CATEGORICAL_FEATURES]


def category_vocabulary(train: pd.DataFrame, features: list[str]) -> Categories:
    """Per categorical feature among ``features``: the sorted integer codes it takes in ``train``."""
    vocab: Categories = {}
    for column in categorical_columns(features):
        if column not in train:
            continue
        values = train[column].to_numpy(dtype=np.float64)
        codes = sorted({int(v) for v in values[np.isfinite(values)]})
        if codes:
            vocab[column] = codes
    return vocab


def matrix(frame: pd.DataFrame, features: list[str], categories: Categories | None = None) -> np.ndarray:
    """``frame[features]`` as float64, each categorical column as the index of its code (unseen or NaN: NaN)."""
    x = frame[features].to_numpy(dtype=np.float64)
    for column, codes in (categories or {}).items():
        j = features.index(column)
        lookup = pd.Index(np.asarray(codes, dtype=np.float64))
        at = lookup.get_indexer(x[:, j])
        x[:, j] = np.where(at >= 0, at, np.nan)
    return x


def params(config: ModelConfig, categorical: bool = False) -> dict[str, Any]:
    """LightGBM parameters of both GBDT members (the categorical ones only when categorical columns exist)."""
    out: dict[str, Any] = {
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
    if categorical:
        # few categories, each a whole symbol's history: split on a category only with enough rows behind it,
        # and shrink its leaf value towards the prior so one symbol's luck is not learned as its sector's
        out.update(
            min_data_per_group=config.gbdt_cat_min_group,
            cat_smooth=config.gbdt_cat_smooth,
            cat_l2=config.gbdt_cat_smooth,
            max_cat_threshold=16,
        )
    return out


def split_rows(rows: pd.DataFrame, config: ModelConfig, h: int) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """(fitting rows, early-stopping rows or None): the last ``early_stopping_sessions`` origins, after a purge of h."""
    last = rows["session"].max()
    split = last - config.early_stopping_sessions
    fit_rows = rows[rows["session"] <= split - h]
    stop_rows = rows[rows["session"] > split]
    if len(fit_rows) < 2 * config.gbdt_min_leaf or stop_rows.empty:
        return rows, None  # recorded: no early stopping at this horizon
    return fit_rows, stop_rows


def _dataset(x: np.ndarray, features: list[str], label: np.ndarray, reference: Any = None) -> Any:
    """A LightGBM Dataset of ``x`` (columns ``features``; categorical ones declared); ``reference``: an early-stopping set."""
    import lightgbm as lgb

    if reference is not None:
        return lgb.Dataset(x, label, reference=reference)
    cats = categorical_columns(features)
    extra = {"categorical_feature": cats} if cats else {}
    return lgb.Dataset(x, label, feature_name=features, free_raw_data=True, **extra)


def fit(
    train: pd.DataFrame, features: list[str], config: ModelConfig, categories: Categories | None = None
) -> tuple[dict[int, Any], dict[str, Any]]:
    """One booster per horizon; returns ({h: Booster}, facts). ``categories``: ``category_vocabulary(train, features)``."""
    import lightgbm as lgb

    cats = categorical_columns(features)
    settings = params(config, bool(cats))
    started = time.perf_counter()
    boosters: dict[int, Any] = {}
    rounds: dict[str, int] = {}
    stopped_early: dict[str, bool] = {}
    # The matrix once; each horizon takes its rows from it (slicing the training frame per horizon copied all of
    # its ~150 columns twice: 3 GB a horizon at 500 symbols x 10 years).
    x_all = matrix(train, features, categories)
    keys = train[["session", *(f"target_{h}" for h in config.horizons)]]
    for h in config.horizons:
        finite = np.isfinite(keys[f"target_{h}"].to_numpy(dtype=np.float64))
        rows = keys[finite]
        if len(rows) < 2 * config.gbdt_min_leaf:
            raise ModelDataError(
                f"too little history for horizon {h}: {len(rows)} training rows with a realized {h}-day return"
            )
        # Early-stopping origins sit after a purge of h sessions behind the fitting origins.
        fit_rows, stop_rows = split_rows(rows, config, h)
        stopped_early[str(h)] = stop_rows is not None
        at = np.flatnonzero(finite)
        fit_at = at[rows.index.isin(fit_rows.index)]
        data = _dataset(x_all[fit_at], features, fit_rows[f"target_{h}"].to_numpy())
        valid = []
        callbacks = []
        if stop_rows is not None:
            stop_at = at[rows.index.isin(stop_rows.index)]
            valid = [_dataset(x_all[stop_at], features, stop_rows[f"target_{h}"].to_numpy(), reference=data)]
            callbacks = [lgb.early_stopping(config.gbdt_early_stopping, verbose=False)]
        booster = lgb.train(settings, data, num_boost_round=config.gbdt_rounds, valid_sets=valid, callbacks=callbacks)
        boosters[h] = booster
        rounds[str(h)] = int(booster.best_iteration or booster.current_iteration())
    facts = {
        "seconds": time.perf_counter() - started,
        "rounds": rounds,
        "steps": sum(rounds.values()),
        "features": len(features),
        "early_stopping": stopped_early,
    }
    if cats:
        facts["categorical"] = {c: len((categories or {}).get(c, [])) for c in cats}
    return boosters, facts


def predict(boosters: dict[int, Any], rows: pd.DataFrame, features: list[str], categories: Categories | None = None) -> pd.DataFrame:
    """``h<h>`` columns, one per horizon, aligned with ``rows``."""
    x = matrix(rows, features, categories)
    return pd.DataFrame(
        {f"h{h}": booster.predict(x, num_iteration=booster.best_iteration or None) for h, booster in boosters.items()},
        index=rows.index,
    )


def save(boosters: dict[int, Any], folder: Path, categories: Categories | None = None) -> None:
    """LightGBM text models ``h<h>.txt``, plus ``categories.json`` when categorical columns were used."""
    folder.mkdir(parents=True, exist_ok=True)
    for h, booster in boosters.items():
        booster.save_model(str(folder / f"h{h}.txt"), num_iteration=booster.best_iteration or None)
    if categories:
        (folder / CATEGORIES_FILE).write_text(json.dumps(categories, indent=1))


def load(folder: Path, horizons: tuple[int, ...]) -> dict[int, Any]:
    import lightgbm as lgb

    return {h: lgb.Booster(model_file=str(folder / f"h{h}.txt")) for h in horizons}


def load_categories(folder: Path) -> Categories:
    """The categorical vocabulary saved with the models; empty without one (no categoricals, or saved before them)."""
    file = folder / CATEGORIES_FILE
    if not file.is_file():
        return {}
    return {str(k): [int(c) for c in v] for k, v in json.loads(file.read_text()).items()}


# --- gbdt_rank: the cross-sectional rank member ------------------------------------------------------------


def centred_rank(values: pd.DataFrame, sessions: np.ndarray) -> pd.DataFrame:
    """Per column: percentile rank among the rows of the same session, in [-0.5, 0.5] (NaN stays NaN, alone: 0)."""
    groups = values.groupby(sessions, sort=False)
    ranks = groups.rank(method="average")
    counts = groups.transform("count")
    out = (ranks - 1.0) / (counts - 1.0).where(counts > 1) - 0.5
    return out.where(~(counts == 1) | ranks.isna(), 0.0)


RANK_CHUNK_COLUMNS = 8


def rank_inputs(rows: pd.DataFrame, features: list[str], categories: Categories | None = None) -> np.ndarray:
    """``matrix(rows, features)`` with every non-categorical column rank-normalised within its session.

    Ranked a few columns at a time, in place: a whole-frame rank holds several float64 copies of the matrix
    (the values, the ranks, the counts, the result), 4 GB more at 500 symbols x 10 years."""
    cats = set(categorical_columns(features))
    x = matrix(rows, features, categories)
    sessions = rows["session"].to_numpy()
    ranked = [j for j, f in enumerate(features) if f not in cats]
    for first in range(0, len(ranked), RANK_CHUNK_COLUMNS):
        columns = ranked[first : first + RANK_CHUNK_COLUMNS]
        x[:, columns] = centred_rank(pd.DataFrame(x[:, columns]), sessions).to_numpy(dtype=np.float64)
    return x


def rank_label(rows: pd.DataFrame, h: int, min_symbols: int = MIN_RANK_SYMBOLS) -> np.ndarray:
    """The centred cross-sectional rank of ``target_<h>``; NaN where the session has fewer than ``min_symbols`` targets."""
    target = rows[[f"target_{h}"]].astype(np.float64)
    sessions = rows["session"].to_numpy()
    label = centred_rank(target, sessions).iloc[:, 0].to_numpy()
    counts = target.iloc[:, 0].groupby(sessions).transform("count").to_numpy()
    return np.where(counts >= min_symbols, label, np.nan)


def fit_rank(
    train: pd.DataFrame, features: list[str], config: ModelConfig, categories: Categories | None = None
) -> tuple[dict[int, Any], dict[int, float], dict[str, Any]]:
    """gbdt_rank: one booster per rankable horizon and its return scale; returns (boosters, scales, facts)."""
    import lightgbm as lgb

    cats = categorical_columns(features)
    settings = {**params(config, bool(cats)), "metric": "None"}
    started = time.perf_counter()
    x_all = rank_inputs(train, features, categories)
    keys = train[["session", *(f"target_{h}" for h in config.horizons)]]  # what a horizon's rows need beside x_all
    boosters: dict[int, Any] = {}
    scales: dict[int, float] = {}
    rounds: dict[str, int] = {}
    stopped_early: dict[str, bool] = {}
    stop_ic: dict[str, float | None] = {}
    unranked: dict[str, str] = {}
    for h in config.horizons:
        label_all = rank_label(train, h)
        keep = np.isfinite(label_all)
        rows = keys[keep]
        if len(rows) < 2 * config.gbdt_min_leaf:
            unranked[str(h)] = (
                f"{len(rows)} training rows on sessions with {MIN_RANK_SYMBOLS}+ symbols holding a realized {h}-day "
                f"return (< {2 * config.gbdt_min_leaf}): no cross-section to rank, the forecast is 0 (random walk)"
            )
            scales[h] = 0.0
            continue
        label = label_all[keep]
        fit_rows, stop_rows = split_rows(rows, config, h)
        at_fit = rows.index.isin(fit_rows.index)
        at = np.flatnonzero(keep)  # one copy of the rows a booster reads, not a copy of a copy
        x_fit = x_all[at[at_fit]]
        data = _dataset(x_fit, features, label[at_fit])
        valid, callbacks, feval = [], [], None
        if stop_rows is not None:
            at_stop = rows.index.isin(stop_rows.index)
            valid = [_dataset(x_all[at[at_stop]], features, label[at_stop], reference=data)]
            stop_sessions = stop_rows["session"].to_numpy()
            stop_label = label[at_stop]

            def feval(pred: np.ndarray, _data: Any, s=stop_sessions, y=stop_label) -> tuple[str, float, bool]:
                return "rank_ic", mean_rank_ic(pred, y, s), True

            callbacks = [lgb.early_stopping(config.gbdt_early_stopping, verbose=False)]
        stopped_early[str(h)] = stop_rows is not None
        booster = lgb.train(settings, data, num_boost_round=config.gbdt_rounds, valid_sets=valid, feval=feval, callbacks=callbacks)
        best = booster.best_iteration or None
        score = _centred(booster.predict(x_fit, num_iteration=best), fit_rows["session"].to_numpy())
        realized = fit_rows[f"target_{h}"].to_numpy(dtype=np.float64)
        denom = float(score @ score)
        scales[h] = max(float(score @ realized) / denom, 0.0) if denom > 0 else 0.0
        boosters[h] = booster
        rounds[str(h)] = int(best or booster.current_iteration())
        stop_ic[str(h)] = float(booster.best_score["valid_0"]["rank_ic"]) if stop_rows is not None else None
    facts = {
        "seconds": time.perf_counter() - started,
        "rounds": rounds,
        "steps": sum(rounds.values()),
        "features": len(features),
        "early_stopping": stopped_early,
        "early_stopping_rank_ic": stop_ic,
        "return_scale": {str(h): v for h, v in scales.items()},
        "unranked_horizons": unranked,
    }
    if cats:
        facts["categorical"] = {c: len((categories or {}).get(c, [])) for c in cats}
    return boosters, scales, facts


def predict_rank(
    boosters: dict[int, Any],
    scales: dict[int, float],
    panel: pd.DataFrame,
    origins: pd.DataFrame,
    features: list[str],
    horizons: tuple[int, ...],
    categories: Categories | None = None,
) -> pd.DataFrame:
    """h-day log returns ``scale_h x score`` aligned with ``origins``; ranks are over ``panel``'s rows of each origin's session.

    Ranking over every symbol with a bar that session (not only the origins asked for) makes a forecast
    independent of which other origins are requested; nothing of another session is read.
    """
    day = panel[panel["session"].isin(np.unique(origins["session"].to_numpy()))]
    x = rank_inputs(day, features, categories)
    index = pd.MultiIndex.from_arrays([day["symbol"].to_numpy(), day["session"].to_numpy()])
    at = index.get_indexer(pd.MultiIndex.from_arrays([origins["symbol"].to_numpy(), origins["session"].to_numpy()]))
    if (at < 0).any():
        raise ModelDataError("gbdt_rank: an origin is not a row of the panel it is forecast from")
    sessions = day["session"].to_numpy()
    out = {}
    for h in horizons:
        booster = boosters.get(h)
        if booster is None or scales.get(h, 0.0) == 0.0:
            out[f"h{h}"] = np.zeros(len(origins))
        else:
            score = _centred(booster.predict(x, num_iteration=booster.best_iteration or None), sessions)
            out[f"h{h}"] = scales[h] * score[at]
    return pd.DataFrame(out, index=origins.index)


def _centred(score: np.ndarray, sessions: np.ndarray) -> np.ndarray:
    """``score`` minus its session mean: a pure cross-sectional ordering (a session with one symbol: 0)."""
    codes = pd.factorize(sessions)[0]
    return score - (np.bincount(codes, score) / np.bincount(codes))[codes]


def save_rank(
    boosters: dict[int, Any], scales: dict[int, float], features: list[str], folder: Path, categories: Categories | None = None
) -> None:
    """LightGBM text models ``h<h>.txt`` plus ``rank.json`` (return scales, ranked columns, categorical vocabulary)."""
    save(boosters, folder)
    cats = set(categorical_columns(features))
    meta = {
        "scales": {str(h): float(v) for h, v in scales.items()},
        "boosters": sorted(int(h) for h in boosters),
        "min_symbols": MIN_RANK_SYMBOLS,
        "ranked": [f for f in features if f not in cats],
        "categories": categories or {},
    }
    (folder / RANK_FILE).write_text(json.dumps(meta, indent=1))


def load_rank(folder: Path) -> tuple[dict[int, Any], dict[int, float], Categories]:
    """(boosters, return scales, categorical vocabulary) saved by ``save_rank``."""
    import lightgbm as lgb

    meta = json.loads((folder / RANK_FILE).read_text())
    boosters = {h: lgb.Booster(model_file=str(folder / f"h{h}.txt")) for h in meta["boosters"]}
    categories = {str(k): [int(c) for c in v] for k, v in meta.get("categories", {}).items()}
    return boosters, {int(h): float(v) for h, v in meta["scales"].items()}, categories
