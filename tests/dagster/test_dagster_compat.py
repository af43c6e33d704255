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


# ----- backfill planning: a rectangle is one run ------------------------------------------------------------------
def _rectangle_graph():
    symbols = dg.DynamicPartitionsDefinition(name="symbol")
    months = dg.MonthlyPartitionsDefinition(start_date="2020-01-01", end_date="2021-01-01")
    partitions = dg.MultiPartitionsDefinition({"date": months, "symbol": symbols})

    @dg.asset(partitions_def=partitions, backfill_policy=dg.BackfillPolicy.single_run())
    def bars(): ...

    return partitions, months.get_partition_keys(), dg.Definitions(assets=[bars]).resolve_asset_graph()


def _planned_runs(instance, graph, keys) -> list[tuple[str, str]]:
    """What the daemon plans for a backfill of ``keys`` (Dagster's own planner): the runs' (range start, end)."""
    from dagster._core.definitions.automation_tick_evaluation_context import build_run_requests_with_backfill_policies
    from dagster._core.definitions.events import AssetKeyPartitionKey
    from dagster._core.definitions.partitions.context import partition_loading_context

    wanted = {AssetKeyPartitionKey(dg.AssetKey("bars"), key) for key in keys}
    with partition_loading_context(dynamic_partitions_store=instance):
        requests = build_run_requests_with_backfill_policies(asset_partitions=wanted, asset_graph=graph, dynamic_partitions_store=instance)
    return [(r.tags["dagster/asset_partition_range_start"], r.tags["dagster/asset_partition_range_end"]) for r in requests]


def _covered(instance, partitions, runs) -> list[str]:
    return [str(key) for start, end in runs
            for key in partitions.get_partition_keys_in_range(dg.PartitionKeyRange(start, end), dynamic_partitions_store=instance)]


def test_a_symbol_by_month_rectangle_is_planned_as_one_run_and_dagster_alone_splits_it():
    from dagster._core.definitions.partitions.subset.default import DefaultPartitionsSubset

    partitions, months, graph = _rectangle_graph()
    symbols = [f"S{i:02d}" for i in range(30)]
    rectangle = [dg.MultiPartitionKey({"date": m, "symbol": s}) for m in months for s in symbols[:20]]
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("symbol", symbols)
        compat.install_rectangle_backfills()
        original = DefaultPartitionsSubset._ibf_rectangles and DefaultPartitionsSubset._ibf_unpatched
        try:
            DefaultPartitionsSubset.get_partition_key_ranges, patched = original, DefaultPartitionsSubset.get_partition_key_ranges
            split = _planned_runs(instance, graph, rectangle)
        finally:
            DefaultPartitionsSubset.get_partition_key_ranges = patched
        # When this fails, Dagster plans 2-D subsets differently: re-check whether the patch is still needed.
        assert len(split) == 12, "Dagster no longer splits a 20 x 12 rectangle into one run per month"
        runs = _planned_runs(instance, graph, rectangle)
        assert runs == [("2020-01-01|S00", "2020-12-01|S19")]
        assert sorted(_covered(instance, partitions, runs)) == sorted(map(str, rectangle))


def test_a_union_of_rectangles_is_one_run_each_and_covers_exactly_the_selection():
    partitions, months, graph = _rectangle_graph()
    symbols = [f"S{i:02d}" for i in range(30)]
    # symbols 0-4 and 10-14 (not contiguous) over Jan-Jun, plus symbol 20 over Mar and Sep
    chosen = ([dg.MultiPartitionKey({"date": m, "symbol": s}) for m in months[:6] for s in symbols[:5] + symbols[10:15]]
              + [dg.MultiPartitionKey({"date": m, "symbol": "S20"}) for m in (months[2], months[8])])
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("symbol", symbols)
        compat.install_rectangle_backfills()
        runs = _planned_runs(instance, graph, chosen)
        assert len(runs) == 4  # two symbol blocks x Jan-Jun, and S20's two separate months
        covered = _covered(instance, partitions, runs)
        assert len(covered) == len(set(covered)) and sorted(covered) == sorted(map(str, chosen))


def test_rectangles_cover_any_selection_exactly_once():
    import random

    primary, secondary = [f"p{i}" for i in range(9)], [f"s{i}" for i in range(7)]
    rng = random.Random(7)
    for _ in range(200):
        pairs = {(p, s) for p in primary for s in secondary if rng.random() < rng.choice((0.2, 0.6, 0.95))}
        if not pairs:
            continue
        cells = []
        for (p0, p1), (s0, s1) in compat.rectangles(sorted(pairs), primary, secondary):
            cells += [(p, s) for p in primary[primary.index(p0): primary.index(p1) + 1]
                      for s in secondary[secondary.index(s0): secondary.index(s1) + 1]]
        assert len(cells) == len(set(cells)) and set(cells) == pairs


def test_the_instance_coordinator_is_dagsters_queued_one_with_the_planning(ibf_home):
    from dagster._core.definitions.partitions.subset.default import DefaultPartitionsSubset
    from dagster._core.run_coordinator import QueuedRunCoordinator

    from ibf_core.settings import load_settings
    from ibf_dagster.instance import get_instance

    instance = get_instance(load_settings())
    assert isinstance(instance.run_coordinator, QueuedRunCoordinator)
    assert isinstance(instance.run_coordinator, compat.RectangleRunCoordinator)
    assert instance.get_concurrency_config().run_queue_config.max_concurrent_runs == 4  # dagster.yaml's concurrency
    assert DefaultPartitionsSubset._ibf_rectangles
    from dagster._daemon import controller

    assert controller.DEFAULT_DAEMON_INTERVAL_SECONDS == compat.BACKFILL_TICK_S  # read by the backfill daemon's loop
    assert instance.auto_materialize_minimum_interval_seconds == 30  # the asset daemon keeps Dagster's default
    assert instance.run_coordinator.dequeue_interval_seconds == 2
