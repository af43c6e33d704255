"""``predictions``: forecasts per symbol x origin date from the newest model trained strictly before the origin."""

import datetime as dt

import dagster as dg
import numpy as np
import pandas as pd

from ibf_core.settings import Settings
from ibf_core.features.table import features_spec
from ibf_core.storage.tables import PREDICTIONS
from ibf_dagster.assets.features import lookback_start
from ibf_dagster.assets.models import load_panel
from ibf_dagster.metadata import OWNERS, column_schema, plot_if_small
from ibf_dagster.partitions import context_rectangles, require_upstream, symbol_date_partitions
from ibf_dagster.resources import WarehouseResource

ERROR = dg.AssetCheckSeverity.ERROR
CHECKS = {
    "finite_values": "Every forecast, bound and price is finite (ERROR)",
    "intervals_ordered": "lower_95 <= lower_80 <= pred_return <= upper_80 <= upper_95 on every row (ERROR)",
    "all_symbols_present": "Every symbol of the run has a row for every origin session and horizon (ERROR)",
}


def build_predictions(settings: Settings) -> dg.AssetsDefinition:
    spec = PREDICTIONS

    @dg.asset(
        name=spec.name,
        description=(
            "Per symbol, origin session and horizon (1/3/5/10/15/20 sessions): the ensemble's h-day log-return and "
            "price forecast with conformal 80%/95% bounds, every member's forecast, the model version used (the "
            "newest registered cut-off strictly before the origin) and the cross-sectional rank over the universe."
        ),
        partitions_def=symbol_date_partitions(settings),
        backfill_policy=dg.BackfillPolicy.single_run(),
        deps=["features", dg.AssetDep("trained_models", partition_mapping=dg.AllPartitionMapping())],
        pool="duckdb",
        kinds={"duckdb", "parquet", "pytorch"},
        owners=OWNERS,
        tags={"layer": "predictions", "domain": "forecasting"},
        group_name="models",
        metadata={"dagster/column_schema": column_schema(spec), "dagster/table_name": spec.name},
        check_specs=[dg.AssetCheckSpec(n, asset=spec.name, description=d, blocking=True) for n, d in CHECKS.items()],
        # The latest partitions follow new features after each close and every newly trained model.
        automation_condition=dg.AutomationCondition.eager(),
    )
    def predictions(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
        from ibf_core.models import ModelDataError
        from ibf_core.models.predict import forecast, predictions_table
        from ibf_core.models.registry import list_versions, load_registered
        from ibf_core.report import markdown_table

        require_upstream(context, dg.AssetKey("features"))
        store = warehouse.get()
        universe = store.symbols(features_spec())
        versions = list_versions(settings.mlflow_uri, settings.model_name)
        frames, used, unranked = [], {}, {}
        for rect in context_rectangles(context, settings):
            written = []
            for version, days in _origins_by_version(store, rect, versions).items():
                model = next(v for v in versions if v.version == version)
                bundle = load_registered(settings.mlflow_uri, model, settings.model_cache_dir)
                need = bundle.config.input_size + bundle.config.drift_baseline_sessions + 40
                panel = load_panel(store, settings, universe, lookback_start(min(days), need), max(days))
                rows = panel[panel["date"].isin(pd.to_datetime(days))]
                missing = sorted(set(rect.symbols) - set(rows["symbol"]))
                if missing:
                    raise ModelDataError(f"{', '.join(missing)}: no features on the origin session(s) {days[0]}..{days[-1]}")
                ok, reasons = _forecastable(panel, rows, bundle)
                bad = sorted(s for s in reasons if s in rect.symbols)
                if bad:
                    raise ModelDataError("; ".join(reasons[s] for s in bad))
                unranked.update(reasons)
                # Every forecastable universe symbol is predicted so the rank is over the universe; only the
                # run's symbols are written.
                table = predictions_table(forecast(bundle, panel, rows[ok]), rows[ok], bundle, version)
                written.append(table[table["symbol"].isin(rect.symbols)])
                used[version] = model.cutoff.isoformat()
            part = pd.concat(written, ignore_index=True) if written else pd.DataFrame(columns=spec.column_names)
            store.replace_slice(spec, _storable(part), rect.symbols, rect.start, rect.end)
            frames.append(part)
        frame = pd.concat([f for f in frames if len(f)], ignore_index=True) if any(len(f) for f in frames) else pd.DataFrame(columns=spec.column_names)
        checks = _checks(frame, context_rectangles(context, settings))
        latest = frame[frame["date"] == frame["date"].max()] if len(frame) else frame
        top = latest[latest["rank"] <= 3][["date", "horizon", "rank", "symbol", "pred_return", "lower_80", "upper_80"]] if len(latest) else latest
        return dg.MaterializeResult(
            metadata={
                "dagster/row_count": len(frame),
                "model_versions": dg.MetadataValue.json(used),
                "unranked_symbols": dg.MetadataValue.json(unranked),
                "top_ranked_latest": dg.MetadataValue.md(markdown_table(top, max_rows=18)),
                "forecast_plot": plot_if_small(context, lambda: _plot(frame)),
            },
            check_results=checks,
        )

    return predictions


def _origins_by_version(store, rect, versions) -> dict[str, list[dt.date]]:
    """Origin sessions of the rectangle that have features, grouped by the model version each must use."""
    stored = store.read(features_spec(), list(rect.symbols), rect.start, rect.end)
    have = set(pd.to_datetime(stored["date"]).dt.date)
    by_version: dict[str, list[dt.date]] = {}
    for day in sorted(have):
        eligible = [v for v in versions if v.cutoff < day]
        if not eligible:
            raise ValueError(
                f"no registered model has a cut-off before {day}: materialize trained_models for an earlier "
                f"cut-off (ibf train --cutoff DATE) before predicting {rect.start}..{rect.end}"
            )
        by_version.setdefault(eligible[-1].version, []).append(day)
    return by_version


def _forecastable(panel: pd.DataFrame, rows: pd.DataFrame, bundle) -> tuple[pd.Series, dict[str, str]]:
    """Origins with enough history for every member; reasons per symbol for the others."""
    from ibf_core.models import NEURAL_MEMBERS
    from ibf_core.models.training import usable

    need = bundle.config.input_size if set(bundle.config.members) & set(NEURAL_MEMBERS) else 1
    counts = usable(panel).groupby("symbol").cumcount() + 1
    have = counts.reindex(rows.index).fillna(0)
    ok = have >= need
    reasons = {
        s: f"{s}: too little history ({int(have[rows['symbol'] == s].min())} usable sessions past the warm-up, {need} needed)"
        for s in rows.loc[~ok, "symbol"].unique()
    }
    return ok, reasons


def _storable(frame: pd.DataFrame) -> pd.DataFrame:
    if frame.empty:
        return pd.DataFrame(columns=PREDICTIONS.column_names)
    out = frame.copy()
    for column in ("target_date", "model_cutoff"):
        out[column] = pd.to_datetime(out[column]).dt.date
    return out


def _checks(frame: pd.DataFrame, rects) -> list[dg.AssetCheckResult]:
    from ibf_core.models import HORIZONS

    values = ["pred_return", "pred_price", "lower_80", "upper_80", "lower_95", "upper_95"]
    finite = bool(np.isfinite(frame[values].to_numpy(dtype=np.float64)).all()) if len(frame) else True
    order = frame[["lower_95", "lower_80", "pred_return", "upper_80", "upper_95"]].to_numpy(dtype=np.float64) if len(frame) else np.zeros((0, 5))
    disordered = int((np.diff(order, axis=1) < -1e-12).any(axis=1).sum())
    expected = set()
    for rect in rects:
        days = {d for d in pd.to_datetime(frame["date"]).unique()} if len(frame) else set()
        expected |= {(s, d, h) for s in rect.symbols for d in days for h in HORIZONS}
    have = set(zip(frame["symbol"], pd.to_datetime(frame["date"]), frame["horizon"])) if len(frame) else set()
    absent = sorted({s for s, _, _ in expected - have})
    return [
        dg.AssetCheckResult(check_name="finite_values", passed=finite, severity=ERROR, metadata={"rows": len(frame)}),
        dg.AssetCheckResult(check_name="intervals_ordered", passed=disordered == 0, severity=ERROR, metadata={"disordered_rows": disordered}),
        dg.AssetCheckResult(
            check_name="all_symbols_present", passed=not absent, severity=ERROR, metadata={"symbols_missing": ", ".join(absent) or "none"}
        ),
    ]


def _plot(frame: pd.DataFrame) -> str:
    from ibf_core.report import line_plot_markdown

    if frame.empty:
        return "_no forecasts_"
    five = frame[frame["horizon"] == 5]
    return line_plot_markdown(five, "date", "pred_return", "symbol", "5-session forecast log return by origin")


__all__ = ["build_predictions"]
