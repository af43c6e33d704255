"""Feature importance by feature group, per member and horizon, measured on the bundle's own validation window.

Three measures, each stored in ``bundle.facts["importance"]`` (JSON) by ``train_models``:

``permutation``  ``{member: {str(h): {group: {rank_ic_drop, rank_ic_drop_std, mse_rise, mse_rise_std}}}}`` for
    every trained member and the ``ensemble``. The validation origins come after the fitted window (purge and
    embargo in between), so this is out of sample for the saved model. For one group, every column of the
    panel that is a registered feature of that group (``features.pipeline.FEATURES``; the group list is never
    hard-coded) and that the member reads is permuted *jointly* (one row permutation for all the group's
    columns) in the panel rows the members read: every symbol's rows from the longest look-back (the neural
    ``input_size``) before the first validation origin up to the last one. The permutation is **within each date, across symbols**
    (symbol A's row on date d receives symbol B's values of that date), which keeps each date's cross-section
    (the distribution Rank IC is measured on) and the time of every value; a column that is the same for
    every symbol on each date (the calendar, market-wide measures), which a within-date shuffle cannot
    change, has its *dates* permuted instead. Every member sees the permuted panel through its public
    ``predict(panel, origins)``: GBDT reads the permuted origin rows, the neural members read permuted input
    windows (each step of a window holds another symbol's values of that session; the robust scaling and the
    ``observed`` flag are recomputed from the permuted values, so NaNs move with their values). The future
    calendar of the neural members' forecast steps comes from the exchange calendar, not from the panel, and is
    never permuted. The ensemble combines the permuted member forecasts with the bundle's weights (one
    permutation for every member in a repeat). The score is the drop in mean per-date Spearman IC (forecast vs
    realized h-day return) and the rise in MSE against the unpermuted forecasts on the same origins; each
    group is permuted ``repeats`` times (seeded: the same permutation for a given seed, group and repeat) and
    the mean and std (ddof 1) are reported. Groups a member does not read are left out of its table.
``gain``  ``{member: {str(h): {group: share}}}``: LightGBM's total split gain of the group's features over all of
    the group's features' gain (shares sum to 1) for every member holding a ``boosters`` dict of LightGBM boosters.
``tft_vsn``  per TFT-like member (a NeuralForecast model with variable-selection networks, read through a forward
    hook during the unpermuted validation forecast): the ``historical``, ``future`` (and, with static covariates,
    ``static``) variable-selection weights averaged over every validation window and its time steps, summed by
    group (shares sum to 1 in each part), with the per-variable means under ``variables``. ``y`` (the target
    history) counts as ``returns``, the ``observed`` flag as ``other``, a one-hot static ``<feature>_<code>`` as its
    feature's group. When the weights cannot be read, ``{"unavailable": reason}``.

Nothing here changes a forecast: members only predict on copies of the panel.
"""

from __future__ import annotations

import math
import time
import zlib
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any, Self

import numpy as np
import pandas as pd

from ibf_core.evaluation.metrics import mean_rank_ic
from ibf_core.models.ensemble import combine, rank_score
from ibf_core.models.neural import future_known_features

# Heavy imports (talib) stay inside the functions that need them: importing this module loads none of them.

DEFAULT_REPEATS = 3  # permutations per group for cheap (tabular) members
NEURAL_REPEATS = 2  # per group for torch-backed members: each repeat is one NeuralForecast predict per group
DEFAULT_SEED = 0
DEFAULT_MAX_ORIGINS = 4_096  # validation origins permuted at most (whole dates, evenly spaced): the cost bound
STACK_ROWS = 250_000  # panel rows per neural predict call when permuted copies are stacked
STACK_ORIGINS = 8_192  # origins per stacked call: one chunk of ``neural.predict`` (its windows bound the memory)
KEY_COLUMNS = ("symbol", "date", "session", "y")  # what a neural member reads besides its input features
STACK_SEP = "~perm"
# TFT's variable-selection weights (``interpretability_params`` keys) -> the name of their part in the output
VSN_PARTS = {"history_vsn_wgts": "historical", "future_vsn_wgts": "future", "static_encoder_sparse_weights": "static"}
TARGET_GROUP = "returns"  # the neural members' own return history ``y``
OTHER_GROUP = "other"  # inputs that are no registered feature (the ``observed`` flag)
METHOD = (
    "joint permutation of a group's columns within each date across symbols (date-level columns: dates permuted) "
    "in the validation rows each member reads; rank_ic_drop = base - permuted mean per-date Spearman IC, "
    "mse_rise = permuted - base MSE; mean and std over repeats"
)


