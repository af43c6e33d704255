"""The Dagster internals ibf uses, checked against the installed Dagster (ibf_dagster.compat is their one home)."""

import dagster as dg

from ibf_dagster import compat


def test_installed_dagster_is_the_version_the_shims_were_written_for():
    assert dg.__version__ == compat.DAGSTER_VERSION, "Dagster changed: re-check every function in ibf_dagster/compat.py"


def test_partition_range_tags_are_the_reserved_ones_single_run_backfills_read():
    key = dg.MultiPartitionKey({"date": "2012-01", "symbol": "AAPL"})
    tags = compat.partition_range_tags(key, key)
    assert set(tags) == {"dagster/asset_partition_range_start", "dagster/asset_partition_range_end"}
    assert all(isinstance(v, str) for v in tags.values())


def test_check_execution_history_and_planned_status():
    @dg.asset(check_specs=[dg.AssetCheckSpec("ok", asset="thing")])
    def thing():
        return dg.MaterializeResult(check_results=[dg.AssetCheckResult(check_name="ok", passed=True)])

    with dg.instance_for_test() as instance:
        assert dg.materialize([thing], instance=instance).success
        (record,) = compat.check_execution_history(instance, dg.AssetCheckKey(dg.AssetKey("thing"), "ok"))
        assert not compat.is_planned_check_execution(record)
        assert record.event.dagster_event.event_specific_data.passed


def test_mlflow_resource_is_a_resource_definition():
    calls = []
    resource = compat.mlflow_tracking_resource("exp", "sqlite:///x.db", on_init=lambda: calls.append(1))
    assert isinstance(resource, dg.ResourceDefinition) and calls == []  # nothing runs until a step needs it
