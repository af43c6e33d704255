"""Train every member on data up to a cut-off, then calibrate the ensemble and intervals on a held-out window.

Session layout for cut-off c (H = max horizon, V = validation days)::

    ... training data ... | embargo (H) | validation origins (V) | last H sessions: their targets
                train_end                 v0 ............. c - H                          c

Every target used for fitting ends at ``train_end``; every validation target ends by ``c``; nothing after
``c`` is read (the panel is truncated first). Members are fitted once (no refit on the validation window),
so validation metrics, ensemble weights and interval quantiles are all out-of-sample for the saved model.

Steps, each its own function: ``select`` (windows, usable rows, excluded symbols, the members' shared
``Inputs``), ``fit_members`` (every member of ``bundle_members(config)`` through the member protocol),
``calibrate`` (ensemble weights, then conformal quantiles) and ``validate`` (the metrics table).
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ibf_core.calendar import all_sessions
from ibf_core.models import ModelDataError
from ibf_core.models.bundle import ModelBundle
from ibf_core.models.config import ModelConfig, device_description
from ibf_core.models.dataset import RobustScaler, fingerprint, truncate
from ibf_core.models.members import Inputs, Member, bundle_members, member_class

Progress = Callable[[str], None]


def usable(panel: pd.DataFrame) -> pd.DataFrame:
    """Rows past the feature warm-up with a defined daily return."""
    return panel[~panel["warmup"].to_numpy(dtype=bool) & np.isfinite(panel["y"].to_numpy(dtype=np.float64))]


def windows(cutoff: dt.date, config: ModelConfig) -> dict[str, dt.date]:
    sessions = all_sessions()
    c = int(sessions.searchsorted(pd.Timestamp(cutoff), side="right")) - 1
    h, v = config.max_horizon, config.validation_sessions
    v0 = c - h - v + 1
    train_end = v0 - 1 - h
    if train_end < 0:
        raise ModelDataError("cut-off too early for the calendar")
    return {
        "cutoff": sessions[c].date(),
        "train_end": sessions[train_end].date(),
        "validation_start": sessions[v0].date(),
        "validation_end": sessions[c - h].date(),
    }


@dataclass(frozen=True)
class Selection:
    """What the select step fixed for one cut-off; every later step reads only this."""

    span: dict[str, dt.date]  # ``windows(cutoff, config)``
    data: pd.DataFrame  # the panel truncated at the cut-off: nothing after it is read
    train: pd.DataFrame  # usable training rows of the kept symbols
    symbols: list[str]
    excluded: dict[str, str]  # symbol -> why it is left out
    inputs: Inputs  # the members' shared configuration, scaler, target scale and features
    dropped_features: list[str]  # all-NaN in the training window
    vol_fallback: float  # training-window median volatility, for origins without a trailing one
    up_rate: dict[str, float]  # str(h) -> training share of positive h-day returns
    fingerprint: str

    @property
    def config(self) -> ModelConfig:
        return self.inputs.config


def training_rows(data: pd.DataFrame, span: dict[str, dt.date], config: ModelConfig) -> tuple[pd.DataFrame, list[str], dict[str, str]]:
    """(usable rows up to ``train_end`` of the symbols with enough of them, kept symbols, excluded -> reason)."""
    train = usable(truncate(data, span["train_end"]))
    need = config.input_size + config.max_horizon + config.early_stopping_sessions
    counts = train.groupby("symbol").size()
    if counts.empty or counts.max() < need:
        raise ModelDataError(
            f"too little history before {span['train_end']} (training end for cut-off {span['cutoff']}): "
            f"the longest symbol has {int(counts.max()) if len(counts) else 0} usable sessions, {need} needed "
            f"(input {config.input_size} + horizon {config.max_horizon} + early-stopping {config.early_stopping_sessions})"
        )
    excluded = sorted(counts[counts < need].index)
    reasons = {s: f"{int(counts[s])} usable sessions < {need}" for s in excluded}
    return train[~train["symbol"].isin(excluded)], sorted(counts[counts >= need].index), reasons


def member_inputs(train: pd.DataFrame, config: ModelConfig) -> tuple[Inputs, list[str]]:
    """The members' shared inputs fitted on the training rows, and the features left out (all NaN there)."""
    from ibf_core.features.pipeline import feature_columns
    from ibf_core.models import gbdt

    scaled = any(member_class(m).scaled_inputs for m in config.members)
    scaler = RobustScaler.fit(train, list(config.neural_features)) if scaled else None
    y_sigma = float(np.nanstd(train["y"]))
    features, dropped = gbdt.usable_features(train, feature_columns())
    return Inputs(config, scaler, y_sigma, features), dropped


def select(panel: pd.DataFrame, cutoff: dt.date, config: ModelConfig) -> Selection:
    """Windows for the cut-off, the training rows and symbols, and everything the members share."""
    from ibf_core.features.pipeline import feature_columns

    span = windows(cutoff, config)
    data = truncate(panel, span["cutoff"])
    train, symbols, excluded = training_rows(data, span, config)
    digest = fingerprint(data, ["symbol", "date", "adj_close", *feature_columns()])
    inputs, dropped = member_inputs(train, config)
    return Selection(
        span=span,
        data=data,
        train=train,
        symbols=symbols,
        excluded=excluded,
        inputs=inputs,
        dropped_features=dropped,
        vol_fallback=float(np.nanmedian(train["vol"])),
        up_rate={str(h): float(np.nanmean(train[f"target_{h}"] > 0)) for h in config.horizons},
        fingerprint=digest,
    )


