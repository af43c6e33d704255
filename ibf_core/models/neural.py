"""The neural members: one global NeuralForecast LSTM or TFT across every symbol of the universe.

The network models the daily log return ``y`` (divided by its training-window standard deviation) and
forecasts ``max(horizons)`` sessions at once; the h-day return is the sum of the first h steps. Inputs:
historical exogenous features (robust-scaled with statistics of the training window only) and the
future-known calendar features as future exogenous inputs. Time stamps are NYSE session ordinals with ``freq=1``.

**Static covariates (TFT only).** The categorical codes of ``CATEGORICAL_FEATURES`` among the bundle's features
(sector, industry) enter TFT as one-hot static covariates (``stat_exog_list`` + a ``static_df`` with one row per
series): one column ``<feature>_<code>`` per code seen in the training rows; that vocabulary is saved next to the
model (``static.json``) and a code unseen in training, or an unknown one (NaN), is all zeros at prediction time.
A training series takes its symbol's code (the last known in the training rows, constant over a history); a
forecast series ``<symbol>|<session>`` takes the origin row's. The LSTM is left without static covariates: its
inputs stay what they were. Without categorical columns (or with every one NaN or constant) nothing changes, and
a bundle saved before static covariates existed has no ``static.json`` and is fed exactly as it was trained.

Inference for many (symbol, origin) pairs is one ``predict`` call: every pair becomes its own short series
``<symbol>|<session>`` holding the last ``input_size`` sessions up to the origin.

**Missing sessions and undefined inputs.** A step of a series is one NYSE session. A step is *observed* when
the symbol has a bar that session, its daily return ``y`` is a same-session return (``y`` is NULL across a gap:
a 2-session return is not a daily return) and every historical input is defined. Splitting the series at every
gap was rejected: a vendor missing a handful of sessions a year would leave no run of ``input_size`` + 20
sessions, and the neural members could never train or forecast. Instead:

* series sit on the NYSE session grid: a missing session is a step of its own, never skipped, so step k of a
  forecast is always k sessions ahead and calendar inputs line up;
* an unobserved step enters the network as zeros (the scaled training median and a zero return) together with
  the historical input ``observed`` = 0, so the network is told which steps are missing; it is
  ``available_mask`` = 0 for NeuralForecast, so it is never a training or early-stopping target;
* training windows and forecast origins need at least ``MIN_OBSERVED_SHARE`` of their ``input_size`` input steps
  observed; an origin with fewer (too young, behind a long gap, inputs still warming up) is not forecastable by
  the neural members: its forecast is NaN and the ensemble uses the other members there;
* leading steps before every selected input exists (each feature's own warm-up) are not part of a training
  series at all: nothing is back-filled.

Bundles trained before ``observed`` existed are fed exactly as they were trained (no ``observed`` input).
"""

from __future__ import annotations

import json
import logging
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ibf_core.calendar import all_sessions
from ibf_core.features.calendar_features import calendar_table
from ibf_core.models import ModelDataError, neural_script
from ibf_core.models.config import ModelConfig
from ibf_core.models.dataset import RobustScaler
from ibf_core.models.gbdt import category_vocabulary

# Heavy imports (lightning_utilities, neuralforecast, pytorch_lightning, talib, torch) stay inside the functions that
# need them: importing this module loads none of them.

OBSERVED = "observed"  # historical input: 1 on an observed step, 0 on a missing session or incomplete bar
MIN_OBSERVED_SHARE = 0.75  # of a window's input steps; NeuralForecast filters training windows the same way


def future_known_features() -> list[str]:
    from ibf_core.features.pipeline import FEATURES

    return [f.name for f in FEATURES if f.future_known]


