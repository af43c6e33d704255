"""Train every member on data up to a cut-off, then calibrate the ensemble and intervals on a held-out window.

Session layout for cut-off c (H = max horizon, E = embargo, V = validation sessions)::

    ... training data ... | embargo (E) | validation origins (V) | last H sessions: their targets
                train_end                 v0 ............. c - H                          c

Every target used for fitting ends at ``train_end``; every validation target ends by ``c``; nothing after
``c`` is read (the panel is truncated first). Members are fitted once (no refit on the validation window),
so validation metrics, ensemble weights and interval quantiles are all out-of-sample for the saved model.

**Short histories.** The configured windows (E = H, V = ``validation_sessions``, the members' early-stopping
tail) need ``train_sessions`` of the most demanding member + E + V + H sessions. When the longest symbol's
history up to c is shorter, E, V and the early-stopping tail shrink together towards their minimums (E 0:
training targets already end at ``train_end``, so no validation target can overlap one; V 20: conformal
calibration needs 20 forecasts; early stopping one horizon), and the bundle's facts say so (``windows``).
A member that cannot train even then is left out with the reason; when no member can, the error names the
sessions needed and the longest history.

Steps, each its own function: ``select`` (windows, training rows, excluded symbols, the members' shared
``Inputs`` and the features each can use), ``fit_members`` (every member of ``bundle_members(config)`` through
the member protocol), ``calibrate`` (ensemble weights, then conformal quantiles) and ``validate`` (the metrics
table).
"""

from __future__ import annotations

import datetime as dt
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ibf_core.calendar import all_sessions
from ibf_core.evaluation.metrics import member_metrics
from ibf_core.features.pipeline import feature_columns
from ibf_core.models import ModelDataError, ensemble, footprint
from ibf_core.models.bundle import ModelBundle
from ibf_core.models.config import ModelConfig, device_description
from ibf_core.models.dataset import RobustScaler, fingerprint, missing_sessions, select_features, truncate
from ibf_core.models.importance import bundle_importance
from ibf_core.models.members import FactorMember, Inputs, Member, bundle_members, member_class
from ibf_core.models.phases import PhaseMeter
from ibf_core.models.predict import forecast, point_forecasts
from ibf_core.processes import available_memory_mib, rss_mib

Progress = Callable[[str], None]
MIN_EMBARGO_SESSIONS = 0
MIN_VALIDATION_SESSIONS = 20  # conformal calibration needs 20 validation forecasts


def usable(panel: pd.DataFrame) -> pd.DataFrame:
    """Rows a model may learn from or forecast from: every bar (each member judges its own inputs).

    GBDT reads NaN features natively; the neural members decide per window (``neural.forecastable``).
    """
    return panel


def windows(cutoff: dt.date, config: ModelConfig, embargo: int | None = None) -> dict[str, dt.date]:
    """The dates of the layout above (``embargo`` defaults to the longest horizon)."""
    sessions = all_sessions()
    c = int(sessions.searchsorted(pd.Timestamp(cutoff), side="right")) - 1
    h, v = config.max_horizon, config.validation_sessions
    e = h if embargo is None else embargo
    v0 = c - h - v + 1
    train_end = v0 - 1 - e
    if train_end < 0:
        raise ModelDataError("cut-off too early for the calendar")
    return {
        "cutoff": sessions[c].date(),
        "train_end": sessions[train_end].date(),
        "validation_start": sessions[v0].date(),
        "validation_end": sessions[c - h].date(),
    }


@dataclass(frozen=True)
class WindowPlan:
    """The window sizes one training uses (sessions), and why they differ from the configured ones."""

    embargo: int
    validation: int
    early_stopping: int
    members: tuple[str, ...]  # trained members that fit in the history
    left_out: dict[str, str] = field(default_factory=dict)  # member -> why it cannot train here
    note: str | None = None  # set when the windows were shrunk
    history: dict[str, Any] = field(default_factory=dict)  # longest symbol, its sessions, sessions needed

    def to_dict(self) -> dict[str, Any]:
        return {"embargo": self.embargo, "validation": self.validation, "early_stopping": self.early_stopping,
                "note": self.note, "members_left_out": self.left_out, **self.history}


