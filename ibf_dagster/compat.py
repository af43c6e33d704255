"""Every use of Dagster internals or legacy APIs, in one place, pinned to the Dagster version ibf is tested on.

``tests/dagster/test_dagster_compat.py`` checks each of these against the installed Dagster; when Dagster is upgraded,
that test names what moved, and this module is the only one to mend.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import dagster as dg
from dagster._core.definitions.executor_definition import (
    _core_in_process_executor_creation,
    _core_multiprocess_executor_creation,
    multi_or_in_process_executor,
)
from dagster._core.definitions.partitions.subset.default import DefaultPartitionsSubset

# The base of the batched SQLite event log below (a class needs its base when it is defined).
from dagster._core.events import ASSET_EVENTS as _ASSET_EVENTS
from dagster._core.events import RunFailureReason
from dagster._core.events.log import EventLogEntry as _EventLogEntry
from dagster._core.execution.context.output import _key_range_to_subset
from dagster._core.execution.plan.instance_concurrency_context import InstanceConcurrencyContext as Context
from dagster._core.executor.base import Executor
from dagster._core.run_coordinator.queued_run_coordinator import QueuedRunCoordinator
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus
from dagster._core.storage.event_log.schema import SqlEventLogStorageTable as _EventLogsTable
from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage as _SqliteEventLogStorage
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG
from dagster._daemon import controller
from dagster._utils.interrupts import check_captured_interrupt

# Heavy imports (dagster_mlflow, numpy, pandas, talib) stay inside the functions that need them:
# importing this module loads none of them.

DAGSTER_VERSION = "1.13.27"  # the version these shims were written and tested against (pyproject pins it)


def is_planned_check_execution(record: Any) -> bool:
    """Whether an asset-check execution record is still in flight (planned, not yet evaluated)."""
    return record.status == AssetCheckExecutionRecordStatus.PLANNED


def check_execution_history(instance: dg.DagsterInstance, key: dg.AssetCheckKey, limit: int = 1000) -> list:
    """The recorded executions of one asset check (no public API lists them with their storage ids)."""
    return list(instance.event_log_storage.get_asset_check_execution_history(key, limit=limit))


def partition_range_tags(start: dg.MultiPartitionKey | str, end: dg.MultiPartitionKey | str) -> dict[str, str]:
    """Run tags that make one run materialize the partition range [start, end] (a single-run backfill).

    ``execute_in_process`` has no range argument; the daemon's backfills set these reserved tags themselves.
    """
    return {ASSET_PARTITION_RANGE_START_TAG: str(start), ASSET_PARTITION_RANGE_END_TAG: str(end)}


def mlflow_tracking_resource(experiment: str, tracking_uri: str, on_init) -> dg.ResourceDefinition:
    """dagster-mlflow's tracking resource (a legacy function-style resource; it has no Pythonic version).

    ``on_init()`` runs before the resource opens its MLflow run (ibf creates the experiment with its artifact
    location there).
    """
    # The keys ibf configures, of dagster-mlflow's CONFIG_SCHEMA (MlFlow reads the others with .get): importing
    # dagster_mlflow imports mlflow (~2.4 s), which every ibf command and run paid building definitions.
    schema = {
        "experiment_name": dg.Field(str),
        "mlflow_tracking_uri": dg.Field(dg.Noneable(str), default_value=None, is_required=False),
        "extra_tags": dg.Field(dg.Permissive(), is_required=False),
    }

    @dg.resource(config_schema=schema, description="MLflow tracking (dagster-mlflow)")
    def mlflow_tracking(init_context):
        from ibf_core.models.registry import quiet_mlflow

        quiet_mlflow()  # before dagster-mlflow imports mlflow: its loggers take their level at import
        from dagster_mlflow.resources import MlFlow

        on_init()
        return MlFlow(init_context)

    return mlflow_tracking.configured({"experiment_name": experiment, "mlflow_tracking_uri": tracking_uri, "extra_tags": {"ibf": "trained_models"}})


def last_recorded_partition(context: dg.AssetExecutionContext) -> str:
    """The partition whose materialization event a range run records last: the asset's latest materialization.

    Dagster records a range run's events in the order of the output's partition subset (``_key_range_to_subset``,
    a set of the range's keys), not in the range's order; built the same way, the same keys list in the same order.
    """
    subset = _key_range_to_subset(context.partition_key_range, context.assets_def.partitions_def, context.instance)
    return list(subset.get_partition_keys())[-1]


# ----- concurrency pools ----------------------------------------------------------------------------
@dataclass(frozen=True)
class PoolClaim:
    """A step of a run holding (``claimed``) or waiting for (not ``claimed``) a slot of a concurrency pool."""

    pool: str
    run_id: str
    step_key: str
    claimed: bool


def pool_claims(instance: dg.DagsterInstance, pools: Sequence[str] | None = None) -> list[PoolClaim]:
    """Every claimed slot and waiting step of ``pools`` (all pools when None); the instance has no public API."""
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        return []
    keys = sorted(storage.get_concurrency_keys()) if pools is None else list(pools)
    out: list[PoolClaim] = []
    for key, info in storage.get_concurrency_infos(keys).items():
        held = {(slot.run_id, slot.step_key) for slot in info.claimed_slots}
        out += [PoolClaim(key, run_id, step_key, True) for run_id, step_key in sorted(held)]
        out += [
            PoolClaim(key, p.run_id, p.step_key, False) for p in info.pending_steps if (p.run_id, p.step_key) not in held
        ]
    return out


def release_pool_slots(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    """Free every slot ``run_id`` holds or waits for (what the UI's "free slots" button does); returns the pools."""
    pools = sorted({claim.pool for claim in pool_claims(instance) if claim.run_id == run_id})
    if pools:
        instance.event_log_storage.free_concurrency_slots_for_run(run_id)
    return pools


# Called as hook(run_id, pool, step_key) each time the in-process executor finds a step still waiting for a pool
# slot (about once a second); it may raise to end the wait (the run then fails and its pending claims are freed).
PoolWaitHook = Callable[[str, str, str], None]
_pool_wait_hooks: dict[str, PoolWaitHook] = {}
POOL_POLL_S = 1.0


def _patch_pool_waits() -> None:
    """Patch Dagster's per-run concurrency context once: call the hooks of a blocked claim, and sleep between tries.

    Dagster 1.13.27's ``interval_to_next_pending_claim_check`` returns ``min(0, ...)``, never a positive number, so
    the in-process executor loops without sleeping while a step waits for a slot: 100% CPU for as long as the
    holder keeps it, and forever when the holder is dead. The patched interval sleeps until the next try (at most
    ``POOL_POLL_S``, so a hook sees timeouts and interrupts promptly).
    """
    if getattr(Context, "_ibf_patched", False):
        return
    original_claim = Context.claim

    def claim(self, concurrency_key: str, step_key: str, step_priority: int = 0) -> bool:
        claimed = original_claim(self, concurrency_key, step_key, step_priority)
        hook = _pool_wait_hooks.get(self._run_id)
        if not claimed and hook is not None:
            hook(self._run_id, concurrency_key, step_key)
        return claimed

    def interval_to_next_pending_claim_check(self) -> float:
        if not self._pending_claims:
            return 0.0
        now = time.time()
        return max(0.0, min([POOL_POLL_S, *(ready - now for ready in self._pending_timeouts.values())]))

    Context._ibf_unpatched = {"claim": original_claim, "interval": Context.interval_to_next_pending_claim_check}
    Context.claim = claim
    Context.interval_to_next_pending_claim_check = interval_to_next_pending_claim_check
    Context._ibf_patched = True


@contextmanager
def pool_wait_hook(run_id: str, hook: PoolWaitHook) -> Iterator[None]:
    """While inside, ``hook`` is told about every blocked pool claim of the in-process run ``run_id``."""
    _patch_pool_waits()
    _pool_wait_hooks[run_id] = hook
    try:
        yield
    finally:
        _pool_wait_hooks.pop(run_id, None)


# ----- interrupts -----------------------------------------------------------------------------------
def interrupt_requested() -> bool:
    """Whether Dagster has captured a SIGINT/SIGTERM it has not raised yet (it raises them only inside op code)."""
    return check_captured_interrupt()


def was_interrupted(result: dg.ExecuteInProcessResult) -> bool:
    """Whether an in-process run ended because it was interrupted (Ctrl-C, SIGTERM), not because a step failed."""
    for event in result.all_events:
        if event.is_step_failure and event.step_failure_data and event.step_failure_data.error:
            if event.step_failure_data.error.cls_name in ("DagsterExecutionInterruptedError", "KeyboardInterrupt"):
                return True
        if event.event_type == dg.DagsterEventType.RUN_FAILURE:
            data = event.event_specific_data
            if getattr(data, "failure_reason", None) == RunFailureReason.UNEXPECTED_TERMINATION:
                return True
    return False


def single_step_in_process_executor():
    """Dagster's default executor (``multiprocess`` unless run config says ``in_process``), except that a run of
    one step executes it in the run worker's own process.

    A daemon-launched run of one step (every run of a UI partition backfill of one asset) otherwise starts a step
    subprocess that imports the code location again (seconds) while it already holds the step's pool slot, so the
    runs of one backfill queue behind each other's start-up. In process, the slot is held only while the asset
    computes. The pool-wait patch (sleep between claim checks) applies, so a waiting step does not spin.
    """
    class SingleStepInProcess(Executor):
        def __init__(self, multi, single):
            self._multi, self._single = multi, single

        @property
        def retries(self):
            return self._multi.retries

        @property
        def step_dependency_config(self):
            return self._multi.step_dependency_config

        def execute(self, plan_context, execution_plan):
            if len(execution_plan.step_keys_to_execute) == 1:
                _patch_pool_waits()
                yield from self._single.execute(plan_context, execution_plan)
            else:
                yield from self._multi.execute(plan_context, execution_plan)

    @dg.executor(
        name="ibf_multi_or_in_process",
        config_schema=multi_or_in_process_executor.config_schema,
        requirements=multi_or_in_process_executor.get_requirements,
    )
    def executor(init_context):
        config = init_context.executor_config
        if "in_process" in config:
            return _core_in_process_executor_creation(config["in_process"])
        multi = _core_multiprocess_executor_creation(config["multiprocess"])
        single = _core_in_process_executor_creation({"retries": config["multiprocess"].get("retries", {"enabled": {}})})
        return SingleStepInProcess(multi, single)

    return executor


# ----- backfill planning: a symbol x date rectangle is one run -------------------------------------------------
# Dagster 1.13.27 turns a 2-D partition subset into run ranges by holding each key of the dimension with fewer keys
# constant (``DefaultPartitionsSubset.get_partition_key_ranges``): 20 symbols x 12 months from the UI's dialog
# become 12 single-run runs, each paying a run start and the pool, although the dialog says "single run". A 2-D
# range is the cartesian product of its per-dimension ranges (``MultiPartitionsDefinition.get_partition_keys_in_range``,
# which is how ``ibf backfill`` covers a rectangle with one run), so a subset that is a union of rectangles can be
# planned as one range per rectangle. The planner runs in the daemon (asset backfills, automation ticks), which
# loads only the instance's classes: ``RectangleRunCoordinator`` (dagster.yaml) installs the patch there.


def rectangles(pairs: Sequence[tuple[str, str]], primary: Sequence[str], secondary: Sequence[str]) -> list[tuple[tuple[str, str], tuple[str, str]]]:
    """The (primary, secondary) key pairs as ``((p_first, p_last), (s_first, s_last))`` rectangles that cover them
    exactly once, each contiguous in the dimensions' key orders. Keys of one dimension that hold the same set of
    keys of the other are grouped, and each group's contiguous runs crossed with the set's; both dimensions are
    tried and the fewer rectangles kept (a full rectangle is one either way)."""
    by_primary = _grouped(pairs, primary, secondary)
    by_secondary = [(p, s) for s, p in _grouped([(s, p) for p, s in pairs], secondary, primary)]
    p_at = {key: i for i, key in enumerate(primary)}
    s_at = {key: i for i, key in enumerate(secondary)}
    best = by_primary if len(by_primary) <= len(by_secondary) else by_secondary
    return sorted(best, key=lambda r: (p_at[r[0][0]], s_at[r[1][0]]))


def _grouped(pairs: Sequence[tuple[str, str]], outer: Sequence[str], inner: Sequence[str]) -> list[tuple[tuple[str, str], tuple[str, str]]]:
    o_at = {key: i for i, key in enumerate(outer)}
    i_at = {key: i for i, key in enumerate(inner)}
    by_outer: dict[str, set[str]] = {}
    for o, i in pairs:
        by_outer.setdefault(o, set()).add(i)
    groups: dict[frozenset[str], list[str]] = {}
    for o, found in by_outer.items():
        groups.setdefault(frozenset(found), []).append(o)
    out = []
    for found, os_ in groups.items():
        for o_run in _contiguous_runs(sorted(os_, key=o_at.__getitem__), o_at):
            for i_run in _contiguous_runs(sorted(found, key=i_at.__getitem__), i_at):
                out.append(((o_run[0], o_run[-1]), (i_run[0], i_run[-1])))
    return out


def _contiguous_runs(keys: list[str], at: dict[str, int]) -> list[list[str]]:
    runs: list[list[str]] = []
    for key in keys:
        if runs and at[key] == at[runs[-1][-1]] + 1:
            runs[-1].append(key)
        else:
            runs.append([key])
    return runs


def rectangle_key_ranges(subset_keys: Sequence[str], partitions_def: Any) -> list[dg.PartitionKeyRange]:
    """A multi-partition subset as one 2-D ``PartitionKeyRange`` per rectangle (``rectangles``); every key of the
    subset in exactly one range, and no other key."""
    primary_def, secondary_def = partitions_def.primary_dimension, partitions_def.secondary_dimension
    pairs = []
    for key in subset_keys:
        by_dimension = partitions_def.get_partition_key_from_str(key).keys_by_dimension
        pairs.append((by_dimension[primary_def.name], by_dimension[secondary_def.name]))
    primary = primary_def.partitions_def.get_partition_keys()
    secondary = secondary_def.partitions_def.get_partition_keys()

    def key(p: str, s: str) -> dg.MultiPartitionKey:
        return dg.MultiPartitionKey({primary_def.name: p, secondary_def.name: s})

    return [dg.PartitionKeyRange(key(p0, s0), key(p1, s1)) for (p0, p1), (s0, s1) in rectangles(pairs, primary, secondary)]


def install_rectangle_backfills() -> None:
    """Plan multi-partition subsets as rectangles wherever this process plans runs (idempotent).

    Dagster's grouping is kept when it gives fewer ranges (it never does for a union of rectangles), and when the
    rectangle planning fails (logged: the backfill still runs, in Dagster's runs)."""
    if getattr(DefaultPartitionsSubset, "_ibf_rectangles", False):
        return
    original = DefaultPartitionsSubset.get_partition_key_ranges

    def get_partition_key_ranges(self, partitions_def):
        ranges = original(self, partitions_def)
        if not isinstance(partitions_def, dg.MultiPartitionsDefinition) or len(ranges) <= 1:
            return ranges
        try:
            planned = rectangle_key_ranges(sorted(self.subset), partitions_def)
        except Exception:  # noqa: BLE001 - a planning shortcut must never stop a backfill
            logging.getLogger("ibf_dagster.compat").warning("rectangle planning failed; Dagster's runs are used", exc_info=True)
            return ranges
        return planned if len(planned) < len(ranges) else ranges

    DefaultPartitionsSubset.get_partition_key_ranges = get_partition_key_ranges
    DefaultPartitionsSubset._ibf_unpatched = original
    DefaultPartitionsSubset._ibf_rectangles = True


def _queued_run_coordinator_base():
    return QueuedRunCoordinator


# The backfill daemon looks at its backfills every DEFAULT_DAEMON_INTERVAL_SECONDS (30 s in 1.13.27, read by
# ``execute_backfill_iteration_loop`` when it starts): a UI backfill waits up to 30 s for its first run and up to
# 30 s after its last one to be marked complete, more than the whole run of a 20 x 12 rectangle. The constant is
# also the asset daemon's default interval, which dagster.yaml sets explicitly (auto_materialize) to stay at 30 s.
BACKFILL_TICK_S = 3


def shorten_backfill_tick(seconds: int = BACKFILL_TICK_S) -> None:
    """Make the backfill daemon of this process (started after the instance loads) tick every ``seconds``."""
    controller.DEFAULT_DAEMON_INTERVAL_SECONDS = seconds


class RectangleRunCoordinator(_queued_run_coordinator_base()):
    """Dagster's queued run coordinator; being the instance's class, it brings ibf's backfill planning into every
    process that loads the instance (the daemon plans backfills and automation runs): rectangles as one run each,
    and a backfill daemon that ticks every ``BACKFILL_TICK_S``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        install_rectangle_backfills()
        shorten_backfill_tick()
        super().__init__(*args, **kwargs)


# ----- the SQLite event log, writing a step's materializations as one batch -------------------------------------
# Dagster's SQLite event log, writing a step's batch of partition materializations in one transaction per file.
# 
# A daily run of one month for 500 symbols records 500 materializations per asset. The stock SQLite storage
# stores them one by one (a connection, an insert in the run's file, then an insert, the tag rows and the
# asset-key upsert in the index file, each compiled anew): ~11 ms an event, 5.5 s a step, most of a daily
# cycle's Dagster cost. Dagster already hands storages such batches when ``DAGSTER_EVENT_BATCH_SIZE`` > 0 (its
# Postgres storage inserts them at once); SQLite's base class just loops. This subclass stores a batch of one
# asset's events of one kind with one insert in the run's file and one index transaction: the same rows, the
# asset-key row updated once, from the batch's last event (what the loop leaves there too).


class BatchedSqliteEventLogStorage(_SqliteEventLogStorage):
    """``SqliteEventLogStorage`` whose ``store_event_batch`` writes a homogeneous batch at once."""

    @classmethod
    def from_config_value(cls, inst_data: Any, config_value: Any) -> BatchedSqliteEventLogStorage:
        return cls(inst_data=inst_data, **config_value)

    def store_event_batch(self, events: Sequence[_EventLogEntry]) -> None:
        if not _homogeneous_asset_events(events):
            super().store_event_batch(events)
            return
        rows = [self._event_to_row(event) for event in events]  # the rows prepare_insert_event would insert
        # One statement compiled once and executed for every row (SQLite's RETURNING gives the ids in row order);
        # compiling an insert per event was a third of a large backfill's bookkeeping.
        insert_returning_ids = _EventLogsTable.insert().returning(_EventLogsTable.c.id, sort_by_parameter_order=True)
        # The index first: if it fails, nothing was written and Dagster's fallback stores the events one by one.
        with self.index_transaction() as conn:
            event_ids = [row[0] for row in conn.execute(insert_returning_ids, rows)]
            self._store_asset_event_tags(conn, events, event_ids)
            self._store_asset_event(conn, events[-1], event_ids[-1])
        with self.run_connection(events[0].run_id) as conn:
            conn.execute(_EventLogsTable.insert(), rows)


def _homogeneous_asset_events(events: Sequence[_EventLogEntry]) -> bool:
    """Several asset events of one run, one asset and one kind (a step's partition materializations)."""
    if len(events) < 2:
        return False
    kinds = set()
    for event in events:
        dagster_event = event.dagster_event
        if dagster_event is None or dagster_event.event_type not in _ASSET_EVENTS or dagster_event.asset_key is None:
            return False
        kinds.add((event.run_id, dagster_event.asset_key, dagster_event.event_type))
    return len(kinds) == 1
