"""``drift_scores``: data drift of recent features against the model's training reference, rolling forecast
performance and a residual CUSUM, per symbol and session, with the checks that raise alerts and demand retrains."""

import datetime as dt
import time

import dagster as dg
import numpy as np
import pandas as pd

from ibf_core.features.table import features_spec
from ibf_core.monitoring.scores import DriftPolicy
from ibf_core.report import line_plot_markdown
from ibf_core.settings import Settings
from ibf_core.storage.tables import DRIFT_SCORES
from ibf_dagster.metadata import partition_result, plot_if_small, table_asset
from ibf_dagster.partitions import context_rectangles, require_upstream, symbol_date_partitions
from ibf_dagster.resources import SettingsResource, WarehouseResource

# Heavy imports (talib) stay inside the functions that need them: importing this module loads none of them.

ERROR, WARN = dg.AssetCheckSeverity.ERROR, dg.AssetCheckSeverity.WARN
RETRAIN_CHECK = "retrain_rule"


def build_drift_scores(settings: Settings) -> dg.AssetsDefinition:
    spec = DRIFT_SCORES
    policy = DriftPolicy.from_settings(settings)

    @table_asset(
        spec,
        description=(
            "Per symbol and session: KS and CVM per feature (Bonferroni), PSI per feature and a multivariate MMD "
            "(alibi-detect, PyTorch) of the last sessions' features against the model's training reference; "
            "rolling MAE, MAPE, RMSE, MASE vs the random walk, directional accuracy, pooled rank IC and interval "
            "coverage of matured forecasts; a CUSUM on standardized forecast residuals."
        ),
        partitions_def=symbol_date_partitions(settings),
        deps=["predictions", "features", "market_bars"],
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
        group="monitoring",
        layer="monitoring",
        domain="drift",
        engine="pytorch",
    )
    def drift_scores(context: dg.AssetExecutionContext, ibf: SettingsResource, warehouse: WarehouseResource) -> dg.MaterializeResult:
        from ibf_core.models.registry import list_versions
        from ibf_core.monitoring.rectangle import refresh_rectangle, retrain_status

        settings = ibf.get()
        policy = DriftPolicy.from_settings(settings)
        require_upstream(context, dg.AssetKey("predictions"))
        store = warehouse.get()
        universe = store.symbols(features_spec())
        versions = list_versions(settings.mlflow_uri, settings.model_name)
        started = time.perf_counter()
        frames = []
        scored = carried = 0
        write_seconds = 0.0
        rects = context_rectangles(context, settings)
        history = None
        for rect in rects:
            # One read serves the carry (the rectangle's stored rows) and, for a single rectangle, the retrain
            # rule's look-back (every symbol's rows of the days before).
            before = rect.start - dt.timedelta(days=policy.lookback_days)
            stored = store.read(spec, universe, before, rect.end)
            in_rect = stored["symbol"].isin(rect.symbols) & (stored["date"] >= pd.Timestamp(rect.start))
            # Sessions whose inputs are unchanged since their rows were stored are carried, not rescored (the daily
            # run of a month partition scores the new session); nothing is written when nothing changed.
            result = refresh_rectangle(store, versions, universe, rect.symbols, rect.start, rect.end, policy, stored[in_rect])
            if result.changed:
                wrote = time.perf_counter()
                store.replace_slice(spec, result.frame, rect.symbols, rect.start, rect.end)
                write_seconds += time.perf_counter() - wrote
            frames.append(result.frame)
            scored, carried = scored + result.scored, carried + result.carried
            if len(rects) == 1:
                history = pd.concat([stored[~in_rect], result.frame], ignore_index=True)
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
        decision = retrain_status(store, universe, as_of, policy, history)
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
        return partition_result(
            context,
            metadata={
                "dagster/row_count": len(frame),
                "seconds": round(seconds, 2),  # reading, scoring and writing
                "write_seconds": round(write_seconds, 2),
                "sessions_scored": scored,  # (symbol, session) pairs scored afresh
                "sessions_carried": carried,  # pairs whose stored rows were kept (same inputs digest)
                "detectors": dg.MetadataValue.json(sorted(frame["detector"].unique().tolist()) if len(frame) else []),
                "drift_chart": plot_if_small(context, lambda: _chart(frame)),
            },
            check_results=checks,
        )

    return drift_scores


def _chart(frame: pd.DataFrame) -> str:
    mmd = frame[(frame["detector"] == "mmd") & frame["p_value"].notna()].copy()
    if mmd.empty:
        return "_no MMD p-values in this run (skipped: see skipped_reason)_"
    mmd["neg_log10_p"] = -np.log10(mmd["p_value"].clip(lower=1e-6))
    return line_plot_markdown(mmd, "date", "neg_log10_p", "symbol", "MMD drift, -log10 p (higher = more drift)")
