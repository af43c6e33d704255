"""Crashed runs never leave the platform stuck: find runs whose process is gone, mark them FAILED, free their pools.

A run killed with ``kill -9`` (or a machine that lost power) stays STARTED in the Dagster instance and keeps the
concurrency-pool slot its step claimed, so every later run in that pool waits forever. Before a run starts
(``ibf backfill``, ``ibf train``), when ``ibf ui`` starts, and every minute in the ``run_recovery`` sensor, ibf
looks at every STARTED/STARTING run and asks whether its process still runs:

- runs of the CLI carry ``ibf/host``, ``ibf/pid`` and ``ibf/process_start`` tags (set at launch): the pid *and* its
  start token must match, so an unrelated process that got the same pid is not mistaken for the run;
- runs launched by the daemon (Dagster's default run launcher, a local subprocess) record their worker's pid in
  every event: the pid of the RUN_START event must belong to a process that already existed at that time.

A run on another host, or whose worker has not started yet (STARTING, left to Dagster's run monitoring), is
never touched. A run that is gone is marked FAILED through ``report_run_failed`` and the slots it claimed are
freed; finished runs still holding slots (a step interrupted mid-claim) are freed too.

A dead run is never silent: its failure message says why it died as well as it can be known (only the parent of a
process learns its exit signal: ``ibf train``/``ibf backfill`` supervise their work, see ``supervise.py``; here the
kernel log may name an OOM kill), and, where the caller passes an ``alert`` sink (the ``run_recovery`` sensor, every
CLI run), it becomes a row of the ``alerts`` table and a webhook POST (check ``run_died``, one per run).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import dagster as dg

from ibf_core import processes
from ibf_core.settings import Settings
from ibf_dagster.compat import PoolClaim, interrupt_requested, pool_claims, pool_wait_hook, release_pool_slots

# Heavy imports (duckdb, numpy, pandas, pyarrow) stay inside the functions that need them:
# importing this module loads none of them.

HOST_TAG, PID_TAG, START_TAG = "ibf/host", "ibf/pid", "ibf/process_start"
LAUNCHED_BY_TAG = "ibf/launched_by"
_WATCHED = [dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.NOT_STARTED]
_FINISHED = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}
# After Ctrl-C / SIGTERM, a run stuck in Dagster's own code (it raises interrupts only inside op code) gets this
# long to stop by itself; then it is marked FAILED, its slots freed, and the process exits.
INTERRUPT_GRACE_S = 10.0

Notify = Callable[[str], None]
_log = logging.getLogger("ibf.recovery")
# Told about the runs that died (marked FAILED here): records them as alerts (see death_alerts).
DeathAlert = Callable[[list["RunDeath"]], None]
DIED_CHECK = "run_died"  # the check_name of a dead run's alert


class PoolWaitTimeout(RuntimeError):
    """A step waited longer than IBF_POOL_WAIT_TIMEOUT for a pool slot; the message names the holder."""


class RunInterrupted(KeyboardInterrupt):
    """An in-process run was stopped by Ctrl-C or SIGTERM; it is marked FAILED and holds no pool slot."""


def launch_tags() -> dict[str, str]:
    """Tags naming the process that runs an in-process run (host, pid, start token)."""
    me = processes.current()
    tags = {HOST_TAG: me.host, PID_TAG: str(me.pid)}
    if me.start is not None:
        tags[START_TAG] = me.start
    return tags


@dataclass(frozen=True)
class RunDeath:
    """A run whose process died before ending it, and why (``cause``, as well as it can be known)."""

    run_id: str
    assets: str
    partition: str
    pid: int | None
    cause: str
    launched_by: str

    def headline(self) -> str:
        """``run <id> (trained_models) died: killed by signal 9 (out of memory?)``"""
        return f"run {self.run_id} ({self.assets}) died: {self.cause}"

    def alert(self):
        """The ``alerts`` row of this death (ERROR, check ``run_died``; one per run however often it is recorded)."""
        from ibf_core.monitoring.alerts import Alert

        metadata = {"cause": self.cause, "pid": self.pid, "launched_by": self.launched_by}
        return Alert(
            asset=self.assets, check_name=DIED_CHECK, partition=self.partition, severity="ERROR",
            description=self.headline(), metadata=metadata, run_id=self.run_id, evaluation_id=f"{DIED_CHECK}:{self.run_id}",
        )


@dataclass(frozen=True)
class FreedRun:
    run_id: str
    why: str
    marked_failed: bool
    pools: tuple[str, ...]
    death: RunDeath | None = None

    def line(self) -> str:
        done = (["marked FAILED"] if self.marked_failed else []) + [f"released pool {p}" for p in self.pools]
        return f"freed run {self.run_id} ({self.why}): {', '.join(done)}"


def _run_start(instance: dg.DagsterInstance, run_id: str) -> tuple[int, float] | None:
    """(pid, timestamp) of the run's RUN_START event: the process that executes it."""
    records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.RUN_START, limit=1).records
    if not records or records[0].event_log_entry.dagster_event is None:
        return None
    entry = records[0].event_log_entry
    pid = entry.dagster_event.pid
    return (int(pid), float(entry.timestamp)) if pid else None


