"""The platform figures behind /metrics, read at scrape time from the warehouse, the registry and Dagster."""

from __future__ import annotations

import datetime as dt
import logging
import time

from prometheus_client.core import Metric

from ibf_core.calendar import latest_complete_session, trading_days
from ibf_core.forecasts import newest_bar_age_sessions
from ibf_core.monitoring.alerts import read_alerts
from ibf_core.portfolio.stored import newest_rows
from ibf_core.storage import space
from ibf_serve.metrics import ASSETS, counter, gauge, gpu_metrics

# Heavy imports (dagster) stay inside the functions that need them: importing this module loads none of them.

log = logging.getLogger("ibf_serve")


def platform_metrics(services) -> list[Metric]:
    """Every scrape-time family; a part that fails is left out (absent, not zero) and logged."""
    out: list[Metric] = []
    for part in (_assets, _checks, _drift, _model, _performance, _confidence, _runs, _portfolios, _disk):
        try:
            out += part(services)
        except Exception as exc:  # noqa: BLE001 - one broken source must not take the others' figures down
            log.warning("metrics: %s failed: %s", part.__name__.strip("_"), type(exc).__name__)
    return out + gpu_metrics()


def _assets(services) -> list[Metric]:
    # dagster is imported where a figure reads the instance: importing the service (and every test of it) does
    # not load it.
    import dagster as dg

    instance = services.instance()
    age = gauge("ibf_asset_seconds_since_materialization", "Seconds since the newest materialization of the asset", ["asset"])
    rows = gauge("ibf_asset_last_run_rows", "Rows written by the asset's newest materialization", ["asset"])
    now = time.time()
    for asset in ASSETS:
        event = instance.get_latest_materialization_event(dg.AssetKey(asset))
        if event is None:
            continue
        age.add_metric([asset], max(0.0, now - event.timestamp))
        meta = event.asset_materialization.metadata if event.asset_materialization else {}
        count = meta.get("dagster/row_count")
        if count is not None:
            rows.add_metric([asset], float(getattr(count, "value", count)))
    return [age, rows]


def _checks(services) -> list[Metric]:
    alerts = read_alerts(services.store)
    failed = counter("ibf_asset_check_failures", "Failed asset-check evaluations recorded as alerts", ["asset", "check", "severity"])
    for (asset, check, severity), n in alerts.groupby(["asset", "check_name", "severity"]).size().items():
        failed.add_metric([asset, check, severity], float(n))
    return [failed]


def _drift(services) -> list[Metric]:
    store = services.store
    frame = store.query(
        "SELECT detector, count(*) FILTER (WHERE breached) AS fired FROM drift_scores "
        "WHERE date = (SELECT max(date) FROM drift_scores) GROUP BY detector"
    )
    breaches = gauge("ibf_drift_breaches", "Symbols whose detector fired on the newest drift-scored session", ["detector"])
    for detector, fired in zip(frame["detector"], frame["fired"]):
        breaches.add_metric([detector], float(fired))
    return [breaches]


def _model(services) -> list[Metric]:
    versions = services.versions()
    out = []
    bars = newest_bar_age_sessions(services.store)
    if bars is not None:
        g = gauge("ibf_data_newest_bar_age_sessions", "Sessions the oldest symbol's newest bar is behind the latest complete session")
        g.add_metric([], float(bars))
        out.append(g)
    if not versions:
        return out
    newest = max(versions, key=lambda v: (v.cutoff, int(v.version)))
    version = gauge("ibf_model_version", "Newest registered model version (number)")
    version.add_metric([], float(newest.version))
    cutoff = gauge("ibf_model_cutoff_timestamp_seconds", "Training cut-off of the newest model (Unix time)")
    cutoff.add_metric([], dt.datetime.combine(newest.cutoff, dt.time(), dt.timezone.utc).timestamp())
    age = gauge("ibf_model_age_sessions", "NYSE sessions from the newest model's cut-off to the latest complete session")
    age.add_metric([], float(max(0, len(trading_days(newest.cutoff, latest_complete_session())) - 1)))
    registered = gauge("ibf_model_versions", "Registered model versions")
    registered.add_metric([], float(len(versions)))
    return out + [version, cutoff, age, registered]


