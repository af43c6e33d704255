"""Train every member on data up to a cut-off, then calibrate the ensemble and intervals on a held-out window.

Session layout for cut-off c (H = max horizon, V = validation days)::

    ... training data ... | embargo (H) | validation origins (V) | last H sessions: their targets
                train_end                 v0 ............. c - H                          c

Every target used for fitting ends at ``train_end``; every validation target ends by ``c``; nothing after
``c`` is read (the panel is truncated first). Members are fitted once (no refit on the validation window),
so validation metrics, ensemble weights and interval quantiles are all out-of-sample for the saved model.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable

import numpy as np
import pandas as pd

from ibf_core.calendar import all_sessions
from ibf_core.models import ModelDataError
from ibf_core.models.bundle import ModelBundle
from ibf_core.models.config import ModelConfig, device_description
from ibf_core.models.dataset import RobustScaler, fingerprint, truncate
from ibf_core.models.members import bundle_members, member_class

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


def train_models(
    panel: pd.DataFrame,
    cutoff: dt.date,
    config: ModelConfig,
    device: str = "cpu",
    progress: Progress | None = None,
) -> ModelBundle:
    """Fit the members in ``config.members`` on ``panel`` rows up to ``cutoff``; see the module docstring."""
    from ibf_core.evaluation.metrics import member_metrics
    from ibf_core.features.pipeline import feature_columns
    from ibf_core.models import ensemble, gbdt
    from ibf_core.models.predict import forecast, point_forecasts

    say = progress or (lambda message: None)
    span = windows(cutoff, config)
    data = truncate(panel, span["cutoff"])
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
    train = train[~train["symbol"].isin(excluded)]
    facts: dict = {
        "device": device_description(device),
        "symbols": sorted(counts[counts >= need].index),
        "excluded_symbols": {s: f"{int(counts[s])} usable sessions < {need}" for s in excluded},
        "train_rows": len(train),
        "members": {},
    }
    facts["fingerprint"] = fingerprint(data, ["symbol", "date", "adj_close", *feature_columns()])

    scaled = any(member_class(m).scaled_inputs for m in config.members)
    scaler = RobustScaler.fit(train, list(config.neural_features)) if scaled else None
    y_sigma = float(np.nanstd(train["y"]))
    vol_fallback = float(np.nanmedian(train["vol"]))
    gbdt_features, dropped = gbdt.usable_features(train, feature_columns())
    facts["dropped_features"] = dropped
    bundle = ModelBundle(
        config=config,
        cutoff=span["cutoff"],
        train_end=span["train_end"],
        validation_start=span["validation_start"],
        validation_end=span["validation_end"],
        scaler=scaler,
        y_sigma=y_sigma,
        vol_fallback=vol_fallback,
        gbdt_features=gbdt_features,
        facts=facts,
    )
    bundle.up_rate = {str(h): float(np.nanmean(train[f"target_{h}"] > 0)) for h in config.horizons}

    started = time.perf_counter()
    inputs = bundle.inputs()
    for name in bundle_members(config):
        member = bundle.members[name] = member_class(name)(inputs)
        if member.trained:
            say(f"training {name} on {len(train):,} rows ({len(facts['symbols'])} symbols) on {facts['device']}")
            facts["members"][name] = member.fit(train, device)
    facts["training_seconds"] = time.perf_counter() - started

    # Validation: origins after the embargo whose every target is realized by the cut-off.
    say("validating members, choosing ensemble weights, calibrating intervals")
    valid_origins = usable(data)
    valid_origins = valid_origins[
        (valid_origins["date"] >= pd.Timestamp(span["validation_start"]))
        & (valid_origins["date"] <= pd.Timestamp(span["validation_end"]))
        & valid_origins["symbol"].isin(facts["symbols"])
    ]
    if valid_origins.empty:
        raise ModelDataError(f"no validation origins between {span['validation_start']} and {span['validation_end']}")
    # The members forecast the validation origins once; weights and quantiles are fitted on those forecasts.
    points = point_forecasts(bundle, data, valid_origins)
    long = forecast(bundle, data, valid_origins, with_intervals=False, points=points)
    realized = _realized(data, valid_origins, config.horizons)
    long = long.merge(realized, on=["symbol", "date", "horizon"], how="left")
    trained = list(config.members)
    for h in config.horizons:
        at_h = long[long["horizon"] == h]
        wide = at_h.pivot_table(index=["symbol", "date"], columns="member", values="pred").reset_index()
        wide = wide.merge(realized[realized["horizon"] == h], on=["symbol", "date"], how="left")
        bundle.ensemble[str(h)] = ensemble.choose_weights(wide, trained)
    long = forecast(bundle, data, valid_origins, with_intervals=False, points=points).merge(realized, on=["symbol", "date", "horizon"], how="left")
    scale_of = valid_origins.set_index(["symbol", "date"])["vol"]
    for (member, h), part in long.groupby(["member", "horizon"]):
        scale = ensemble.interval_scale(scale_of.reindex(pd.MultiIndex.from_frame(part[["symbol", "date"]])).to_numpy(), h, vol_fallback)
        bundle.conformal.setdefault(member, {})[str(h)] = ensemble.calibrate(part["realized"].to_numpy(), part["pred"].to_numpy(), scale)
    # Metrics of the calibrated forecasts on the same window (coverage is in-sample here by construction;
    # walk-forward evaluation measures it out of sample).
    long = forecast(bundle, data, valid_origins, points=points).merge(realized, on=["symbol", "date", "horizon"], how="left")
    for (h, member), part in long.groupby(["horizon", "member"], sort=True):
        metrics = member_metrics(part, int(h), p0=bundle.up_rate[str(h)])
        bundle.validation.append({"horizon": int(h), "member": member, **metrics})
    return bundle


def _realized(panel: pd.DataFrame, origins: pd.DataFrame, horizons: tuple[int, ...]) -> pd.DataFrame:
    """``symbol, date, horizon, realized`` (the h-day log return that followed each origin)."""
    frames = [
        pd.DataFrame({"symbol": origins["symbol"].to_numpy(), "date": origins["date"].to_numpy(), "horizon": h, "realized": origins[f"target_{h}"].to_numpy()})
        for h in horizons
    ]
    return pd.concat(frames, ignore_index=True)