def _local_launcher(instance: dg.DagsterInstance) -> bool:
    """Whether daemon-launched runs execute on this host (Dagster's default launcher: a local subprocess)."""
    return type(instance.run_launcher).__name__ == "DefaultRunLauncher"


def run_process(instance: dg.DagsterInstance, run: dg.DagsterRun) -> tuple[bool | None, int | None]:
    """(is its process running: True/False/None when unknowable, its pid) for an unfinished run."""
    tags = run.tags
    if PID_TAG in tags:
        try:
            ref = processes.ProcessRef(tags.get(HOST_TAG, ""), int(tags[PID_TAG]), tags.get(START_TAG))
        except ValueError:
            return None, None
        return processes.is_running(ref), ref.pid
    if run.status != dg.DagsterRunStatus.STARTED or not _local_launcher(instance):
        return None, None  # STARTING: no worker yet; Dagster's run monitoring times it out
    started = _run_start(instance, run.run_id)
    if started is None:
        return None, None
    pid, when = started
    return processes.ran_since(pid, when), pid


def run_assets(run: dg.DagsterRun) -> str:
    """The assets a run materializes (``trained_models``; ``features, market_bars``), else its job's name."""
    if run.asset_selection:
        return ", ".join(sorted(key.to_user_string() for key in run.asset_selection))
    return f"job {run.job_name}"


def run_partition(run: dg.DagsterRun) -> str:
    """The run's partition key, or ``first...last`` for a range run ('' when unpartitioned)."""
    tags = run.tags
    if "dagster/partition" in tags:
        return tags["dagster/partition"]
    first, last = tags.get("dagster/asset_partition_range_start"), tags.get("dagster/asset_partition_range_end")
    return f"{first}...{last}" if first and last else ""


def mark_dead(instance: dg.DagsterInstance, run: dg.DagsterRun, pid: int | None, cause: str) -> tuple[RunDeath, tuple[str, ...]]:
    """Mark ``run`` FAILED with why its process died and free its pool slots: (the death, the pools freed)."""
    death = RunDeath(
        run.run_id, run_assets(run), run_partition(run), pid, cause, run.tags.get(LAUNCHED_BY_TAG, "the Dagster daemon/UI")
    )
    instance.report_run_failed(run, message=f"ibf: {death.headline()}; marked FAILED")
    return death, tuple(release_pool_slots(instance, run.run_id))


def unfinished_runs_of(instance: dg.DagsterInstance, ref: processes.ProcessRef) -> list[dg.DagsterRun]:
    """Unfinished runs the process ``ref`` started (its ``ibf/host``, ``ibf/pid`` and, when known, start token)."""
    records = instance.get_run_records(dg.RunsFilter(statuses=_WATCHED, tags={HOST_TAG: ref.host, PID_TAG: str(ref.pid)}))
    runs = [r.dagster_run for r in records]
    return sorted((r for r in runs if ref.start is None or r.tags.get(START_TAG) in (None, ref.start)), key=lambda r: r.run_id)