def import_libraries() -> None:
    """Import NeuralForecast (with Lightning and torchmetrics) while ``transformers`` reads as not installed.

    Both treat transformers as optional (torchmetrics for BERTScore, NeuralForecast for TimeLLM) and import it when
    present; it is here as an alibi-detect dependency, and importing it cost about 2 s of CPU (11.7-13.6 s -> 9.9-11.0 s)
    in every process that trains or forecasts a neural member, for two models ibf never uses. It stays importable after this one import; a thread
    importing transformers during it would see ImportError (no ibf thread does: drift imports it in its own step).
    """
    if "neuralforecast" in sys.modules or "transformers" in sys.modules:
        return
    from lightning_utilities.core import imports as lightning_imports

    check = lightning_imports.RequirementCache._check_requirement

    def check_without_transformers(self) -> None:
        if (self.requirement or "").startswith("transformers"):
            self.available, self.message = False, "transformers is not imported with NeuralForecast (ibf_core.models.neural)"
            return
        check(self)

    lightning_imports.RequirementCache._check_requirement = check_without_transformers
    sys.modules["transformers"] = None  # type: ignore[assignment]  # `import transformers` raises ImportError
    try:
        import neuralforecast.models  # noqa: F401
    finally:
        if "transformers" in sys.modules and sys.modules["transformers"] is None:
            del sys.modules["transformers"]
        lightning_imports.RequirementCache._check_requirement = check


def _quiet() -> None:
    warnings.filterwarnings("ignore", module="pytorch_lightning")
    warnings.filterwarnings("ignore", module="lightning_fabric")
    for name in ("pytorch_lightning", "lightning_fabric", "lightning", "neuralforecast"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _plateau_callback(patience: int, factor: float = 0.5):
    """Halve the learning rate after ``patience`` validation checks without improvement (NeuralForecast's own
    scheduler is a fixed step decay; ReduceLROnPlateau needs a monitored metric Lightning only gives callbacks)."""
    import_libraries()
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


STATIC_FILE = "static.json"
STATIC_MEMBERS = ("tft",)  # neural members that take the one-hot categorical static covariates

Statics = dict[str, list[int]]  # categorical feature -> the codes seen in training (one-hot vocabulary)


def static_vocabulary(kind: str, train: pd.DataFrame, features: list[str]) -> Statics:
    """The one-hot vocabulary of ``kind``'s static covariates: codes of each categorical feature in ``train``."""
    return category_vocabulary(train, features) if kind in STATIC_MEMBERS else {}


def static_columns(statics: Statics) -> list[str]:
    """The one-hot static covariate names, ``<feature>_<code>``, in vocabulary order."""
    return [f"{column}_{code}" for column, codes in statics.items() for code in codes]


def static_frame(ids: np.ndarray, values: pd.DataFrame, statics: Statics) -> pd.DataFrame:
    """One row per series id: the one-hot codes of ``values`` (row i for ``ids[i]``; unseen or NaN codes: zeros)."""
    out = {"unique_id": ids}
    for column, codes in statics.items():
        have = values[column].to_numpy(dtype=np.float64) if column in values else np.full(len(values), np.nan)
        for code in codes:
            out[f"{column}_{code}"] = (have == code).astype(np.float64)
    return pd.DataFrame(out)


def _symbol_codes(train: pd.DataFrame, symbols: list[str], statics: Statics) -> pd.DataFrame:
    """Per training symbol: the last known code of each static covariate in ``train`` (NaN when none)."""
    columns = list(statics)
    last = train.dropna(subset=columns, how="all").groupby("symbol")[columns].last()
    return last.reindex(symbols)


def build_model(
    kind: str, config: ModelConfig, hist: list[str], futr: list[str], device: str, callbacks: list, stat: list[str] | None = None
):
    import_libraries()
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
        # windows with too few observed input steps are not trained on (the same rule as forecasting)
        training_data_availability_threshold=[MIN_OBSERVED_SHARE, 0.0],
    )
    if kind == "lstm":
        return LSTM(
            **common,
            encoder_hidden_size=config.lstm_hidden_size,
            decoder_hidden_size=config.lstm_hidden_size,
            encoder_n_layers=1,
        )
    if kind == "tft":
        extra = {"stat_exog_list": stat} if stat else {}
        return TFT(**common, hidden_size=config.tft_hidden_size, n_head=2, dropout=0.1, **extra)
    raise ValueError(f"unknown neural member {kind!r}")


