"""``predictions``: forecasts per symbol x origin date from the newest model trained strictly before the origin."""

import dagster as dg
import numpy as np
import pandas as pd

from ibf_core.features.table import features_spec
from ibf_core.models import HORIZONS
from ibf_core.report import line_plot_markdown, markdown_table
from ibf_core.settings import Settings
from ibf_core.storage.tables import PREDICTIONS
from ibf_dagster.metadata import partition_result, plot_if_small, table_asset
from ibf_dagster.partitions import context_rectangles, require_upstream, symbol_date_partitions
from ibf_dagster.resources import SettingsResource, WarehouseResource

# Heavy imports (talib) stay inside the functions that need them: importing this module loads none of them.

ERROR = dg.AssetCheckSeverity.ERROR
CHECKS = {
    "finite_values": "Every forecast, bound and price is finite (ERROR)",
    "intervals_ordered": "lower_95 <= lower_80 <= upper_80 <= upper_95 on every row: the intervals nest (ERROR)",
    "all_symbols_present": "Every (symbol, origin session) of the run that has features has a row at every horizon (ERROR)",
}
# Not blocking: split-conformal bounds come from the validation residuals, so a model that was biased over its
# validation window gets intervals shifted off its own point forecast. That is a calibration signal, not bad data.
WARN_CHECKS = {
    "point_within_80": "pred_return lies inside its own 80% interval on every row; rows outside mean the model was biased in validation (WARN)",
}


def build_predictions(settings: Settings) -> dg.AssetsDefinition:
    spec = PREDICTIONS

    @table_asset(
        spec,
        description=(
            "Per symbol, origin session and horizon (1/3/5/10/15/20 sessions): the ensemble's h-day log-return and "
            "price forecast with conformal 80%/95% bounds, every member's forecast, the model version used (the "
            "newest registered cut-off strictly before the origin) and the cross-sectional rank over the universe."
        ),
        partitions_def=symbol_date_partitions(settings),
        deps=["features", dg.AssetDep("trained_models", partition_mapping=dg.AllPartitionMapping())],
        check_specs=[dg.AssetCheckSpec(n, asset=spec.name, description=d, blocking=True) for n, d in CHECKS.items()]
        + [dg.AssetCheckSpec(n, asset=spec.name, description=d) for n, d in WARN_CHECKS.items()],
        # The latest partitions follow new features after each close and every newly trained model.
        automation_condition=dg.AutomationCondition.eager(),
        group="models",
        layer="predictions",
        domain="forecasting",
        engine="pytorch",
    )
    def predictions(context: dg.AssetExecutionContext, ibf: SettingsResource, warehouse: WarehouseResource) -> dg.MaterializeResult:
        from ibf_core.models.inference import predict_rectangle, storable
        from ibf_core.models.registry import list_versions, load_registered

        settings = ibf.get()
        require_upstream(context, dg.AssetKey("features"))
        store = warehouse.get()
        universe = store.symbols(features_spec())
        versions = list_versions(settings.mlflow_uri, settings.model_name)
        bundles: dict[str, object] = {}

        def load(model):
            if model.version not in bundles:
                bundles[model.version] = load_registered(settings.mlflow_uri, model, settings.model_cache_dir)
            return bundles[model.version]

        results, used, unranked = [], {}, {}
        for rect in context_rectangles(context, settings):
            # Origins whose inputs are unchanged since their rows were stored are carried, not forecast again
            # (the daily run of a month partition forecasts the new session); nothing is written when nothing changed.
            stored = store.read(spec, rect.symbols, rect.start, rect.end)
            result = predict_rectangle(store, versions, load, universe, rect.symbols, rect.start, rect.end, stored)
            if result.changed:
                store.replace_slice(spec, storable(result.frame), rect.symbols, rect.start, rect.end)
            results.append(result)
            used.update(result.versions)
            unranked.update(result.unranked)
        filled = [r.frame for r in results if len(r.frame)]
        frame = pd.concat(filled, ignore_index=True) if filled else pd.DataFrame(columns=spec.column_names)
        checks = _checks(frame, set().union(*(r.expected for r in results)))
        latest = frame[frame["date"] == frame["date"].max()] if len(frame) else frame
        top = latest[latest["rank"] <= 3][["date", "horizon", "rank", "symbol", "pred_return", "lower_80", "upper_80"]] if len(latest) else latest
        return partition_result(
            context,
            metadata={
                "dagster/row_count": len(frame),
                "origins_forecast": sum(r.forecast_origins for r in results),  # origin sessions forecast afresh
                "origins_carried": sum(r.carried_origins for r in results),  # kept: same inputs digest
                "model_versions": dg.MetadataValue.json(used),
                "unranked_symbols": dg.MetadataValue.json(unranked),
                "top_ranked_latest": dg.MetadataValue.md(markdown_table(top, max_rows=18)),
                "forecast_plot": plot_if_small(context, lambda: _plot(frame)),
            },
            check_results=checks,
        )

    return predictions


def _checks(frame: pd.DataFrame, expected: set) -> list[dg.AssetCheckResult]:
    """``expected``: the (symbol, origin) pairs that have features: each needs a row at every horizon."""
    values = ["pred_return", "pred_price", "lower_80", "upper_80", "lower_95", "upper_95"]
    finite = bool(np.isfinite(frame[values].to_numpy(dtype=np.float64)).all()) if len(frame) else True
    bounds = frame[["lower_95", "lower_80", "pred_return", "upper_80", "upper_95"]].to_numpy(dtype=np.float64) if len(frame) else np.zeros((0, 5))
    nested = bounds[:, [0, 1, 3, 4]]
    disordered = int((np.diff(nested, axis=1) < -1e-12).any(axis=1).sum())
    outside_80 = int(((bounds[:, 2] < bounds[:, 1] - 1e-12) | (bounds[:, 2] > bounds[:, 3] + 1e-12)).sum())
    have = set(zip(frame["symbol"], pd.to_datetime(frame["date"]), frame["horizon"])) if len(frame) else set()
    absent = sorted({(s, d) for s, d in expected for h in HORIZONS if (s, d, h) not in have})
    shown = ", ".join(f"{s} {d.date()}" for s, d in absent[:10]) + (f" and {len(absent) - 10} more" if len(absent) > 10 else "")
    return [
        dg.AssetCheckResult(check_name="finite_values", passed=finite, severity=ERROR, metadata={"rows": len(frame)}),
        dg.AssetCheckResult(check_name="intervals_ordered", passed=disordered == 0, severity=ERROR, metadata={"disordered_rows": disordered}),
        dg.AssetCheckResult(check_name="point_within_80", passed=outside_80 == 0, severity=dg.AssetCheckSeverity.WARN,
                            metadata={"rows_outside_80": outside_80, "rows": len(frame)}),
        dg.AssetCheckResult(
            check_name="all_symbols_present",
            passed=not absent,
            severity=ERROR,
            metadata={"origins_missing": len(absent), "missing": shown or "none"},
        ),
    ]


def _plot(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "_no forecasts_"
    five = frame[frame["horizon"] == 5]
    return line_plot_markdown(five, "date", "pred_return", "symbol", "5-session forecast log return by origin")


__all__ = ["build_predictions"]