def history_lengths(data: pd.DataFrame, cutoff: dt.date) -> pd.Series:
    """Per symbol: NYSE sessions from its first bar to the cut-off, inclusive (gaps do not shorten it)."""
    c = int(all_sessions().searchsorted(pd.Timestamp(cutoff), side="right")) - 1
    first = data.groupby("symbol")["session"].min()
    return (c - first + 1).astype(int).sort_values(ascending=False, kind="stable")


def _needs(config: ModelConfig, member: str, embargo: int, validation: int, early_stopping: int) -> int:
    """Sessions up to the cut-off that ``member`` needs with these windows."""
    sized = config.replace(early_stopping_sessions=early_stopping)
    return member_class(member).train_sessions(sized) + embargo + validation + config.max_horizon


def plan_windows(data: pd.DataFrame, cutoff: dt.date, config: ModelConfig) -> WindowPlan:
    """Window sizes for ``cutoff``: the configured ones, or shrunk to fit the longest history (see module doc)."""
    lengths = history_lengths(data, cutoff)
    if lengths.empty:
        raise ModelDataError(f"no bars up to the cut-off {cutoff}")
    symbol, have = str(lengths.index[0]), int(lengths.iloc[0])
    wanted = (config.max_horizon, config.validation_sessions, config.early_stopping_sessions)
    least = (MIN_EMBARGO_SESSIONS, min(MIN_VALIDATION_SESSIONS, wanted[1]), min(config.max_horizon, wanted[2]))
    shortest = {m: _needs(config, m, *least) for m in config.members}
    fits = tuple(m for m in config.members if shortest[m] <= have)
    left_out = {m: f"needs {shortest[m]} sessions of history, {symbol} has {have} (the longest)" for m in config.members if m not in fits}
    if not fits:
        need = min(shortest.values())
        raise ModelDataError(
            f"too little history for cut-off {cutoff}: training needs {need} sessions "
            f"({', '.join(f'{m} {n}' for m, n in shortest.items())}) with the shortest windows (embargo {least[0]}, "
            f"validation {least[1]}, early-stopping {least[2]} sessions), {symbol} has {have} (the longest history)"
        )
    full = max(_needs(config, m, *wanted) for m in fits)
    low = max(shortest[m] for m in fits)
    history = {"longest_symbol": symbol, "history_sessions": have, "configured_need": full, "minimum_need": low}
    if have >= full:
        return WindowPlan(*wanted, members=fits, left_out=left_out, history=history)
    share = (have - low) / (full - low)
    sizes = tuple(lo + math.floor(share * (w - lo)) for lo, w in zip(least, wanted))
    note = (
        f"history is short: {symbol} has {have} sessions up to {cutoff}, the configured windows need {full}; "
        f"embargo {wanted[0]}->{sizes[0]}, validation {wanted[1]}->{sizes[1]}, early-stopping {wanted[2]}->{sizes[2]} "
        f"sessions (minimum history {low})"
    )
    return WindowPlan(*sizes, members=fits, left_out=left_out, note=note, history=history)


@dataclass(frozen=True)
class Selection:
    """What the select step fixed for one cut-off; every later step reads only this."""

    span: dict[str, dt.date]  # ``windows(cutoff, config, plan.embargo)``
    plan: WindowPlan
    data: pd.DataFrame  # the panel truncated at the cut-off: nothing after it is read
    train: pd.DataFrame  # training rows (up to ``train_end``) of the kept symbols
    symbols: list[str]
    excluded: dict[str, str]  # symbol -> why it is left out
    inputs: Inputs  # the members' shared configuration (windows as planned), scaler, target scale and features
    left_out_features: dict[str, str]  # tabular feature -> why no member uses it
    neural_left_out: dict[str, str]  # configured neural input -> why it is not used
    vol_fallback: float  # training-window median volatility, for origins without a trailing one
    up_rate: dict[str, float]  # str(h) -> training share of positive h-day returns
    fingerprint: str

    @property
    def config(self) -> ModelConfig:
        return self.inputs.config

    @property
    def dropped_features(self) -> list[str]:
        return list(self.left_out_features)


