"""Sensors: the universe's symbol partitions, drift-triggered and weekly retraining, alerts for failed checks."""

import datetime as dt
import json

import dagster as dg
import pandas as pd

from ibf_core.calendar import latest_complete_session, to_date, trading_days
from ibf_core.features.table import features_spec
from ibf_core.models.schedule import latest_weekly_cutoff
from ibf_core.monitoring.alerts import Alert, record_alerts
from ibf_core.settings import Settings
from ibf_dagster.assets.drift import RETRAIN_CHECK
from ibf_dagster.compat import check_execution_history, is_planned_check_execution
from ibf_dagster.executors import gpu_tags
from ibf_dagster.partitions import MODEL_CUTOFFS, SYMBOL_PARTITIONS
from ibf_dagster.recovery import death_alerts, recover_dead_runs
from ibf_dagster.resources import SettingsResource, WarehouseResource


def build_universe_sync(settings: Settings) -> dg.SensorDefinition:
    @dg.sensor(
        name="universe_sync",
        description="Adds every IBF_UNIVERSE symbol to the `symbol` partitions (symbols added by `ibf universe add` stay).",
        minimum_interval_seconds=60,
        default_status=dg.DefaultSensorStatus.RUNNING,
    )
    def universe_sync(context: dg.SensorEvaluationContext, ibf: SettingsResource) -> dg.SensorResult | dg.SkipReason:
        settings = ibf.get()
        known = set(context.instance.get_dynamic_partitions(SYMBOL_PARTITIONS.name))
        missing = [s for s in settings.universe if s not in known]
        if not missing:
            return dg.SkipReason(f"all {len(settings.universe)} configured symbols are partitions")
        return dg.SensorResult(dynamic_partitions_requests=[SYMBOL_PARTITIONS.build_add_request(missing)])

    return universe_sync


def _check_evaluations(context: dg.SensorEvaluationContext, after: int | None, checks) -> tuple[list, int | None]:
    """Evaluations of ``checks`` recorded after execution id ``after``, oldest first, and the next cursor.

    The cursor stops before the oldest execution still in flight (planned, not evaluated), so a slow run's
    result is never skipped; evaluations after it may be seen twice, which the consumers make harmless
    (alerts are keyed by evaluation, retrains by run key).
    """
    records = [r for key in checks for r in check_execution_history(context.instance, key) if r.id > (after or 0)]
    records.sort(key=lambda r: r.id)
    found, cursor, blocked = [], after, False
    for record in records:
        if is_planned_check_execution(record):
            blocked = True
            continue
        event = record.event.dagster_event if record.event else None
        if event is not None and event.event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION:
            found.append((record.id, record.run_id, event.event_specific_data))
        if not blocked:
            cursor = record.id
    return found, cursor


def _meta_value(value) -> object:
    return getattr(value, "value", value)


def gpu_run_tags(settings: Settings | None = None) -> dict[str, str]:
    """Tags that ask for a GPU: ibf's run-queue tag and the Kubernetes resource request (k8s_job_executor)."""
    return gpu_tags(settings)


def build_retrain_on_drift(settings: Settings) -> dg.SensorDefinition:
    @dg.sensor(
        name="retrain_on_drift",
        description=(
            "When drift_scores' retrain_rule check fails (ERROR), requests trained_models for a new cut-off (the latest "
            "complete session of the data) on a GPU where one exists: one run per drift episode (run key), then a "
            f"cool-down of {settings.retrain_cooldown_sessions} sessions."
        ),
        asset_selection=["trained_models"],
        minimum_interval_seconds=300,
        default_status=dg.DefaultSensorStatus.RUNNING,
    )
    def retrain_on_drift(context: dg.SensorEvaluationContext, ibf: SettingsResource) -> dg.SensorResult:
        settings = ibf.get()
        cursor = json.loads(context.cursor) if context.cursor else {}
        evaluations, cursor["after"] = _check_evaluations(
            context, cursor.get("after"), [dg.AssetCheckKey(dg.AssetKey("drift_scores"), RETRAIN_CHECK)]
        )
        failed = [
            e for _, _, e in evaluations
            if e.check_name == RETRAIN_CHECK and not e.passed and e.severity == dg.AssetCheckSeverity.ERROR
        ]
        if not failed:
            return dg.SensorResult(skip_reason="no failed retrain_rule evaluation since the last tick", cursor=json.dumps(cursor))
        evaluation = failed[-1]
        meta = {k: _meta_value(v) for k, v in evaluation.metadata.items()}
        as_of = meta.get("as_of")
        if not as_of:
            return dg.SensorResult(skip_reason="the failed evaluation has no as_of date: nothing to train on", cursor=json.dumps(cursor))
        cutoff = min(to_date(as_of), latest_complete_session())
        last = cursor.get("last_cutoff")
        if last and len(trading_days(to_date(last), cutoff)) - 1 < settings.retrain_cooldown_sessions:
            reason = f"cool-down: a drift retrain for cut-off {last} was requested less than {settings.retrain_cooldown_sessions} sessions before {cutoff}"
            return dg.SensorResult(skip_reason=reason, cursor=json.dumps(cursor))
        episode = meta.get("episode_start") or cutoff.isoformat()
        cursor["last_cutoff"] = cutoff.isoformat()
        request = dg.RunRequest(
            run_key=f"drift-retrain-{episode}",
            partition_key=cutoff.isoformat(),
            tags={**gpu_run_tags(settings), "ibf/trigger": "drift", "ibf/drift_episode": str(episode)},
        )
        context.log.info(f"drift episode from {episode}: retraining with cut-off {cutoff} ({'; '.join(meta.get('reasons') or [])})")
        return dg.SensorResult(
            run_requests=[request],
            dynamic_partitions_requests=[MODEL_CUTOFFS.build_add_request([cutoff.isoformat()])],
            cursor=json.dumps(cursor),
        )

    return retrain_on_drift