def _frame(panel: pd.DataFrame, ids: np.ndarray, scaler: RobustScaler, y_sigma: float, futr: list[str], observed: bool) -> pd.DataFrame:
    """NeuralForecast's long frame of ``panel`` rows (missing sessions: rows with NaN values and no ``symbol``).

    ``observed``: add the ``observed`` input and ``available_mask`` (bundles trained before them get neither).
    """
    frame = scaler.transform(panel)
    frame.insert(0, "y", np.nan_to_num(panel["y"].to_numpy(dtype=np.float64) / y_sigma))
    frame.insert(0, "ds", panel["session"].to_numpy())
    frame.insert(0, "unique_id", ids)
    if observed:
        seen = observed_steps(panel, list(scaler.center)).astype(np.float64)
        frame[OBSERVED] = seen
        frame["available_mask"] = seen
    for column in futr:
        frame[column] = panel[column].to_numpy(dtype=np.float64)
    return frame.reset_index(drop=True)


def observed_steps(panel: pd.DataFrame, hist: list[str]) -> np.ndarray:
    """Per row: a bar with a same-session daily return and every historical input defined."""
    ok = np.isfinite(panel["y"].to_numpy(dtype=np.float64)) & panel["symbol"].notna().to_numpy()
    if hist:
        ok &= np.isfinite(panel[hist].to_numpy(dtype=np.float64)).all(axis=1)
    return ok


def input_columns(hist: list[str], futr: list[str]) -> list[str]:
    """The panel columns a neural member reads: the return ``y`` and its historical and future-known inputs."""
    return list(dict.fromkeys(["y", *hist, *futr]))


def on_session_grid(rows: pd.DataFrame, symbol_sessions: pd.DataFrame, futr: list[str], columns: list[str] | None = None) -> pd.DataFrame:
    """``symbol_sessions`` (``symbol_key, session``) filled with the matching ``rows`` (``symbol, session, ...``).

    A (key, session) without a row is a missing session: NaN values, no ``symbol``; its future-known
    calendar inputs are still filled (they are known for every session). ``columns``: the value columns to
    carry (default every column of ``rows``). Rows are gathered by position through a dense
    (symbol, session) -> row table, never a merge: a merge copies every column of the panel per step, which
    made a window cost ~4 KiB per step on a 150-column panel.
    """
    keys = symbol_sessions["symbol_key"].to_numpy()
    sessions = symbol_sessions["session"].to_numpy(dtype=np.int64)
    at = row_positions(rows, keys, sessions)
    hit = at >= 0
    take = np.where(hit, at, 0)
    wanted = [c for c in (list(rows.columns) if columns is None else columns) if c not in ("symbol", "session")]
    out: dict[str, Any] = {"symbol_key": keys, "session": sessions}
    symbols = rows["symbol"].to_numpy(dtype=object)[take]
    symbols[~hit] = None
    out["symbol"] = symbols
    for column in wanted:
        values = rows[column].to_numpy()
        if values.dtype.kind in "fiub":
            gathered = values[take].astype(np.float64)
            gathered[~hit] = np.nan
        else:
            gathered = values[take].astype(object)
            gathered[~hit] = None
        out[column] = gathered
    merged = pd.DataFrame(out)
    missing = ~hit
    if missing.any() and futr:
        table = calendar_table(all_sessions()[sessions[missing]])
        for column in futr:
            if column in merged:
                merged.loc[missing, column] = np.asarray(table[column], dtype=np.float64)
    return merged


def row_positions(rows: pd.DataFrame, symbols: np.ndarray, sessions: np.ndarray) -> np.ndarray:
    """Position in ``rows`` of each (symbol, session) bar, -1 where there is none (a dense lookup table)."""
    codes, names = pd.factorize(rows["symbol"].to_numpy(), sort=False)
    own = rows["session"].to_numpy(dtype=np.int64)
    if not len(own):
        return np.full(len(symbols), -1, dtype=np.int64)
    first, last = int(own.min()), int(own.max())
    table = np.full((len(names), last - first + 1), -1, dtype=np.int64)
    table[codes, own - first] = np.arange(len(rows))
    want = pd.Index(names).get_indexer(symbols)
    ok = (want >= 0) & (sessions >= first) & (sessions <= last)
    out = np.full(len(symbols), -1, dtype=np.int64)
    out[ok] = table[want[ok], sessions[ok] - first]
    return out


