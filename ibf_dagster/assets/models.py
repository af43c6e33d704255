"""``trained_models``: every ensemble member trained up to a cut-off, logged to MLflow and registered.

Partitioned by training cut-off date (a dynamic partition per NYSE session used as a cut-off). The regular
cadence is weekly (``ibf_core.models.schedule``); drift-triggered retrains add their own cut-off (the latest
complete session) as another partition.
"""

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd

from ibf_core.calendar import to_date
from ibf_core.models.ensemble import rule
from ibf_core.models.importance_report import bundle_markdown, plot_frame
from ibf_core.models.inputs import train_from_warehouse
from ibf_core.report import bar_plot_markdown, markdown_table
from ibf_core.settings import Settings
from ibf_dagster.executors import K8S_CONFIG_TAG, gpu_k8s_config
from ibf_dagster.metadata import OWNERS, plot_if_small
from ibf_dagster.partitions import MODEL_CUTOFFS
from ibf_dagster.resources import SettingsResource, WarehouseResource

# Heavy imports (talib) stay inside the functions that need them: importing this module loads none of them.

ERROR = dg.AssetCheckSeverity.ERROR


def build_trained_models(settings: Settings) -> dg.AssetsDefinition:
    @dg.asset(
        name="trained_models",
        description=(
            "Global LSTM and TFT (NeuralForecast), LightGBM and textbook-factor members plus random-walk/drift baselines "
            "and an ensemble (weights chosen on validation, shrunk towards the random walk unless the evidence holds; "
            "the ranking chosen on rank IC), trained on every symbol's "
            "`features` up to the partition's cut-off date, with conformal 80%/95% intervals calibrated on a "
            "held-out validation window. Logged to MLflow (dagster-mlflow) and registered in the Model Registry."
        ),
        partitions_def=MODEL_CUTOFFS,
        deps=[dg.AssetDep("features", partition_mapping=dg.AllPartitionMapping())],
        pool="gpu",
        # With IBF_EXECUTOR=k8s this step runs as its own Job, in a pod with one GPU (the dagster-k8s/config tag).
        op_tags={"ibf/accelerator": "gpu" if settings.accelerator == "gpu" else "auto",
                 **({K8S_CONFIG_TAG: json.dumps(gpu_k8s_config(settings))} if settings.executor == "k8s" else {})},
        kinds={"pytorch", "lightgbm", "mlflow"},
        owners=OWNERS,
        tags={"layer": "models", "domain": "forecasting"},
        group_name="models",
        metadata={
            # The asset's tabular face: the per-horizon validation table in its metadata and in MLflow.
            "dagster/column_schema": dg.TableSchema(
                columns=[
                    dg.TableColumn("horizon", "BIGINT", description="Sessions ahead"),
                    dg.TableColumn("member", "VARCHAR", description="naive, drift, lstm, tft, gbdt or ensemble"),
                    dg.TableColumn("n", "BIGINT", description="Validation forecasts"),
                    dg.TableColumn("mae", "DOUBLE", description="Mean absolute error of the h-day log return"),
                    dg.TableColumn("rel_mae_vs_naive", "DOUBLE", description="MAE / random-walk MAE (< 1 beats it)"),
                    dg.TableColumn("da", "DOUBLE", description="Directional accuracy on non-overlapping origins"),
                    dg.TableColumn("rank_ic_mean", "DOUBLE", description="Mean cross-sectional Spearman IC"),
                    dg.TableColumn("dm_pvalue", "DOUBLE", description="Diebold-Mariano p-value vs the random walk"),
                    dg.TableColumn("coverage_80", "DOUBLE", description="80% interval coverage"),
                    dg.TableColumn("coverage_95", "DOUBLE", description="95% interval coverage"),
                ]
            ),
        },
        check_specs=[
            dg.AssetCheckSpec(
                "validation_complete",
                asset="trained_models",
                description="Every member has finite validation metrics at every horizon (a member that forecasts nothing by design, such as 12-1 momentum on under a year of history, is named, not failed), intervals calibrated (ERROR)",
                blocking=True,
            )
        ],
    )
    def trained_models(
        context: dg.AssetExecutionContext, ibf: SettingsResource, warehouse: WarehouseResource, mlflow: dg.ResourceParam[Any]
    ) -> dg.MaterializeResult:
        # ``mlflow`` is dagster-mlflow's resource: it opened this Dagster run's MLflow run and proxies the
        # mlflow module's functions; the run is ended here (its atexit handler is removed by design).

        from ibf_core.models.registry import log_and_register

        settings = ibf.get()
        cutoff = to_date(context.partition_key)
        started = time.perf_counter()
        try:
            bundle = train_from_warehouse(warehouse.get(), settings, cutoff, progress=context.log.info)
            with tempfile.TemporaryDirectory(prefix="ibf-bundle-") as work:
                registered = log_and_register(bundle, settings.model_name, Path(work))
            mlflow.end_run("FINISHED")
        except BaseException:
            mlflow.end_run("FAILED")
            raise
        # The MLflow UI path of the run (open it with `mlflow ui --backend-store-uri <IBF_HOME mlflow.db>`).
        experiment_id = mlflow.get_experiment_by_name(settings.mlflow_experiment).experiment_id
        run_link = f"http://127.0.0.1:5000/#/experiments/{experiment_id}/runs/{registered.run_id}"
        return _result(bundle, registered, settings, time.perf_counter() - started, run_link, context)

    return trained_models