def fit_members(selection: Selection, device: str = "cpu", progress: Progress | None = None) -> tuple[dict[str, Member], dict[str, dict[str, Any]]]:
    """Every member of the bundle, the trained ones fitted on the training rows; (members, facts of each fit)."""
    say = progress or (lambda message: None)
    train, members, facts = selection.train, {}, {}
    for name in bundle_members(selection.config):
        member = member_class(name)(selection.inputs)
        if member.trained:
            say(f"training {name} on {len(train):,} rows ({len(selection.symbols)} symbols) on {device_description(device)}")
            facts[name] = member.fit(train, device)
        members[name] = member
    return members, facts


def validation_origins(selection: Selection) -> pd.DataFrame:
    """Usable rows of the kept symbols from ``validation_start`` to ``validation_end``: every target realized by the cut-off."""
    rows = usable(selection.data)
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
        "dropped_features": selection.dropped_features,
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
) -> ModelBundle:
    """Fit the members in ``config.members`` on ``panel`` rows up to ``cutoff``; see the module docstring."""
    from ibf_core.models.predict import point_forecasts

    say = progress or (lambda message: None)
    selection = select(panel, cutoff, config)
    bundle = new_bundle(selection, device)
    started = time.perf_counter()
    bundle.members, bundle.facts["members"] = fit_members(selection, device, say)
    bundle.facts["training_seconds"] = time.perf_counter() - started
    say("validating members, choosing ensemble weights, calibrating intervals")
    origins = validation_origins(selection)
    # The members forecast the validation origins once; weights, quantiles and metrics all reuse them.
    points = point_forecasts(bundle, selection.data, origins)
    realized = _realized(origins, config.horizons)
    calibrate(bundle, selection.data, origins, points, realized)
    bundle.validation = validate(bundle, selection.data, origins, points, realized)
    return bundle


def calibrate(bundle: ModelBundle, data: pd.DataFrame, origins: pd.DataFrame, points: dict[str, pd.DataFrame], realized: pd.DataFrame) -> None:
    """Set the ensemble weights per horizon, then the conformal quantiles of every member and the ensemble."""
    bundle.ensemble = ensemble_weights(bundle, data, origins, points, realized)
    bundle.conformal = conformal_quantiles(bundle, data, origins, points, realized)


def ensemble_weights(
    bundle: ModelBundle, data: pd.DataFrame, origins: pd.DataFrame, points: dict[str, pd.DataFrame], realized: pd.DataFrame
) -> dict[str, dict[str, Any]]:
    """str(h) -> the weighting of the trained members chosen on the validation forecasts."""
    from ibf_core.models import ensemble
    from ibf_core.models.predict import forecast

    long = forecast(bundle, data, origins, with_intervals=False, points=points)
    choices = {}
    for h in bundle.config.horizons:
        wide = long[long["horizon"] == h].pivot_table(index=["symbol", "date"], columns="member", values="pred").reset_index()
        wide = wide.merge(realized[realized["horizon"] == h], on=["symbol", "date"], how="left")
        choices[str(h)] = ensemble.choose_weights(wide, list(bundle.config.members))
    return choices


def conformal_quantiles(
    bundle: ModelBundle, data: pd.DataFrame, origins: pd.DataFrame, points: dict[str, pd.DataFrame], realized: pd.DataFrame
) -> dict[str, dict[str, dict[str, float]]]:
    """member -> str(h) -> volatility-scaled conformal quantiles (the ensemble with ``bundle.ensemble``'s weights)."""
    from ibf_core.models import ensemble
    from ibf_core.models.predict import forecast

    long = forecast(bundle, data, origins, with_intervals=False, points=points).merge(realized, on=["symbol", "date", "horizon"], how="left")
    scale_of = origins.set_index(["symbol", "date"])["vol"]
    quantiles: dict[str, dict[str, dict[str, float]]] = {}
    for (member, h), part in long.groupby(["member", "horizon"]):
        vol = scale_of.reindex(pd.MultiIndex.from_frame(part[["symbol", "date"]])).to_numpy()
        scale = ensemble.interval_scale(vol, h, bundle.vol_fallback)
        quantiles.setdefault(member, {})[str(h)] = ensemble.calibrate(part["realized"].to_numpy(), part["pred"].to_numpy(), scale)
    return quantiles


def validate(
    bundle: ModelBundle, data: pd.DataFrame, origins: pd.DataFrame, points: dict[str, pd.DataFrame], realized: pd.DataFrame
) -> list[dict[str, Any]]:
    """One metrics row per (horizon, member) of the calibrated forecasts on the validation window.

    Coverage is in-sample here by construction (the quantiles came from the same window); walk-forward
    evaluation measures it out of sample.
    """
    from ibf_core.evaluation.metrics import member_metrics
    from ibf_core.models.predict import forecast

    long = forecast(bundle, data, origins, points=points).merge(realized, on=["symbol", "date", "horizon"], how="left")
    rows = []
    for (h, member), part in long.groupby(["horizon", "member"], sort=True):
        rows.append({"horizon": int(h), "member": member, **member_metrics(part, int(h), p0=bundle.up_rate[str(h)])})
    return rows


def _realized(origins: pd.DataFrame, horizons: tuple[int, ...]) -> pd.DataFrame:
    """``symbol, date, horizon, realized`` (the h-day log return that followed each origin)."""
    frames = [
        pd.DataFrame({"symbol": origins["symbol"].to_numpy(), "date": origins["date"].to_numpy(), "horizon": h, "realized": origins[f"target_{h}"].to_numpy()})
        for h in horizons
    ]
    return pd.concat(frames, ignore_index=True)