def training_series(
    train: pd.DataFrame, config: ModelConfig, hist: list[str], futr: list[str]
) -> tuple[pd.DataFrame, dict[str, str]]:
    """Each symbol's training rows on the session grid from its first row with every input defined.

    Returns (grid rows with ``symbol_key``, symbols left out -> why): a symbol needs ``input_size`` + the
    early-stopping sessions + 1 on the grid (NeuralForecast's minimum: one training window with a step to
    learn beyond its input, and the early-stopping tail). The window plan sizes the history so the longest
    symbol has complete windows (``NeuralMember.train_sessions``); shorter ones contribute what they have.
    """
    complete = np.isfinite(train[hist].to_numpy(dtype=np.float64)).all(axis=1) if hist else np.ones(len(train), bool)
    starts = train.loc[complete].groupby("symbol")["session"].min()
    ends = train.groupby("symbol")["session"].max()
    need = config.input_size + config.early_stopping_sessions + 1
    grids, excluded = [], {}
    for symbol in sorted(ends.index):
        if symbol not in starts.index:
            excluded[symbol] = "no session with every neural input defined"
            continue
        length = int(ends[symbol] - starts[symbol] + 1)
        if length < need:
            excluded[symbol] = f"{length} sessions with every neural input defined < {need} needed"
            continue
        grids.append(pd.DataFrame({"symbol_key": symbol, "session": np.arange(starts[symbol], ends[symbol] + 1)}))
    if not grids:
        return pd.DataFrame(), excluded
    grid = on_session_grid(train, pd.concat(grids, ignore_index=True), futr, input_columns(hist, futr))
    return grid, excluded


def fit(
    kind: str, train: pd.DataFrame, config: ModelConfig, scaler: RobustScaler, y_sigma: float, device: str, statics: Statics | None = None
) -> tuple[Any, dict[str, Any]]:
    """Fit one global model on the training rows; returns (NeuralForecast, facts for the record).

    ``statics``: the one-hot vocabulary of the static covariates (``static_vocabulary``); none when empty.
    """
    import_libraries()
    import torch
    from neuralforecast import NeuralForecast

    _quiet()
    torch.set_num_threads(config.threads)
    futr = future_known_features()
    hist = list(scaler.center)
    grid, excluded = training_series(train, config, hist, futr)
    if grid.empty:
        raise ModelDataError(
            f"{kind}: no symbol has {config.input_size + config.early_stopping_sessions + 1} "
            f"sessions with every neural input defined before the training end ({'; '.join(f'{s}: {r}' for s, r in excluded.items())})"
        )
    frame = _frame(grid, grid["symbol_key"].to_numpy(), scaler, y_sigma, futr, observed=True)
    plateau = _plateau_callback(config.lr_patience)
    statics = statics or {}
    model = build_model(kind, config, [*hist, OBSERVED], futr, device, [plateau], static_columns(statics))
    nf = NeuralForecast(models=[model], freq=1)
    static_df = None
    if statics:
        ids = np.array(sorted(frame["unique_id"].unique()), dtype=object)
        static_df = static_frame(ids, _symbol_codes(train, list(ids), statics), statics)
    started = time.perf_counter()
    nf.fit(frame, static_df=static_df, val_size=config.early_stopping_sessions)
    steps = len(frame)
    unobserved = int((frame[OBSERVED] == 0).sum())
    facts = {
        "seconds": time.perf_counter() - started,
        "steps": plateau.steps,
        "lr_reductions": plateau.reductions,
        "best_val_loss": None if plateau.best == float("inf") else plateau.best,
        "series": int(frame["unique_id"].nunique()),
        "rows": steps,
        "inputs": hist,
        # the record of what was masked: missing sessions, returns across a gap, undefined inputs
        "unobserved_steps": unobserved,
        "missing_sessions": int(grid["symbol"].isna().sum()),
        "excluded_symbols": excluded,
    }
    if statics:
        facts["static_covariates"] = {column: len(codes) for column, codes in statics.items()}
    return nf, facts


