"""Sensors: keep the ``symbol`` dynamic partitions in sync with the configured universe."""


import dagster as dg

from ibf_core.settings import Settings
from ibf_dagster.partitions import SYMBOL_PARTITIONS


def build_universe_sync(settings: Settings) -> dg.SensorDefinition:
    @dg.sensor(
        name="universe_sync",
        description="Adds every IBF_UNIVERSE symbol to the `symbol` partitions (symbols added by `ibf universe add` stay).",
        minimum_interval_seconds=60,
        default_status=dg.DefaultSensorStatus.RUNNING,
    )
    def universe_sync(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
        known = set(context.instance.get_dynamic_partitions(SYMBOL_PARTITIONS.name))
        missing = [s for s in settings.universe if s not in known]
        if not missing:
            return dg.SkipReason(f"all {len(settings.universe)} configured symbols are partitions")
        return dg.SensorResult(dynamic_partitions_requests=[SYMBOL_PARTITIONS.build_add_request(missing)])

    return universe_sync