def training_rows(data: pd.DataFrame, span: dict[str, dt.date], config: ModelConfig) -> tuple[pd.DataFrame, list[str], dict[str, str]]:
    """(rows up to ``train_end`` of the symbols with a realized target there, kept symbols, excluded -> reason)."""
    train = truncate(data, span["train_end"])
    targets = train[[f"target_{h}" for h in config.horizons]].to_numpy(dtype=np.float64)
    realized = pd.Series(np.isfinite(targets).any(axis=1), index=train.index).groupby(train["symbol"]).sum()
    kept = sorted(realized[realized > 0].index)
    excluded = {s: f"no origin with a realized target by {span['train_end']} (the training end)" for s in sorted(set(data["symbol"]) - set(kept))}
    if not kept:
        raise ModelDataError(f"no symbol has a realized target by {span['train_end']} (training end for cut-off {span['cutoff']})")
    return train[train["symbol"].isin(kept)], kept, excluded


def member_inputs(train: pd.DataFrame, config: ModelConfig) -> tuple[Inputs, dict[str, str], dict[str, str]]:
    """The members' shared inputs fitted on the training rows; (inputs, left-out features, left-out neural inputs)."""
    features, left_out = select_features(train, feature_columns())
    if not features:
        raise ModelDataError("every feature is NaN or constant in the training window: nothing to train on")
    scaled = any(member_class(m).scaled_inputs for m in config.members)
    neural_left_out: dict[str, str] = {}
    scaler = None
    if scaled:
        neural, neural_left_out = select_features(train, list(config.neural_features))
        scaler = RobustScaler.fit(train, neural)
    y_sigma = float(np.nanstd(train["y"]))
    return Inputs(config, scaler, y_sigma, features), left_out, neural_left_out


def select(panel: pd.DataFrame, cutoff: dt.date, config: ModelConfig) -> Selection:
    """Windows for the cut-off, the training rows and symbols, and everything the members share."""
    data = truncate(panel, cutoff)
    plan = plan_windows(data, cutoff, config)
    config = config.replace(members=list(plan.members), validation_sessions=plan.validation, early_stopping_sessions=plan.early_stopping)
    span = windows(cutoff, config, plan.embargo)
    train, symbols, excluded = training_rows(data, span, config)
    digest = fingerprint(data, ["symbol", "date", "adj_close", *feature_columns()])
    inputs, left_out, neural_left_out = member_inputs(train, config)
    return Selection(
        span=span,
        plan=plan,
        data=data,
        train=train,
        symbols=symbols,
        excluded=excluded,
        inputs=inputs,
        left_out_features=left_out,
        neural_left_out=neural_left_out,
        vol_fallback=float(np.nanmedian(train["vol"])),
        up_rate={str(h): _up_share(train[f"target_{h}"]) for h in config.horizons},
        fingerprint=digest,
    )


def _up_share(target: pd.Series) -> float:
    """Share of positive values among the realized targets (NULL targets are not down moves)."""
    values = target.to_numpy(dtype=np.float64)
    values = values[np.isfinite(values)]
    return float(np.mean(values > 0)) if len(values) else 0.5


def fit_members(
    selection: Selection, device: str = "cpu", progress: Progress | None = None, meter: PhaseMeter | None = None
) -> tuple[dict[str, Member], dict[str, dict[str, Any]]]:
    """Every member of the bundle, the trained ones fitted on the training rows; (members, facts of each fit)."""
    say = progress or (lambda message: None)
    meter = meter or PhaseMeter()
    train, members, facts = selection.train, {}, {}
    for name in bundle_members(selection.config):
        member = member_class(name)(selection.inputs)
        if member.trained:
            say(f"training {name} on {len(train):,} rows ({len(selection.symbols)} symbols) on {device_description(device)}")
            started = time.perf_counter()
            with meter.phase(f"fit {name}"):
                facts[name] = member.fit(train, device)
            # every fit is timed here (a member may record its own, finer, seconds): the registry logs them all
            facts[name].setdefault("seconds", round(time.perf_counter() - started, 3))
        members[name] = member
    return members, facts