PREDICT_CHUNK_ORIGINS = 8192  # origins per NeuralForecast predict call: bounds its windows, whatever the universe
PREDICT_BATCH_SERIES = 1024  # windows per forward pass at inference (training batches are unchanged)


def predict(
    nf: Any,
    kind: str,
    panel: pd.DataFrame,
    origins: pd.DataFrame,
    config: ModelConfig,
    scaler: RobustScaler,
    y_sigma: float,
    statics: Statics | None = None,
) -> pd.DataFrame:
    """Cumulative h-day log-return forecasts: ``symbol, date`` + one column ``h<h>`` per horizon.

    ``origins``: rows of ``panel`` (symbol, date, session) to forecast from. An origin whose last
    ``input_size`` sessions hold too few observed steps (``forecastable``) gets NaN. ``statics``: the
    vocabulary the model was trained with (its static covariates come from each origin row).

    Memory is bounded by ``PREDICT_CHUNK_ORIGINS``, not by the universe: the origins are forecast in chunks,
    each chunk's windows gathered (only the columns the network reads) and forecast, then dropped.
    """
    _quiet()
    futr = future_known_features()
    hist = list(scaler.center)
    able = forecastable(panel, origins, config, hist)
    out = pd.DataFrame({"symbol": origins["symbol"].to_numpy(), "date": origins["date"].to_numpy()})
    cumulative = np.full((len(origins), config.max_horizon), np.nan)
    chosen = np.flatnonzero(able)
    for start in range(0, len(chosen), PREDICT_CHUNK_ORIGINS):
        part = chosen[start : start + PREDICT_CHUNK_ORIGINS]
        cumulative[part] = _predict_chunk(nf, kind, panel, origins.iloc[part], config, scaler, y_sigma, statics, futr)
    for h in config.horizons:
        out[f"h{h}"] = cumulative[:, h - 1]
    return out


def _predict_chunk(
    nf: Any, kind: str, panel: pd.DataFrame, chosen: pd.DataFrame, config: ModelConfig, scaler: RobustScaler,
    y_sigma: float, statics: Statics | None, futr: list[str],
) -> np.ndarray:
    """(origins x max_horizon) cumulative forecasts of forecastable origins, one ``predict`` call."""
    n = config.input_size
    scripted = isinstance(nf, neural_script.ScriptedNetwork)
    hist_list = nf.hist_exog if scripted else list(nf.models[0].hist_exog_list)
    with_observed = OBSERVED in hist_list
    windows, ids = _windows(panel, chosen, n, futr, input_columns(list(scaler.center), futr))
    ids_frame = _frame(windows, np.repeat(ids, n), scaler, y_sigma, futr, observed=with_observed)
    del windows
    future = _future_calendar(chosen, ids, config.max_horizon, futr)
    static = static_frame(ids, chosen, statics) if statics else None
    if scripted:
        arrays = _network_inputs(nf, ids_frame, future, static, len(ids), with_observed)
        steps = nf.forecast(ids, arrays, max(nf.valid_batch_size, PREDICT_BATCH_SERIES)).astype(np.float64) * y_sigma
        return np.cumsum(steps, axis=1)
    extra = {"static_df": static} if statics else {}
    model = nf.models[0]
    batch = model.valid_batch_size
    model.valid_batch_size = max(batch, PREDICT_BATCH_SERIES)  # one window per series: batch many of them
    try:
        forecast = nf.predict(df=ids_frame, futr_df=future, **extra)
    finally:
        model.valid_batch_size = batch
    forecast = forecast.sort_values(["unique_id", "ds"], kind="stable")
    steps = forecast[kind].to_numpy(dtype=np.float64).reshape(len(ids), config.max_horizon) * y_sigma
    order = forecast["unique_id"].to_numpy()[:: config.max_horizon]
    return pd.DataFrame(np.cumsum(steps, axis=1), index=order).reindex(ids).to_numpy()


