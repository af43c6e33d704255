"""``drift_scores``: data drift of recent features against the model's training reference, rolling forecast
performance and a residual CUSUM, per symbol and session, with the checks that raise alerts and demand retrains."""

import datetime as dt
import time

import dagster as dg
import numpy as np
import pandas as pd

from ibf_core.calendar import all_sessions
from ibf_core.monitoring import DriftPolicy
from ibf_core.settings import Settings
from ibf_core.features.table import features_spec
from ibf_core.storage.tables import DRIFT_SCORES, MARKET_BARS, PREDICTIONS
from ibf_dagster.assets.features import lookback_start
from ibf_dagster.metadata import OWNERS, column_schema, plot_if_small
from ibf_dagster.partitions import context_rectangles, require_upstream, symbol_date_partitions
from ibf_dagster.resources import WarehouseResource

ERROR, WARN = dg.AssetCheckSeverity.ERROR, dg.AssetCheckSeverity.WARN
RETRAIN_CHECK = "retrain_rule"


def build_drift_scores(settings: Settings) -> dg.AssetsDefinition:
    spec = DRIFT_SCORES
    policy = DriftPolicy.from_settings(settings)

    @dg.asset(
        name=spec.name,
        description=(
            "Per symbol and session: KS and CVM per feature (Bonferroni), PSI per feature and a multivariate MMD "
            "(alibi-detect, PyTorch) of the last sessions' features against the model's training reference; "
            "rolling MAE, MAPE, RMSE, MASE vs the random walk, directional accuracy, pooled rank IC and interval "
            "coverage of matured forecasts; a CUSUM on standardized forecast residuals."
        ),
        partitions_def=symbol_date_partitions(settings),
        backfill_policy=dg.BackfillPolicy.single_run(),
        deps=["predictions", "features", "market_bars"],
        pool="duckdb",
        kinds={"duckdb", "parquet", "pytorch"},
        owners=OWNERS,
        tags={"layer": "monitoring", "domain": "drift"},
        group_name="monitoring",
        metadata={"dagster/column_schema": column_schema(spec), "dagster/table_name": spec.name},
        check_specs=[
            dg.AssetCheckSpec("single_breaches", asset=spec.name, description="No detector fired (WARN)"),
            dg.AssetCheckSpec(
                RETRAIN_CHECK,
                asset=spec.name,
                description=(
                    f"ERROR when a retrain is due: MASE above {policy.mase_threshold} on {policy.consecutive} consecutive "
                    f"evaluations within {policy.lookback_days} days, MMD p-values rejected by Benjamini-Hochberg over the "
                    f"universe at {policy.mmd_alpha}, or interval coverage off by more than {policy.coverage_tolerance:.0%} on "
                    f"{policy.consecutive} consecutive evaluations. Watched by the retrain_on_drift sensor."
                ),
            ),
        ],
        automation_condition=dg.AutomationCondition.eager(),
    )
    def drift_scores(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
        from ibf_core.monitoring import retrain_decision

        require_upstream(context, dg.AssetKey("predictions"))
        store = warehouse.get()
        universe = store.symbols(features_spec())
        started = time.perf_counter()
        frames = []
        for rect in context_rectangles(context, settings):
            frame = score_rectangle(store, settings, policy, universe, rect.symbols, rect.start, rect.end)
            store.replace_slice(spec, frame, rect.symbols, rect.start, rect.end)
            frames.append(frame)
        frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=spec.column_names)
        seconds = time.perf_counter() - started
        as_of = pd.to_datetime(frame["date"]).max() if len(frame) else None
        checks = []
        fired = frame[frame["breached"].astype(bool)] if len(frame) else frame
        checks.append(
            dg.AssetCheckResult(
                check_name="single_breaches",
                passed=fired.empty,
                severity=WARN,
                metadata={
                    "breaches": len(fired),
                    "by_detector": dg.MetadataValue.json(fired.groupby("detector").size().to_dict() if len(fired) else {}),
                    "skipped_rows": int(frame["skipped_reason"].notna().sum()) if len(frame) else 0,
                },
            )
        )
        if as_of is None:
            decision = {"retrain": False, "reasons": ["no drift rows in this run"], "episode_start": None}
        else:
            history = store.read(spec, universe, (as_of - pd.Timedelta(days=policy.lookback_days)).date(), as_of.date())
            decision = retrain_decision(history, as_of, policy)
        checks.append(
            dg.AssetCheckResult(
                check_name=RETRAIN_CHECK,
                passed=not decision["retrain"],
                severity=ERROR,
                metadata={
                    "as_of": str(as_of.date()) if as_of is not None else "",
                    "episode_start": decision["episode_start"] or "",
                    "reasons": dg.MetadataValue.json(decision["reasons"]),
                },
                description="; ".join(decision["reasons"]) or "no retrain due",
            )
        )
        return dg.MaterializeResult(
            metadata={
                "dagster/row_count": len(frame),
                "seconds": round(seconds, 2),
                "detectors": dg.MetadataValue.json(sorted(frame["detector"].unique().tolist()) if len(frame) else []),
                "drift_chart": plot_if_small(context, lambda: _chart(frame)),
            },
            check_results=checks,
        )

    return drift_scores