def validation_origins(selection: Selection) -> pd.DataFrame:
    """Rows of the kept symbols from ``validation_start`` to ``validation_end``: every target realized by the cut-off."""
    rows = selection.data
    span = selection.span
    rows = rows[
        (rows["date"] >= pd.Timestamp(span["validation_start"]))
        & (rows["date"] <= pd.Timestamp(span["validation_end"]))
        & rows["symbol"].isin(selection.symbols)
    ]
    if rows.empty:
        raise ModelDataError(f"no validation origins between {span['validation_start']} and {span['validation_end']}")
    return rows


def new_bundle(selection: Selection, device: str) -> ModelBundle:
    """The bundle the steps fill: windows, shared inputs and the facts of the selection."""
    span, inputs = selection.span, selection.inputs
    facts: dict[str, Any] = {
        "device": device_description(device),
        "symbols": selection.symbols,
        "excluded_symbols": selection.excluded,
        "train_rows": len(selection.train),
        "members": {},
        "fingerprint": selection.fingerprint,
        "windows": selection.plan.to_dict(),
        "features_used": inputs.features,
        "features_left_out": selection.left_out_features,
        "dropped_features": selection.dropped_features,
        "neural_features_used": list(inputs.scaler.center) if inputs.scaler else [],
        "neural_features_left_out": selection.neural_left_out,
        # NYSE sessions without a bar inside each symbol's history up to the cut-off: their targets are NULL
        "missing_sessions": missing_sessions(selection.data),
    }
    return ModelBundle(
        config=inputs.config,
        cutoff=span["cutoff"],
        train_end=span["train_end"],
        validation_start=span["validation_start"],
        validation_end=span["validation_end"],
        scaler=inputs.scaler,
        y_sigma=inputs.y_sigma,
        vol_fallback=selection.vol_fallback,
        gbdt_features=inputs.features,
        up_rate=selection.up_rate,
        facts=facts,
    )


def train_models(
    panel: pd.DataFrame,
    cutoff: dt.date,
    config: ModelConfig,
    device: str = "cpu",
    progress: Progress | None = None,
    importance: bool = True,
    memory_budget_mib: float | None = None,
) -> ModelBundle:
    """Fit the members in ``config.members`` on ``panel`` rows up to ``cutoff``; see the module docstring.

    ``importance``: measure feature importance by group on the validation window afterwards
    (``bundle.facts["importance"]``, ``ibf_core.models.importance``); it changes no forecast.
    ``memory_budget_mib``: what the training may use at its peak (default: this process's RSS plus the memory
    the machine has available); a larger estimate (``footprint.estimate``) is refused before anything trains.
    """
    say = progress or (lambda message: None)
    footprint = check_footprint(panel, cutoff, config, memory_budget_mib)
    with PhaseMeter() as meter:
        with meter.phase("select"):
            selection = select(panel, cutoff, config)
        for line in [selection.plan.note, *(f"{m} left out: {why}" for m, why in selection.plan.left_out.items())]:
            if line:
                say(line)
        bundle = new_bundle(selection, device)
        started = time.perf_counter()
        bundle.members, bundle.facts["members"] = fit_members(selection, device, say, meter)
        bundle.facts["training_seconds"] = time.perf_counter() - started
        say("validating members, choosing ensemble weights, calibrating intervals")
        with meter.phase("validate"):
            origins = validation_origins(selection)
            # The members forecast the validation origins once; weights, quantiles and metrics all reuse them.
            points = point_forecasts(bundle, selection.data, origins)
            realized = _realized(origins, config.horizons)
            calibrate(bundle, selection.data, origins, points, realized)
            bundle.facts["too_few_independent_targets"] = short_horizons(bundle)
            bundle.validation = validate(bundle, selection.data, origins, points, realized)
            del points
        if importance:
            say("feature importance by group on the validation window (permutation, gain, TFT selection weights)")
            with meter.phase("importance"):
                bundle.facts["importance"] = measure_importance(bundle, selection.data, origins)
    # seconds and peak RSS of each phase (MiB): in bundle.json, the trained_models metadata and MLflow
    bundle.facts["resources"] = {**meter.facts(), "estimate_mib": {k: round(v, 1) for k, v in footprint.parts.items()}}
    return bundle