def gone_cause(pid: int | None, since: float | None) -> str:
    """Why a run's process (not our child) is gone, as far as the kernel log can tell."""
    if pid is not None and processes.oom_killed(pid, since):
        return f"killed by the OOM killer (pid {pid})"
    return f"its process (pid {pid}) is gone without ending the run (killed? out of memory?)"


def death_alerts(settings: Settings, log: Notify | None = None) -> DeathAlert:
    """An ``alert`` sink: each dead run becomes an ``alerts`` row and a POST to IBF_ALERT_WEBHOOK (never raises:
    a failure to record is logged, the run stays marked FAILED)."""

    def record(deaths: list[RunDeath]) -> None:
        if not deaths:
            return
        from ibf_core.monitoring.alerts import record_alerts
        from ibf_core.storage.backends import open_warehouse

        webhook = settings.alert_webhook.get_secret_value() if settings.alert_webhook else None
        try:
            record_alerts(open_warehouse(settings), [d.alert() for d in deaths], webhook, log=log)
        except Exception as exc:  # the alert is a courtesy; recovery itself must go on
            (log or _log.warning)(f"could not record the alert for {', '.join(d.run_id for d in deaths)}: {type(exc).__name__}: {exc}")

    return record


def recover_dead_runs(instance: dg.DagsterInstance, alert: DeathAlert | None = None) -> list[FreedRun]:
    """Mark unfinished runs whose process is gone FAILED (saying why) and free their pool slots; free slots of
    finished runs. ``alert`` is told about the runs marked FAILED."""
    freed: list[FreedRun] = []
    done: set[str] = set()
    for record in instance.get_run_records(dg.RunsFilter(statuses=_WATCHED)):
        run = record.dagster_run
        running, pid = run_process(instance, run)
        if running is not False:
            continue
        current = instance.get_run_by_id(run.run_id)
        if current is None or current.status in _FINISHED:  # ended meanwhile, or freed by another ibf process
            continue
        death, pools = mark_dead(instance, run, pid, gone_cause(pid, record.start_time))
        freed.append(FreedRun(run.run_id, f"pid {pid} gone", True, pools, death))
        done.add(run.run_id)
    for run_id in sorted({c.run_id for c in pool_claims(instance)} - done):
        run = instance.get_run_by_id(run_id)
        if run is None or run.status in _FINISHED:
            status = run.status.value if run is not None else "deleted"
            pools = tuple(release_pool_slots(instance, run_id))
            if pools:
                freed.append(FreedRun(run_id, f"{status}, still holding a slot", False, pools))
    if alert is not None:
        alert([f.death for f in freed if f.death is not None])
    return freed


def describe_run(instance: dg.DagsterInstance, run_id: str) -> str:
    """``run <id> (ibf backfill, pid 4242 on host, started 12:03:04)``: enough to find and stop it."""
    record = instance.get_run_record_by_id(run_id)
    if record is None:
        return f"run {run_id} (deleted)"
    run = record.dagster_run
    parts = [run.tags.get(LAUNCHED_BY_TAG, "launched by the Dagster daemon/UI")]
    if PID_TAG in run.tags:
        parts.append(f"pid {run.tags[PID_TAG]} on {run.tags.get(HOST_TAG, '?')}")
    if record.start_time:
        parts.append(f"started {dt.datetime.fromtimestamp(record.start_time).strftime('%Y-%m-%d %H:%M:%S')}")
    parts.append(run.status.value)
    return f"run {run_id} ({', '.join(parts)})"