def _windows(bundle) -> dict[str, Any]:
    """Window sizes (sessions), the note when a short history shrank them, members that could not train."""
    plan = dict(bundle.facts.get("windows", {}))
    plan["neural_excluded_symbols"] = {
        m: f["excluded_symbols"] for m, f in bundle.facts["members"].items() if f.get("excluded_symbols")
    }
    return plan


def _importance_plot(importance: dict[str, Any] | None) -> str:
    """Grouped bars: each member's rank IC drop per feature group (mean over the horizons), as inline markdown."""
    return bar_plot_markdown(plot_frame(importance), "group", "rank_ic_drop", "member", "rank IC drop when a group is permuted (mean over h)")


def _result(bundle, registered, settings: Settings, elapsed: float, run_link: str, context=None) -> dg.MaterializeResult:
    """The materialization's metadata (validation table, weights, feature importance, provenance) and its check."""
    validation = pd.DataFrame(bundle.validation)
    table = validation[["horizon", "member", "n", "mae", "rel_mae_vs_naive", "da", "rank_ic_mean", "dm_pvalue", "coverage_80", "coverage_95"]]
    from ibf_core.models.training import validation_gaps

    excused, unexplained = validation_gaps(bundle)
    finite = not unexplained and len(bundle.conformal) > 0

    weights = {h: {"method": c["method"], **{m: round(w, 3) for m, w in c["weights"].items()}} for h, c in bundle.ensemble.items()}
    rules = pd.DataFrame([{"horizon": int(h), **rule(c)} for h, c in bundle.ensemble.items()])
    importance = bundle.facts.get("importance")
    return dg.MaterializeResult(
        metadata={
            "model_name": registered.name,
            "model_version": registered.version,
            "cutoff": bundle.cutoff.isoformat(),
            "train_end": bundle.train_end.isoformat(),
            "validation_window": f"{bundle.validation_start} .. {bundle.validation_end}",
            "device": bundle.facts["device"],
            "accelerator_setting": settings.accelerator,
            "training_seconds": round(elapsed, 1),
            "member_seconds": dg.MetadataValue.json({m: round(f["seconds"], 1) for m, f in bundle.facts["members"].items()}),
            # seconds and peak RSS (MiB) of each phase: load panel, select, fit <member>, validate, importance
            "phases": dg.MetadataValue.json(bundle.facts.get("resources", {}).get("phases", {})),
            "peak_rss_mib": float(bundle.facts.get("resources", {}).get("peak_rss_mib") or 0.0),
            "symbols": dg.MetadataValue.json(bundle.facts["symbols"]),
            "excluded_symbols": dg.MetadataValue.json(bundle.facts["excluded_symbols"]),
            "windows": dg.MetadataValue.json(_windows(bundle)),
            "features_used": dg.MetadataValue.json(bundle.facts.get("features_used", bundle.gbdt_features)),
            "features_left_out": dg.MetadataValue.json(bundle.facts.get("features_left_out", {})),
            "neural_features_used": dg.MetadataValue.json(bundle.facts.get("neural_features_used", [])),
            "neural_features_left_out": dg.MetadataValue.json(bundle.facts.get("neural_features_left_out", {})),
            "missing_sessions": dg.MetadataValue.json(bundle.facts.get("missing_sessions", {})),
            "ensemble_weights": dg.MetadataValue.json(weights),
            # per horizon: the point forecast's shrinkage towards the random walk and the ranking's weights, with why
            "ensemble_rules": dg.MetadataValue.md(markdown_table(rules, max_rows=len(rules))),
            "validation": dg.MetadataValue.md(markdown_table(table, max_rows=len(table))),
            # permutation importance by feature group on the validation window (+ LightGBM gain shares);
            # the numbers are MLflow metrics importance/<member>/h<h>/<group> and the run's importance.json
            "feature_importance": dg.MetadataValue.md(bundle_markdown(importance)),
            "feature_importance_plot": (
                plot_if_small(context, lambda: _importance_plot(importance)) if context is not None
                else dg.MetadataValue.md(_importance_plot(importance))
            ),
            "tft_selection_weights": dg.MetadataValue.json(importance.get("tft_vsn", {}) if importance else {}),
            "mlflow_run": dg.MetadataValue.url(run_link),
            "mlflow_store": settings.mlflow_uri,
            "mlflow_run_id": registered.run_id,
            "artifact_uri": registered.source,
            "manifest_sha256": registered.manifest_sha256,
            "data_fingerprint": bundle.facts["fingerprint"],
        },
        check_results=[
            dg.AssetCheckResult(
                check_name="validation_complete",
                passed=bool(finite),
                severity=ERROR,
                metadata={"rows": len(validation), "members": ",".join(sorted(validation["member"].unique())),
                          # members that forecast nothing by design (too little history), and any other gap
                          "without_forecasts_by_design": dg.MetadataValue.json(excused),
                          "missing_metrics": dg.MetadataValue.json(unexplained)},
            )
        ],
    )