def check_footprint(panel: pd.DataFrame, cutoff: dt.date, config: ModelConfig, budget_mib: float | None = None):
    """The estimated peak of training ``config`` on ``panel`` up to ``cutoff``; raises ``TrainingMemoryError`` when it
    exceeds ``budget_mib`` (default: RSS now + available memory; no check where the platform cannot tell)."""
    rows = int((panel["date"] <= pd.Timestamp(cutoff)).sum()) if len(panel) else 0
    sessions = int(history_lengths(panel, cutoff).max()) if rows else 0
    estimate = footprint.estimate(rows, panel.shape[1], int(panel["symbol"].nunique()), sessions, config)
    if budget_mib is None:
        available, held = available_memory_mib(), rss_mib()
        budget_mib = None if available is None or held is None else available + held
    footprint.check(estimate, budget_mib, tuple(config.members))
    return estimate


def measure_importance(bundle: ModelBundle, data: pd.DataFrame, origins: pd.DataFrame) -> dict[str, Any]:
    """``importance.bundle_importance`` on the validation origins; a failure is recorded, never fatal to training."""
    try:
        return bundle_importance(bundle, data, origins)
    except Exception as exc:  # noqa: BLE001 - a diagnostic must not cost the trained model
        return {"unavailable": f"{type(exc).__name__}: {exc}"}


def calibrate(bundle: ModelBundle, data: pd.DataFrame, origins: pd.DataFrame, points: dict[str, pd.DataFrame], realized: pd.DataFrame) -> None:
    """Set the ensemble weights per horizon, then the conformal quantiles of every member and the ensemble."""
    bundle.ensemble = ensemble_weights(bundle, data, origins, points, realized)
    bundle.conformal = conformal_quantiles(bundle, data, origins, points, realized)


def ensemble_weights(
    bundle: ModelBundle, data: pd.DataFrame, origins: pd.DataFrame, points: dict[str, pd.DataFrame], realized: pd.DataFrame
) -> dict[str, dict[str, Any]]:
    """str(h) -> the weighting of the trained members chosen on the validation forecasts."""
    long = forecast(bundle, data, origins, with_intervals=False, points=points)
    prior = factor_evidence(bundle)
    choices = {}
    for h in bundle.config.horizons:
        # pivot, not pivot_table: a member with no forecast anywhere (NaN) keeps its column
        wide = long[long["horizon"] == h].pivot(index=["symbol", "date"], columns="member", values="pred").reset_index()
        wide = wide.merge(realized[realized["horizon"] == h], on=["symbol", "date"], how="left")
        choices[str(h)] = ensemble.choose_weights(wide, list(bundle.config.members), h, bundle.config.min_independent_targets, prior.get(str(h)))
    return choices


def short_horizons(bundle: ModelBundle) -> dict[str, str]:
    """str(h) -> why the validation window cannot judge that horizon (its fallbacks are served), for the training facts."""
    out = {}
    for h, choice in bundle.ensemble.items():
        evidence = choice.get("evidence") or {}
        n = evidence.get("independent_targets")
        if n is not None and n < bundle.config.min_independent_targets:
            out[h] = (f"{n:g} independent validation targets < {bundle.config.min_independent_targets}: the point forecast is the "
                      f"random walk and the ranking comes from {choice['ranking']['source']}")
    return out