def input_feature(name: str) -> str:
    """The registered feature behind a model input name: itself, or ``<feature>`` of a one-hot ``<feature>_<code>``."""
    from ibf_core.features.pipeline import feature_by_name

    registry = feature_by_name()
    if name not in registry and "_" in name and name.rsplit("_", 1)[0] in registry:
        return name.rsplit("_", 1)[0]
    return name


def feature_group(name: str) -> str:
    """The registry group of a model input; ``y``/target history -> returns, anything else unregistered -> other."""
    from ibf_core.features.pipeline import feature_by_name

    found = feature_by_name().get(input_feature(name))
    if found is not None:
        return found.group
    if name in ("y", "observed_target", "repeated_target"):
        return TARGET_GROUP
    return OTHER_GROUP


def groups_of(columns: list[str]) -> dict[str, list[str]]:
    """Registry group -> the given columns that are registered features of it (registry order)."""
    from ibf_core.features.pipeline import features_by_group

    wanted = set(columns)
    out = {g: [c for c in names if c in wanted] for g, names in features_by_group().items()}
    return {g: names for g, names in out.items() if names}


def read_columns(member: Any, panel: pd.DataFrame) -> list[str]:
    """The panel feature columns ``member`` reads: its own ``importance_columns()``; for a NeuralForecast member the
    fitted network's historical, future and static inputs (one-hot statics by their feature); else its features."""
    from ibf_core.features.pipeline import feature_columns

    own = getattr(member, "importance_columns", None)
    nets = getattr(getattr(member, "model", None), "models", None)
    if callable(own):
        columns = list(own())
    elif nets and hasattr(nets[0], "hist_exog_list"):
        net = nets[0]
        names = [*net.hist_exog_list, *getattr(net, "futr_exog_list", []), *getattr(net, "stat_exog_list", [])]
        columns = [input_feature(n) for n in names]
    elif getattr(member, "scaled_inputs", False) and member.inputs.scaler is not None:
        columns = [*member.inputs.scaler.center, *future_known_features()]
    else:
        columns = list(member.inputs.features) or feature_columns()
    return [c for c in dict.fromkeys(columns) if c in panel.columns]


# ---------------------------------------------------------------- permutation


def _rng(seed: int, group: str, repeat: int) -> np.random.Generator:
    """The generator of one (group, repeat): independent of the order groups and members are visited in."""
    return np.random.default_rng([seed, zlib.crc32(group.encode()), repeat])


def date_level(frame: pd.DataFrame, columns: list[str], codes: np.ndarray) -> list[str]:
    """The ``columns`` whose values are the same for every symbol on each date (NaN ignored)."""
    out = []
    for column in columns:
        values = pd.Series(frame[column].to_numpy(dtype=np.float64))
        grouped = values.groupby(codes)
        spread = (grouped.max() - grouped.min()).fillna(0.0)
        if float(spread.abs().max() if len(spread) else 0.0) == 0.0:
            out.append(column)
    return out