def _network_inputs(
    net: neural_script.ScriptedNetwork, ids_frame: pd.DataFrame, future: pd.DataFrame, static: pd.DataFrame | None, count: int,
    with_observed: bool,
) -> dict[str, np.ndarray]:
    """The tensors NeuralForecast's dataset and windows give the network, as float32 arrays (one window per id)."""
    n, h = net.input_size, net.h

    def values(frame: pd.DataFrame, columns: list[str], steps: int) -> np.ndarray:
        return frame[columns].to_numpy(dtype=np.float64).astype(np.float32).reshape(count, steps, len(columns))

    arrays = {
        "insample_y": values(ids_frame, ["y"], n)[..., 0],
        "insample_mask": values(ids_frame, ["available_mask"], n)[..., 0] if with_observed else np.ones((count, n), np.float32),
        "hist_exog": values(ids_frame, net.hist_exog, n),
        "futr_exog": np.concatenate([values(ids_frame, net.futr_exog, n), values(future, net.futr_exog, h)], axis=1),
    }
    if net.stat_exog:
        arrays["stat_exog"] = static[net.stat_exog].to_numpy(dtype=np.float64).astype(np.float32)
    return arrays


def forecastable(panel: pd.DataFrame, origins: pd.DataFrame, config: ModelConfig, hist: list[str]) -> np.ndarray:
    """Per origin: at least ``MIN_OBSERVED_SHARE`` of its ``input_size`` input sessions are observed steps."""
    n = config.input_size
    seen = observed_steps(panel, hist)
    sessions = origins["session"].to_numpy(dtype=np.int64)[:, None] - np.arange(n - 1, -1, -1)[None, :]
    at = row_positions(panel, np.repeat(origins["symbol"].to_numpy(), n), sessions.ravel()).reshape(len(origins), n)
    observed = np.where(at >= 0, seen[np.clip(at, 0, None)], False)
    return observed.sum(axis=1) >= MIN_OBSERVED_SHARE * n


def _windows(
    panel: pd.DataFrame, origins: pd.DataFrame, n: int, futr: list[str], columns: list[str] | None = None
) -> tuple[pd.DataFrame, np.ndarray]:
    """The ``n`` sessions ending at each origin (missing sessions as empty steps), stacked, one id per origin."""
    ids = np.array([f"{s}|{q}" for s, q in zip(origins["symbol"], origins["session"])], dtype=object)
    sessions = origins["session"].to_numpy()[:, None] - np.arange(n - 1, -1, -1)[None, :]
    steps = pd.DataFrame({"symbol_key": np.repeat(origins["symbol"].to_numpy(), n), "session": sessions.ravel()})
    return on_session_grid(panel, steps, futr, columns), ids


def _future_calendar(origins: pd.DataFrame, ids: np.ndarray, h: int, futr: list[str]) -> pd.DataFrame:
    """Future-known calendar features of the ``h`` sessions after each origin."""
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


def save(nf: Any, path: Path, statics: Statics | None = None) -> None:
    """NeuralForecast's files, plus ``static.json`` (the one-hot vocabulary) when the model has static covariates,
    and the traced network (``neural_script``)."""
    nf.save(path=str(path), save_dataset=False, overwrite=True)
    if statics:
        (Path(path) / STATIC_FILE).write_text(json.dumps({"one_hot": statics}, indent=1))
    neural_script.export(nf, Path(path))


def load(path: Path) -> Any:
    import_libraries()
    from neuralforecast import NeuralForecast

    _quiet()
    return NeuralForecast.load(path=str(path))


def load_statics(path: Path) -> Statics:
    """The one-hot vocabulary saved with a model; empty for a model without static covariates (or saved before them)."""
    file = Path(path) / STATIC_FILE
    if not file.is_file():
        return {}
    return {str(k): [int(c) for c in v] for k, v in json.loads(file.read_text())["one_hot"].items()}