def build_weekly_training(settings: Settings | None = None) -> dg.SensorDefinition:
    @dg.sensor(
        name="weekly_training",
        description="The regular cadence beside the drift trigger: trains a model on the last session of each complete week once its features are stored.",
        asset_selection=["trained_models"],
        minimum_interval_seconds=3600,
        default_status=dg.DefaultSensorStatus.RUNNING,
    )
    def weekly_training(context: dg.SensorEvaluationContext, warehouse: WarehouseResource) -> dg.SensorResult | dg.SkipReason:
        cutoff = latest_weekly_cutoff(latest_complete_session())
        if cutoff is None:
            return dg.SkipReason("no complete week yet")

        newest = warehouse.get().query(f"SELECT max(date) AS d FROM {features_spec().name}")["d"].iloc[0]
        # an empty table gives NULL (NaT here), which must never pass for a date: no run that cannot succeed
        if newest is None or pd.isna(newest):
            return dg.SkipReason("no features stored yet: nothing to train on")
        if pd.Timestamp(newest).date().isoformat() < cutoff:
            return dg.SkipReason(f"features reach {pd.Timestamp(newest).date()}, not the week's last session {cutoff} yet")
        return dg.SensorResult(
            run_requests=[dg.RunRequest(run_key=f"weekly-{cutoff}", partition_key=cutoff, tags={**gpu_run_tags(settings), "ibf/trigger": "weekly"})],
            dynamic_partitions_requests=[MODEL_CUTOFFS.build_add_request([cutoff])],
        )

    return weekly_training


def build_check_alerts(settings: Settings) -> dg.SensorDefinition:
    @dg.sensor(
        name="check_alerts",
        description="Every failed asset check (any asset) becomes a row in the `alerts` table, a log line and, with IBF_ALERT_WEBHOOK, a JSON POST.",
        minimum_interval_seconds=30,
        default_status=dg.DefaultSensorStatus.RUNNING,
    )
    def check_alerts(context: dg.SensorEvaluationContext, ibf: SettingsResource, warehouse: WarehouseResource) -> dg.SensorResult:
        settings = ibf.get()
        after = int(context.cursor) if context.cursor else None
        checks = sorted(context.repository_def.asset_graph.asset_check_keys, key=lambda k: k.to_user_string())
        evaluations, cursor = _check_evaluations(context, after, checks)
        if not evaluations:
            return dg.SensorResult(skip_reason="no new check evaluations", cursor=context.cursor)
        alerts = [
            Alert(
                asset=e.asset_key.to_user_string(),
                check_name=e.check_name,
                partition=str(e.partition or ""),
                severity=e.severity.value if hasattr(e.severity, "value") else str(e.severity),
                description=e.description or "",
                metadata={k: _meta_value(v) for k, v in e.metadata.items()},
                run_id=run_id,
                evaluation_id=str(storage_id),
                raised_at=dt.datetime.now(dt.timezone.utc),
            )
            for storage_id, run_id, e in evaluations
            if not e.passed
        ]
        if alerts:
            webhook = settings.alert_webhook.get_secret_value() if settings.alert_webhook else None
            record_alerts(warehouse.get(), alerts, webhook, log=context.log.warning)
        return dg.SensorResult(cursor=str(cursor) if cursor is not None else None)

    return check_alerts


def build_run_recovery() -> dg.SensorDefinition:
    """Runs whose worker died while the daemon lives (killed, out of memory): Dagster's default launcher has no
    worker health check, so without this they stay STARTED and keep their pool slot until someone notices."""

    @dg.sensor(
        name="run_recovery",
        description=(
            "Marks STARTED runs whose process is gone (pid and start time checked) FAILED, saying why (the kernel "
            "log may name an OOM kill), frees their concurrency-pool slots, so a crashed run never blocks the duckdb "
            "or gpu pool, and records an `alerts` row (check run_died) with a webhook POST for each."
        ),
        minimum_interval_seconds=60,
        default_status=dg.DefaultSensorStatus.RUNNING,
    )
    def run_recovery(context: dg.SensorEvaluationContext, ibf: SettingsResource) -> dg.SkipReason:
        # a dead run's failure message says why it died; each also becomes an `alerts` row (and webhook POST)
        freed = recover_dead_runs(context.instance, death_alerts(ibf.get(), log=context.log.warning))
        for run in freed:
            context.log.warning(run.line())
        return dg.SkipReason("; ".join(run.line() for run in freed) or "every unfinished run's process is alive")

    return run_recovery