def _performance(services) -> list[Metric]:
    table = services.performance()
    families = {
        "mase": gauge("ibf_rolling_mase", "Rolling MASE (MAE / random-walk MAE) of matured forecasts", ["horizon"]),
        "da": gauge("ibf_rolling_directional_accuracy_ratio", "Rolling directional accuracy of matured forecasts", ["horizon"]),
        "rank_ic": gauge("ibf_rolling_rank_ic", "Rolling cross-sectional rank IC of matured forecasts", ["horizon"]),
        "mae": gauge("ibf_rolling_mae", "Rolling MAE of the log-return forecasts", ["horizon"]),
    }
    coverage = gauge("ibf_rolling_coverage_ratio", "Rolling share of realized returns inside the interval", ["horizon", "level"])
    matured = gauge("ibf_rolling_matured_forecasts", "Matured forecasts in the rolling window", ["horizon"])
    for row in table.to_dict("records"):
        h = str(int(row["horizon"]))
        matured.add_metric([h], float(row["n"]))
        for key, family in families.items():
            if row[key] == row[key]:  # NaN (too few points) is left out, not reported as a number
                family.add_metric([h], float(row[key]))
        for level in ("80", "95"):
            value = row[f"coverage_{level}"]
            if value == value:
                coverage.add_metric([h, level], float(value))
    return [*families.values(), coverage, matured]


def _confidence(services) -> list[Metric]:
    """Mean interval width (log return) and mean |forecast| of the newest origin's stored forecasts, per horizon."""
    frame = services.store.query(
        "SELECT horizon, avg(upper_80 - lower_80) AS w80, avg(upper_95 - lower_95) AS w95, avg(abs(pred_return)) AS mag "
        "FROM predictions WHERE date = (SELECT max(date) FROM predictions) GROUP BY horizon ORDER BY horizon"
    )
    width = gauge("ibf_prediction_interval_width", "Mean interval width (log return) of the newest origin's forecasts", ["horizon", "level"])
    size = gauge("ibf_prediction_abs_return", "Mean |forecast log return| of the newest origin's forecasts", ["horizon"])
    for row in frame.to_dict("records"):
        h = str(int(row["horizon"]))
        width.add_metric([h, "80"], float(row["w80"]))
        width.add_metric([h, "95"], float(row["w95"]))
        size.add_metric([h], float(row["mag"]))
    return [width, size]


def _portfolios(services) -> list[Metric]:
    """NAV, drawdown and turnover of each stored portfolio on its newest session (labels: the configured names)."""
    frame = newest_rows(services.store)
    nav = gauge("ibf_portfolio_nav", "NAV of the portfolio on its newest session (1.0 at the start)", ["portfolio"])
    drawdown = gauge("ibf_portfolio_drawdown_ratio", "NAV / its running peak - 1 on the newest session (0 at a high)", ["portfolio"])
    turnover = gauge("ibf_portfolio_turnover_ratio", "Turnover (sum |weight change|) of the newest session", ["portfolio"])
    for row in frame.to_dict("records"):
        nav.add_metric([row["portfolio"]], float(row["nav"]))
        drawdown.add_metric([row["portfolio"]], float(row["drawdown"]))
        turnover.add_metric([row["portfolio"]], float(row["turnover"]))
    return [nav, drawdown, turnover]


def _runs(services) -> list[Metric]:
    """Retrains by trigger and ingestion runs by source and outcome, from the instance's recent runs."""
    import dagster as dg

    instance = services.instance()
    retrains = counter("ibf_retrains", "trained_models runs by trigger (drift, weekly, cli, api, other)", ["trigger"])
    ingestion = counter("ibf_ingestion_runs", "Finished runs writing market_bars by source and status", ["source", "status"])
    counts: dict[tuple, int] = {}
    for record in instance.get_run_records(limit=2000):
        run = record.dagster_run
        selected = {k.to_user_string() for k in (run.asset_selection or ())}
        if "trained_models" in selected:
            counts[("retrain", _trigger(run.tags))] = counts.get(("retrain", _trigger(run.tags)), 0) + 1
        if "market_bars" in selected and run.status in (dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE):
            config = (run.run_config or {}).get("resources", {}).get("bar_source", {}).get("config", {})
            key = ("ingest", config.get("source") or services.settings.source, run.status.value.lower())
            counts[key] = counts.get(key, 0) + 1
    for key, n in counts.items():
        (retrains if key[0] == "retrain" else ingestion).add_metric(list(key[1:]), float(n))
    return [retrains, ingestion]


def _trigger(tags: dict[str, str]) -> str:
    sensor = tags.get("dagster/sensor_name", "")
    launched = tags.get("ibf/launched_by", "")
    if sensor == "retrain_on_drift":
        return "drift"
    if sensor == "weekly_training":
        return "weekly"
    if launched == "ibf train":
        return "cli"
    if launched == "ibf api":
        return "api"
    return "other"


def _disk(services) -> list[Metric]:
    found = space.free_space(services.settings.home_dir, services.settings.min_free_mib)
    free = gauge("ibf_disk_free_bytes", "Bytes free on the filesystem under IBF_HOME")
    free.add_metric([], float(found.free_bytes))
    floor = gauge("ibf_disk_free_floor_bytes", "IBF_MIN_FREE_MIB in bytes: below it /ready answers 503")
    floor.add_metric([], float(found.floor_bytes))
    return [free, floor]