def score_rectangle(store, settings: Settings, policy: DriftPolicy, universe: list[str], symbols, start: dt.date, end: dt.date) -> pd.DataFrame:
    """Every detector for ``symbols`` x the sessions in [start, end] that have features."""
    from ibf_core.models.registry import list_versions, load_registered
    from ibf_core.monitoring import feature_drift_rows, matured_outcomes, performance_rows

    first = lookback_start(start, policy.feature_window + policy.window + policy.horizon + 5)
    features = store.read(features_spec(), list(universe), first, end)
    features["date"] = pd.to_datetime(features["date"])
    bars = store.read(MARKET_BARS, list(universe), first, end)
    predictions = store.read(PREDICTIONS, list(universe), first, end)
    outcomes = matured_outcomes(predictions, bars, end)
    versions = list_versions(settings.mlflow_uri, settings.model_name)
    days = sorted(d for d in features.loc[features["symbol"].isin(symbols), "date"].unique() if pd.Timestamp(start) <= d <= pd.Timestamp(end))
    references: dict[str, dict[str, np.ndarray]] = {}
    usable = features[~features["warmup"].astype(bool)]
    by_symbol = {s: g for s, g in usable.groupby("symbol")}
    empty = usable.iloc[:0]
    rows = []
    for day in days:
        eligible = [v for v in versions if v.cutoff < pd.Timestamp(day).date()]
        version = eligible[-1] if eligible else None
        if version is not None and version.version not in references:
            bundle = load_registered(settings.mlflow_uri, version, settings.model_cache_dir)
            references[version.version] = _references(store, universe, bundle.cutoff, policy)
        for symbol in symbols:
            own = by_symbol.get(symbol, empty)
            own = own[own["date"] <= day]
            recent = own.tail(policy.feature_window)[list(policy.features)].to_numpy(dtype=np.float64)
            if version is None:
                reason = f"no model trained before {pd.Timestamp(day).date()}: no reference window"
                drift_rows = [{"detector": d, "feature": None, "statistic": None, "p_value": None, "threshold": None,
                               "breached": False, "skipped_reason": reason, "n": 0} for d in ("ks", "cvm", "psi", "mmd")]
            else:
                reference = references[version.version].get(symbol, np.empty((0, len(policy.features))))
                drift_rows = feature_drift_rows(reference, recent, list(policy.features), policy, seed=int(pd.Timestamp(day).value % 2**31))
            perf = performance_rows(symbol, outcomes, day, policy)
            for row in [*drift_rows, *perf]:
                rows.append({"symbol": symbol, "date": pd.Timestamp(day), **row, "model_version": version.version if version else ""})
    return pd.DataFrame(rows, columns=DRIFT_SCORES.column_names)


def _references(store, universe: list[str], cutoff: dt.date, policy: DriftPolicy) -> dict[str, np.ndarray]:
    """Per symbol: the newest ``reference_sessions`` rows of the drift features up to the model's cut-off.

    Up to the cut-off, not the end of the fitting window: the model saw that data (fitting or calibration),
    and a retrain must reset the reference, or the window that triggered it would keep firing.
    """
    sessions = all_sessions()
    end = int(sessions.searchsorted(pd.Timestamp(cutoff), side="right")) - 1
    first = sessions[max(end - policy.reference_sessions - 10, 0)].date()
    frame = store.read(features_spec(), list(universe), first, cutoff)
    frame = frame[~frame["warmup"].astype(bool)]
    return {s: g.tail(policy.reference_sessions)[list(policy.features)].to_numpy(dtype=np.float64) for s, g in frame.groupby("symbol")}


def _chart(frame: pd.DataFrame) -> str:
    from ibf_core.report import line_plot_markdown

    mmd = frame[(frame["detector"] == "mmd") & frame["p_value"].notna()].copy()
    if mmd.empty:
        return "_no MMD p-values in this run (skipped: see skipped_reason)_"
    mmd["neg_log10_p"] = -np.log10(mmd["p_value"].clip(lower=1e-6))
    return line_plot_markdown(mmd, "date", "neg_log10_p", "symbol", "MMD drift, -log10 p (higher = more drift)")