def permute_group(frame: pd.DataFrame, columns: list[str], codes: np.ndarray, rng: np.random.Generator) -> pd.DataFrame:
    """A copy of ``frame`` with ``columns`` permuted jointly across rows within each date code; date-level
    columns (``date_level``) get a permutation of the dates instead."""
    out = frame.copy()
    flat = date_level(frame, columns, codes)
    cross = [c for c in columns if c not in flat]
    if cross:
        base = np.argsort(codes, kind="stable")
        shuffled = np.lexsort((rng.random(len(codes)), codes))  # by date, random order inside each date
        values = frame[cross].to_numpy(dtype=np.float64)
        moved = values.copy()
        moved[base] = values[shuffled]
        out[cross] = moved
    if flat:
        dates = int(codes.max()) + 1 if len(codes) else 0
        order = rng.permutation(dates)
        for column in flat:
            values = frame[column].to_numpy(dtype=np.float64)
            per_date = pd.Series(values).groupby(codes).first().reindex(range(dates)).to_numpy()
            out[column] = np.where(np.isfinite(values), per_date[order][codes], np.nan)
    return out


# ---------------------------------------------------------------- metrics


def mse(pred: np.ndarray, real: np.ndarray) -> float:
    """Mean squared error over the finite pairs (NaN when none)."""
    ok = np.isfinite(pred) & np.isfinite(real)
    return float(np.mean((pred[ok] - real[ok]) ** 2)) if ok.any() else float("nan")


def clean_number(value: float) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def _summary(drops: list[float], rises: list[float]) -> dict[str, float | None]:
    """Mean and std (ddof 1; 0 for one repeat) of the repeats' IC drops and MSE rises."""

    def stats(values: list[float]) -> tuple[float | None, float | None]:
        finite = np.array([v for v in values if math.isfinite(v)])
        if not len(finite):
            return None, None
        return float(finite.mean()), float(finite.std(ddof=1)) if len(finite) > 1 else 0.0

    drop, drop_std = stats(drops)
    rise, rise_std = stats(rises)
    return {"rank_ic_drop": drop, "rank_ic_drop_std": drop_std, "mse_rise": rise, "mse_rise_std": rise_std, "repeats": len(drops)}


# ---------------------------------------------------------------- the validation forecasts


class _Grid:
    """Dense ``dates x symbols`` layout of the origins, for per-date metrics without a groupby per call."""

    def __init__(self, origins: pd.DataFrame, horizons: tuple[int, ...]) -> None:
        self.di, dates = pd.factorize(origins["date"], sort=True)
        self.si, symbols = pd.factorize(origins["symbol"], sort=True)
        self.shape = (len(dates), len(symbols))
        self.realized = {h: self.dense(origins[f"target_{h}"].to_numpy(dtype=np.float64)) for h in horizons}

    def dense(self, values: np.ndarray) -> np.ndarray:
        out = np.full(self.shape, np.nan)
        out[self.di, self.si] = values
        return out


def _member_forecasts(member: Any, panel: pd.DataFrame, origins: pd.DataFrame, horizons: tuple[int, ...]) -> dict[int, np.ndarray]:
    """h -> the member's forecast per origin (NaN where it cannot forecast), as ``point_forecasts`` sets it."""
    frame = member.predict(panel, origins).reset_index(drop=True)
    able = np.asarray(member.forecastable(panel, origins), dtype=bool)
    return {h: np.where(able, frame[f"h{h}"].to_numpy(dtype=np.float64), np.nan) for h in horizons}


def _ensemble(
    forecasts: dict[str, dict[int, np.ndarray]], choice: dict[str, Any] | None, h: int, dates: np.ndarray
) -> tuple[np.ndarray, np.ndarray] | None:
    """(point forecast, ranking score) of the ensemble: its MSE is the point's, its rank IC the ranking's."""
    if choice is None or not set(choice["weights"]) <= set(forecasts):
        return None
    wide = pd.DataFrame({m: values[h] for m, values in forecasts.items()})
    point = combine(wide[list(choice["weights"])], choice)
    return point, (rank_score(wide, dates, choice["ranking"]) if "ranking" in choice else point)


