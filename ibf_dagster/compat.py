"""Every use of Dagster internals or legacy APIs, in one place, pinned to the Dagster version ibf is tested on.

``tests/test_dagster_compat.py`` checks each of these against the installed Dagster; when Dagster is upgraded,
that test names what moved, and this module is the only one to mend.
"""

from __future__ import annotations

from typing import Any

import dagster as dg

DAGSTER_VERSION = "1.13.27"  # the version these shims were written and tested against (pyproject pins it)


def is_planned_check_execution(record: Any) -> bool:
    """Whether an asset-check execution record is still in flight (planned, not yet evaluated)."""
    from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus

    return record.status == AssetCheckExecutionRecordStatus.PLANNED


def check_execution_history(instance: dg.DagsterInstance, key: dg.AssetCheckKey, limit: int = 1000) -> list:
    """The recorded executions of one asset check (no public API lists them with their storage ids)."""
    return list(instance.event_log_storage.get_asset_check_execution_history(key, limit=limit))


def partition_range_tags(start: dg.MultiPartitionKey | str, end: dg.MultiPartitionKey | str) -> dict[str, str]:
    """Run tags that make one run materialize the partition range [start, end] (a single-run backfill).

    ``execute_in_process`` has no range argument; the daemon's backfills set these reserved tags themselves.
    """
    from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

    return {ASSET_PARTITION_RANGE_START_TAG: str(start), ASSET_PARTITION_RANGE_END_TAG: str(end)}


def mlflow_tracking_resource(experiment: str, tracking_uri: str, on_init) -> dg.ResourceDefinition:
    """dagster-mlflow's tracking resource (a legacy function-style resource; it has no Pythonic version).

    ``on_init()`` runs before the resource opens its MLflow run (ibf creates the experiment with its artifact
    location there).
    """
    from dagster_mlflow.resources import CONFIG_SCHEMA, MlFlow

    @dg.resource(config_schema=CONFIG_SCHEMA, description="MLflow tracking (dagster-mlflow)")
    def mlflow_tracking(init_context):
        on_init()
        return MlFlow(init_context)

    return mlflow_tracking.configured({"experiment_name": experiment, "mlflow_tracking_uri": tracking_uri, "extra_tags": {"ibf": "trained_models"}})