def factor_evidence(bundle: ModelBundle) -> dict[str, dict[str, dict[str, Any]]]:
    """str(h) -> factor member -> its training-window rank IC ``{"mean", "t"}`` (the ranking's fallback evidence)."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for name, member in bundle.members.items():
        if isinstance(member, FactorMember):
            for h, ic in member.evidence.items():
                out.setdefault(str(h), {})[name] = ic
    return out


def conformal_quantiles(
    bundle: ModelBundle, data: pd.DataFrame, origins: pd.DataFrame, points: dict[str, pd.DataFrame], realized: pd.DataFrame
) -> dict[str, dict[str, dict[str, float]]]:
    """member -> str(h) -> volatility-scaled conformal quantiles (the ensemble with ``bundle.ensemble``'s weights)."""
    long = forecast(bundle, data, origins, with_intervals=False, points=points).merge(realized, on=["symbol", "date", "horizon"], how="left")
    scale_of = origins.set_index(["symbol", "date"])["vol"]
    quantiles: dict[str, dict[str, dict[str, float]]] = {}
    for (member, h), part in long.groupby(["member", "horizon"]):
        vol = scale_of.reindex(pd.MultiIndex.from_frame(part[["symbol", "date"]])).to_numpy()
        scale = ensemble.interval_scale(vol, h, bundle.vol_fallback)
        try:
            quantiles.setdefault(member, {})[str(h)] = ensemble.calibrate(part["realized"].to_numpy(), part["pred"].to_numpy(), scale)
        except ValueError as exc:
            if member == "ensemble" or member not in bundle.members or bundle.members[member].finite:
                raise ModelDataError(f"{member} at h={h}: {exc}") from None
            # a member that may forecast nothing (12-1 momentum on a year of history) has no interval there
            bundle.facts.setdefault("intervals_left_out", {}).setdefault(member, {})[str(h)] = str(exc)
    return quantiles


def validation_gaps(bundle: ModelBundle) -> tuple[dict[str, list[int]], dict[str, list[int]]]:
    """Members x horizons without finite validation metrics: (excused, unexplained). Excused: a member that may
    forecast nothing by design (``finite`` False: 12-1 momentum needs 253 sessions of history, a universe loaded
    with one year has none), recorded as such; any other gap is a failed training."""
    excused: dict[str, list[int]] = {}
    unexplained: dict[str, list[int]] = {}
    for row in bundle.validation:
        if all(row.get(k) is not None and np.isfinite(row[k]) for k in ("mae", "rel_mae_vs_naive")):
            continue
        member = row["member"]
        by_design = member in bundle.members and not bundle.members[member].finite
        (excused if by_design else unexplained).setdefault(member, []).append(int(row["horizon"]))
    return excused, unexplained


def validate(
    bundle: ModelBundle, data: pd.DataFrame, origins: pd.DataFrame, points: dict[str, pd.DataFrame], realized: pd.DataFrame
) -> list[dict[str, Any]]:
    """One metrics row per (horizon, member) of the calibrated forecasts on the validation window.

    Coverage is in-sample here by construction (the quantiles came from the same window); walk-forward
    evaluation measures it out of sample.
    """
    long = forecast(bundle, data, origins, points=points).merge(realized, on=["symbol", "date", "horizon"], how="left")
    rows = []
    for (h, member), part in long.groupby(["horizon", "member"], sort=True):
        rank_by = "rank_score" if member == "ensemble" else None  # the ensemble ranks by its own choice
        rows.append({"horizon": int(h), "member": member, **member_metrics(part, int(h), p0=bundle.up_rate[str(h)], rank_by=rank_by)})
    return rows


def _realized(origins: pd.DataFrame, horizons: tuple[int, ...]) -> pd.DataFrame:
    """``symbol, date, horizon, realized`` (the h-day log return that followed each origin)."""
    frames = [
        pd.DataFrame({"symbol": origins["symbol"].to_numpy(), "date": origins["date"].to_numpy(), "horizon": h, "realized": origins[f"target_{h}"].to_numpy()})
        for h in horizons
    ]
    return pd.concat(frames, ignore_index=True)
