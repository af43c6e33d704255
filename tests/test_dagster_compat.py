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


def _pool_instance():
    return dg.instance_for_test(overrides={"concurrency": {"pools": {"default_limit": 1}}})


def _started_run(instance, job, tags=None) -> str:
    """A run that is STARTED in the instance (as if a process executed it), with ``tags``."""
    import uuid

    run = instance.create_run_for_job(job, run_id=str(uuid.uuid4()), tags=tags or {})
    instance.report_dagster_event(dg.DagsterEvent(dg.DagsterEventType.RUN_START.value, job_name=run.job_name), run.run_id)
    return run.run_id


@dg.asset(pool="duckdb")
def pooled():
    return 1


def test_pool_claims_and_releasing_a_runs_slots():
    with _pool_instance() as instance:
        job = dg.Definitions(assets=[pooled]).resolve_implicit_global_asset_job_def()
        holder = _started_run(instance, job)
        instance.event_log_storage.set_concurrency_slots("duckdb", 1)
        assert instance.event_log_storage.claim_concurrency_slot("duckdb", holder, "pooled").is_claimed
        assert not instance.event_log_storage.claim_concurrency_slot("duckdb", "other-run", "pooled").is_claimed
        claims = compat.pool_claims(instance, ["duckdb"])
        assert compat.PoolClaim("duckdb", holder, "pooled", True) in claims
        assert compat.PoolClaim("duckdb", "other-run", "pooled", False) in claims
        assert compat.release_pool_slots(instance, holder) == ["duckdb"]
        assert [c.run_id for c in compat.pool_claims(instance) if c.claimed] in ([], ["other-run"])  # the waiter may be handed the slot
        assert compat.release_pool_slots(instance, holder) == []


def test_dagster_never_sleeps_while_a_step_waits_for_a_slot_and_the_patch_does():
    import time

    from dagster._core.execution.plan.instance_concurrency_context import InstanceConcurrencyContext

    compat._patch_pool_waits()
    context = InstanceConcurrencyContext.__new__(InstanceConcurrencyContext)
    context._pending_claims = {"step"}
    context._pending_timeouts = {"step": time.time() + 5.0}  # the next claim attempt is 5 s away
    unpatched = InstanceConcurrencyContext._ibf_unpatched["interval"](context)
    assert unpatched <= 0, "Dagster now sleeps between claim attempts: the interval patch in compat may go"
    assert 0 < context.interval_to_next_pending_claim_check() <= compat.POOL_POLL_S


def test_a_blocked_in_process_run_calls_the_hook_and_a_raising_hook_ends_the_wait():
    import time
    import uuid

    calls = []

    def hook(run_id, pool, step_key):
        calls.append((run_id, pool, step_key))
        if len(calls) >= 3:
            raise TimeoutError("gave up")

    with _pool_instance() as instance:
        job = dg.Definitions(assets=[pooled]).resolve_implicit_global_asset_job_def()
        holder = _started_run(instance, job)
        instance.event_log_storage.set_concurrency_slots("duckdb", 1)
        assert instance.event_log_storage.claim_concurrency_slot("duckdb", holder, "h").is_claimed
        run_id = str(uuid.uuid4())
        began, cpu = time.perf_counter(), time.process_time()
        with compat.pool_wait_hook(run_id, hook):
            result = job.execute_in_process(instance=instance, raise_on_error=False, run_id=run_id)
        took, used = time.perf_counter() - began, time.process_time() - cpu
    assert not result.success
    assert calls and all(c == (run_id, "duckdb", "pooled") for c in calls) and len(calls) == 3
    assert took < 10 and used < 0.6 * took  # about one claim attempt a second, no busy loop


def test_was_interrupted_tells_an_interrupt_from_a_failure():
    @dg.asset
    def interrupted():
        raise KeyboardInterrupt()

    @dg.asset
    def broken():
        raise ValueError("no")

    with dg.instance_for_test() as instance:
        stopped = dg.materialize([interrupted], instance=instance, raise_on_error=False)
        failed = dg.materialize([broken], instance=instance, raise_on_error=False)
    assert compat.was_interrupted(stopped) and not compat.was_interrupted(failed)