class PoolWait:
    """The pool-wait hook of one in-process run: says what it waits for, frees dead holders, gives up in time."""

    def __init__(
        self, instance: dg.DagsterInstance, run_id: str, timeout_s: float, notify: Notify, check_every_s: float = 2.0,
        alert: DeathAlert | None = None,
    ):
        self.instance, self.run_id, self.timeout_s, self.notify, self.alert = instance, run_id, timeout_s, notify, alert
        self.check_every_s = check_every_s
        self.error: str | None = None
        self.interrupted = False
        # per (pool, step): each step's wait is announced and timed on its own
        self._since: dict[tuple[str, str], float] = {}
        self._announced: dict[tuple[str, str], str] = {}
        self._checked = 0.0

    def _holders(self, pool: str) -> list[PoolClaim]:
        return [c for c in pool_claims(self.instance, [pool]) if c.claimed and c.run_id != self.run_id]

    def _look(self, pool: str, step_key: str) -> str:
        """Free dead holders, then name the live ones (announced once per change)."""
        for freed in recover_dead_runs(self.instance, self.alert):
            self.notify(freed.line())
        holders = sorted({c.run_id for c in self._holders(pool)})
        described = "; ".join(describe_run(self.instance, r) for r in holders) or "no run (the slot is being handed over)"
        if self._announced.get((pool, step_key)) != described:
            self._announced[(pool, step_key)] = described
            self.notify(f"waiting for pool {pool}: held by {described}; giving up after {self.timeout_s:.0f} s (IBF_POOL_WAIT_TIMEOUT)")
        return described

    def __call__(self, run_id: str, pool: str, step_key: str) -> None:
        if interrupt_requested():
            self.interrupted = True
            raise KeyboardInterrupt()
        now = time.monotonic()
        first = self._since.setdefault((pool, step_key), now)
        if now == first or now - self._checked >= self.check_every_s:
            self._checked = now
            self._look(pool, step_key)
        if now - first > self.timeout_s:
            holder = self._announced.get((pool, step_key), "another run")
            self.error = (
                f"gave up after {self.timeout_s:.0f} s waiting for pool {pool}: held by {holder}; let it finish, "
                "stop it (Dagster UI: Runs), or raise IBF_POOL_WAIT_TIMEOUT"
            )
            raise PoolWaitTimeout(self.error)


def _finish_own_run(instance: dg.DagsterInstance, run_id: str, why: str) -> None:
    """The run this process executed is over: it must not stay unfinished or keep a slot."""
    run = instance.get_run_by_id(run_id)
    if run is not None and run.status not in _FINISHED:
        instance.report_run_failed(run, message=f"ibf: {why}; marked FAILED")
    release_pool_slots(instance, run_id)


def _watch_interrupts(instance: dg.DagsterInstance, run_id: str, done: threading.Event, grace_s: float, notify: Notify) -> None:
    """After Ctrl-C/SIGTERM, give the run ``grace_s`` to stop; then mark it FAILED, free its slots and exit."""
    seen: float | None = None
    while not done.wait(0.05):
        if seen is None and interrupt_requested():
            seen = time.monotonic()
        if seen is not None and time.monotonic() - seen > grace_s:
            _finish_own_run(instance, run_id, "interrupted (Ctrl-C or SIGTERM)")
            notify(f"error: interrupted: run {run_id} did not stop within {grace_s:.0f} s; marked FAILED, slots released")
            os._exit(130)


@contextmanager
def guarded_run(
    instance: dg.DagsterInstance, run_id: str, timeout_s: float, notify: Notify, grace_s: float = INTERRUPT_GRACE_S,
    alert: DeathAlert | None = None,
) -> Iterator[PoolWait]:
    """Execute an in-process run inside this: its pool waits are announced and time out (dead holders freed and
    told to ``alert``), an interrupt stops it within ``grace_s``, and whatever happens it ends finished and holding
    no slot."""
    wait = PoolWait(instance, run_id, timeout_s, notify, alert=alert)
    done = threading.Event()
    watcher = threading.Thread(
        target=_watch_interrupts, args=(instance, run_id, done, grace_s, notify), name="ibf-interrupts", daemon=True
    )
    watcher.start()
    try:
        with pool_wait_hook(run_id, wait):
            yield wait
    except BaseException as exc:
        _finish_own_run(instance, run_id, f"the process running it stopped ({type(exc).__name__})")
        raise
    finally:
        done.set()
        watcher.join()
    _finish_own_run(instance, run_id, "its process finished without ending it")