def _reads_slice(bundle: Any, panel: pd.DataFrame, origins: pd.DataFrame, members: dict[str, Any]) -> pd.DataFrame:
    """The panel rows the members read for these origins: every symbol's rows (a cross-sectional member ranks over
    all symbols with a bar that session) from the longest look-back before the first origin to the last origin."""
    back = max((m.lookback_sessions(bundle.config) for m in members.values()), default=1) + 1
    sessions = origins["session"].to_numpy()
    return panel[panel["session"].between(int(sessions.min()) - back, int(sessions.max())).to_numpy()]


def permutation_importance(
    bundle: Any,
    panel: pd.DataFrame,
    origins: pd.DataFrame,
    repeats: int = DEFAULT_REPEATS,
    neural_repeats: int = NEURAL_REPEATS,
    seed: int = DEFAULT_SEED,
    hooks: dict[str, Callable[[], Any]] | None = None,
    max_origins: int = DEFAULT_MAX_ORIGINS,
) -> dict[str, Any]:
    """Permutation importance by group for every trained member and the ensemble (see the module docstring).

    ``origins``: rows of ``panel`` (the validation origins, with ``target_<h>``). ``hooks``: member -> a
    context-manager factory entered around that member's unpermuted forecast (used for the TFT weights).
    ``max_origins``: more validation origins than this are sampled by whole dates (``sample_dates``), for every
    member alike, and ``rows`` says so: a neural forecast costs ~0.2 ms (LSTM) to 2 ms (TFT) per origin on a
    CPU, and each group is forecast ``neural_repeats`` times. Returns ``{"permutation", "baseline", "groups",
    "repeats", "seconds", "rows"}``.
    """
    horizons = tuple(bundle.config.horizons)
    members = {n: m for n, m in bundle.members.items() if m.trained}
    if not panel.index.is_unique:
        raise ValueError("the panel index must be unique (origins are rows of it)")
    total = len(origins)
    origins = sample_dates(origins, max_origins)
    rows = _reads_slice(bundle, panel, origins, members)
    codes = pd.factorize(rows["date"], sort=True)[0]
    origins = rows.loc[origins.index]
    grid = _Grid(origins, horizons)
    dates = origins["date"].to_numpy()
    reads = {n: groups_of(read_columns(m, rows)) for n, m in members.items()}
    times = {n: repeats_for(m, repeats, neural_repeats) for n, m in members.items()}
    seconds = dict.fromkeys(members, 0.0)
    groups = list(dict.fromkeys(g for r in reads.values() for g in r))

    def shuffled(group: str, repeat: int) -> pd.DataFrame:
        return permute_group(rows, _columns(reads, group), codes, _rng(seed, group, repeat))

    base: dict[str, dict[int, np.ndarray]] = {}
    permuted: dict[tuple[str, int], dict[str, dict[int, np.ndarray]]] = {}
    for name, member in members.items():
        started = time.perf_counter()
        with (hooks or {}).get(name, nullcontext)():
            base[name] = _member_forecasts(member, rows, origins, horizons)
        todo = [(g, r) for g in groups if g in reads[name] for r in range(times[name])]
        if getattr(member, "neural", False):
            found = _stacked_forecasts(member, rows, origins, horizons, todo, shuffled)
        else:
            found = {}
            for g, r in todo:
                frame = shuffled(g, r)
                found[(g, r)] = _member_forecasts(member, frame, frame.loc[origins.index], horizons)
        for key, values in found.items():
            permuted.setdefault(key, {})[name] = values
        seconds[name] = time.perf_counter() - started

    scores: dict[str, dict[int, dict[str, tuple[list[float], list[float]]]]] = {}

    def score(name: str, h: int, group: str, changed: np.ndarray, unchanged: np.ndarray, orders: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        """``orders``: (changed, unchanged) rankings when they are not the forecasts themselves (the ensemble)."""
        real = grid.realized[h]
        p, b = grid.dense(changed), grid.dense(unchanged)
        ok = np.isfinite(p) & np.isfinite(b) & np.isfinite(real)
        p, b = np.where(ok, p, np.nan), np.where(ok, b, np.nan)
        rp, rb = (np.where(ok, grid.dense(orders[0]), np.nan), np.where(ok, grid.dense(orders[1]), np.nan)) if orders else (p, b)
        drops, rises = scores.setdefault(name, {}).setdefault(h, {}).setdefault(group, ([], []))
        drops.append(mean_rank_ic(rb, real) - mean_rank_ic(rp, real))
        rises.append(mse(p, real) - mse(b, real))

    ensemble_repeats = min(times.values(), default=0)
    for (group, repeat), by_member in permuted.items():
        for name, values in by_member.items():
            for h in horizons:
                score(name, h, group, values[h], base[name][h])
        if repeat < ensemble_repeats:
            # one permutation for every member; a member that does not read the group keeps its forecast
            every = {n: by_member.get(n, base[n]) for n in members}
            for h in horizons:
                choice = bundle.ensemble.get(str(h))
                changed, unchanged = _ensemble(every, choice, h, dates), _ensemble(base, choice, h, dates)
                if changed is not None and unchanged is not None:
                    score("ensemble", h, group, changed[0], unchanged[0], (changed[1], unchanged[1]))

    baseline = {}
    for name in [*members, "ensemble"]:
        for h in horizons:
            both = (base[name][h],) * 2 if name in base else _ensemble(base, bundle.ensemble.get(str(h)), h, dates)
            if both is None:
                continue
            dense = grid.dense(both[0])
            baseline.setdefault(name, {})[str(h)] = {
                "rank_ic": clean_number(mean_rank_ic(grid.dense(both[1]), grid.realized[h])),
                "mse": clean_number(mse(dense, grid.realized[h])),
                "n": int((np.isfinite(dense) & np.isfinite(grid.realized[h])).sum()),
            }
    order = {g: i for i, g in enumerate(groups)}
    permutation = {
        name: {str(h): {g: _summary(*by_group[g]) for g in sorted(by_group, key=order.get)} for h, by_group in sorted(by_h.items())}
        for name, by_h in scores.items()
    }
    read = {name: {g: len(cols) for g, cols in r.items()} for name, r in reads.items()}
    read["ensemble"] = {g: len(_columns(reads, g)) for g in groups}
    return {
        "permutation": permutation,
        "baseline": baseline,
        "groups": read,
        "repeats": {**times, "ensemble": ensemble_repeats},
        "seconds": {n: round(s, 3) for n, s in seconds.items()},
        "rows": {"origins": len(origins), "dates": grid.shape[0], "symbols": grid.shape[1], "panel_rows": len(rows),
                 "validation_origins": total, "sampled": len(origins) < total, "max_origins": max_origins},
    }


def sample_dates(origins: pd.DataFrame, max_origins: int) -> pd.DataFrame:
    """``origins`` when at most ``max_origins``; else the origins of whole dates evenly spaced over the window
    (every symbol of a kept date stays, so each date's cross-section, which rank IC is measured on, is intact)."""
    if len(origins) <= max_origins:
        return origins
    dates = np.sort(origins["date"].unique())
    keep = max(1, int(max_origins // (len(origins) / len(dates))))
    chosen = dates[np.unique(np.linspace(0, len(dates) - 1, min(keep, len(dates))).round().astype(int))]
    return origins[origins["date"].isin(chosen)]


def _stacked_forecasts(
    member: Any,
    rows: pd.DataFrame,
    origins: pd.DataFrame,
    horizons: tuple[int, ...],
    todo: list[tuple[str, int]],
    shuffled: Callable[[str, int], pd.DataFrame],
) -> dict[tuple[str, int], dict[int, np.ndarray]]:
    """A neural member's forecasts of every permuted panel in few ``predict`` calls.

    Each permuted copy of ``rows`` gets its own symbol names (``<symbol>~perm<i>``), so one call forecasts many
    copies: a neural member forecasts every (symbol, origin) window on its own (nothing is cross-sectional
    inside it), and each NeuralForecast predict call costs a trainer start-up. At most ``STACK_ROWS`` panel rows
    and ``STACK_ORIGINS`` origins per call, so memory follows one chunk of windows, not the universe.
    """
    at = rows.index.get_indexer(origins.index)
    # the permuted copies carry only the columns the member reads: the panel has ~150, a network ~25
    slim = list(dict.fromkeys(c for c in [*KEY_COLUMNS, *read_columns(member, rows)] if c in rows.columns))
    per_call = max(1, min(STACK_ROWS // max(len(rows), 1), STACK_ORIGINS // max(len(origins), 1)))
    out: dict[tuple[str, int], dict[int, np.ndarray]] = {}
    for start in range(0, len(todo), per_call):
        chunk = todo[start : start + per_call]
        frames = []
        for i, (g, r) in enumerate(chunk):
            frame = shuffled(g, r)[slim]
            frames.append(frame.assign(symbol=frame["symbol"].astype(str) + f"{STACK_SEP}{i}"))
        stacked = pd.concat(frames, ignore_index=True)
        del frames
        picks = np.concatenate([at + i * len(rows) for i in range(len(chunk))])
        values = _member_forecasts(member, stacked, stacked.iloc[picks], horizons)
        n = len(origins)
        for i, key in enumerate(chunk):
            out[key] = {h: values[h][i * n : (i + 1) * n] for h in horizons}
    return out


def _columns(reads: dict[str, dict[str, list[str]]], group: str) -> list[str]:
    """Every column of ``group`` any member reads (the ensemble's members see one joint permutation)."""
    return list(dict.fromkeys(c for r in reads.values() for c in r.get(group, [])))


def repeats_for(member: Any, repeats: int, neural_repeats: int) -> int:
    """Permutations per group for ``member``: fewer for a torch-backed one (each is a NeuralForecast predict)."""
    return min(repeats, neural_repeats) if getattr(member, "neural", False) else repeats


# ---------------------------------------------------------------- model-internal measures


def gain_by_group(bundle: Any) -> dict[str, dict[str, dict[str, float]]]:
    """member -> str(h) -> group -> share of LightGBM's total split gain, for members with LightGBM ``boosters``."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for name, member in bundle.members.items():
        boosters = getattr(member, "boosters", None)
        if not isinstance(boosters, dict):
            continue
        for h, booster in boosters.items():
            if not hasattr(booster, "feature_importance"):
                continue
            gains = booster.feature_importance(importance_type="gain")
            sums: dict[str, float] = {}
            for feature, gain in zip(booster.feature_name(), gains):
                group = feature_group(feature)
                sums[group] = sums.get(group, 0.0) + float(gain)
            total = sum(sums.values())
            out.setdefault(name, {})[str(h)] = {g: (v / total if total > 0 else 0.0) for g, v in sums.items()}
    return out


class VSNRecorder:
    """Accumulates a TFT's historical and future variable-selection weights over every forward pass (predict)."""

    def __init__(self, net: Any) -> None:
        self.net = net
        self.sums: dict[str, np.ndarray] = {}
        self.rows: dict[str, int] = {}
        self.windows = 0
        self.handle = None

    def __call__(self) -> Self:
        return self

    def __enter__(self) -> Self:
        self.handle = self.net.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.handle is not None:
            self.handle.remove()

    def _hook(self, module: Any, args: Any, output: Any) -> None:
        params = getattr(module, "interpretability_params", None) or {}
        for key in VSN_PARTS:
            weights = params.get(key)
            if weights is None or not hasattr(weights, "detach") or weights.dim() < 2:
                continue  # no static covariates: an empty list
            flat = weights.detach().double().reshape(-1, weights.shape[-1])  # windows (x time steps) x variables
            self.sums[key] = self.sums.get(key, 0.0) + flat.sum(dim=0).cpu().numpy()
            self.rows[key] = self.rows.get(key, 0) + int(flat.shape[0])
            if key == "history_vsn_wgts":
                self.windows += int(weights.shape[0])

    def result(self) -> dict[str, Any]:
        """Mean weights per variable and by group; ``unavailable`` with the reason when none were recorded."""
        net = self.net
        hist = list(getattr(net, "hist_exog_list", []))
        futr = list(getattr(net, "futr_exog_list", []))
        names = {
            # the order TFT.forward concatenates its historical inputs in
            "history_vsn_wgts": [*hist, *(futr or ["repeated_target"]), "observed_target"],
            "future_vsn_wgts": futr,
            "static_encoder_sparse_weights": list(getattr(net, "stat_exog_list", [])),
        }
        if "history_vsn_wgts" not in self.sums or not self.windows:
            return {"unavailable": "no variable-selection weights were recorded during the validation forecast"}
        out: dict[str, Any] = {"windows": self.windows, "variables": {}}
        for key, label in VSN_PARTS.items():
            if key not in self.sums:
                continue
            mean = np.asarray(self.sums[key], dtype=np.float64) / self.rows[key]
            if len(mean) != len(names[key]):
                return {"unavailable": f"{key} has {len(mean)} variables, the model lists {len(names[key])} ({names[key]})"}
            variables = {("y" if n == "observed_target" else n): float(v) for n, v in zip(names[key], mean)}
            by_group: dict[str, float] = {}
            for variable, weight in variables.items():
                by_group[feature_group(variable)] = by_group.get(feature_group(variable), 0.0) + weight
            out[label] = by_group
            out["variables"][label] = variables
        return out


def vsn_net(member: Any) -> Any | None:
    """The TFT network of a NeuralForecast member (a model with variable-selection weights), else None."""
    model = getattr(member, "model", None)
    nets = getattr(model, "models", None)
    if not nets:
        return None
    net = nets[0]
    if hasattr(net, "feature_importances") and hasattr(net, "interpretability_params") and hasattr(net, "register_forward_hook"):
        return net
    return None


# ---------------------------------------------------------------- everything, for a bundle


def bundle_importance(
    bundle: Any,
    panel: pd.DataFrame,
    origins: pd.DataFrame,
    repeats: int = DEFAULT_REPEATS,
    neural_repeats: int = NEURAL_REPEATS,
    seed: int = DEFAULT_SEED,
    max_origins: int | None = None,
) -> dict[str, Any]:
    """``permutation``, ``gain`` and ``tft_vsn`` for a trained bundle on its validation ``origins`` (rows of ``panel``).

    ``max_origins``: the bound of ``permutation_importance`` (default: the bundle config's ``importance_max_origins``).
    """
    if max_origins is None:
        max_origins = int(getattr(bundle.config, "importance_max_origins", DEFAULT_MAX_ORIGINS))
    started = time.perf_counter()
    recorders: dict[str, VSNRecorder] = {}
    tft_vsn: dict[str, Any] = {}
    for name, member in bundle.members.items():
        if not member.trained:
            continue
        net = vsn_net(member)
        if net is not None:
            recorders[name] = VSNRecorder(net)
        elif name == "tft":
            tft_vsn[name] = {"unavailable": "the member's NeuralForecast model exposes no variable-selection weights (feature_importances)"}
    result = permutation_importance(bundle, panel, origins, repeats, neural_repeats, seed, hooks=dict(recorders), max_origins=max_origins)
    for name, recorder in recorders.items():
        tft_vsn[name] = recorder.result()
    return {
        "method": METHOD,
        "seed": seed,
        "window": {"start": str(bundle.validation_start), "end": str(bundle.validation_end)},
        **result,
        "gain": gain_by_group(bundle),
        "tft_vsn": tft_vsn,
        "total_seconds": round(time.perf_counter() - started, 3),
    }
