"""Runs whose process is gone are found (pid and start time), marked FAILED and their pool slots freed."""

import dataclasses
import os
import subprocess
import sys
import uuid

import dagster as dg

from helpers.sensors import sensor_context
from ibf_core import processes
from ibf_core.settings import load_settings
from ibf_dagster.compat import pool_claims
from ibf_dagster.definitions import build_definitions
from ibf_dagster.recovery import HOST_TAG, PID_TAG, START_TAG, launch_tags, recover_dead_runs


@dg.asset(pool="duckdb")
def pooled():
    return 1


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid



def start_run(instance, tags=None, pid=None, timestamp=None) -> str:
    """A STARTED run; its RUN_START event carries ``pid`` (the run worker's, as Dagster records it)."""
    job = dg.Definitions(assets=[pooled]).resolve_implicit_global_asset_job_def()
    run = instance.create_run_for_job(job, run_id=str(uuid.uuid4()), tags=tags or {})
    event = dg.DagsterEvent(dg.DagsterEventType.RUN_START.value, job_name=run.job_name, pid=pid or os.getpid())
    entry = dg.EventLogEntry(
        error_info=None, level="DEBUG", user_message="", run_id=run.run_id,
        timestamp=timestamp if timestamp is not None else __import__("time").time(), dagster_event=event,
    )
    instance.handle_new_event(entry)
    assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.STARTED
    return run.run_id


def claim(instance, run_id: str) -> None:
    instance.event_log_storage.set_concurrency_slots("duckdb", 4)
    assert instance.event_log_storage.claim_concurrency_slot("duckdb", run_id, "pooled").is_claimed


def test_runs_whose_process_is_gone_are_failed_and_freed_live_ones_kept(instance):
    me = processes.current()
    gone = dead_pid()
    cli_dead = start_run(instance, {HOST_TAG: me.host, PID_TAG: str(gone), START_TAG: "boot:1"})
    cli_reused = start_run(instance, {HOST_TAG: me.host, PID_TAG: str(me.pid), START_TAG: "another-boot:42"})
    cli_alive = start_run(instance, launch_tags())
    cli_elsewhere = start_run(instance, {HOST_TAG: "another-host", PID_TAG: str(gone)})
    daemon_dead = start_run(instance, pid=gone)
    daemon_alive = start_run(instance, pid=me.pid)
    daemon_reused = start_run(instance, pid=me.pid, timestamp=1_000_000.0)  # our pid, but the run started in 1970
    for run_id in (cli_dead, daemon_dead, cli_alive):
        claim(instance, run_id)

    freed = {f.run_id: f for f in recover_dead_runs(instance)}

    assert set(freed) == {cli_dead, cli_reused, daemon_dead, daemon_reused}
    assert freed[cli_dead].line() == f"freed run {cli_dead} (pid {gone} gone): marked FAILED, released pool duckdb"
    assert freed[cli_reused].line() == f"freed run {cli_reused} (pid {me.pid} gone): marked FAILED"
    assert freed[daemon_dead].pools == ("duckdb",)
    status = {r: instance.get_run_by_id(r).status for r in (cli_dead, cli_reused, cli_alive, cli_elsewhere, daemon_dead, daemon_alive, daemon_reused)}
    assert status == {
        cli_dead: dg.DagsterRunStatus.FAILURE,
        cli_reused: dg.DagsterRunStatus.FAILURE,
        cli_alive: dg.DagsterRunStatus.STARTED,
        cli_elsewhere: dg.DagsterRunStatus.STARTED,  # another host: ibf cannot tell, so it never touches it
        daemon_dead: dg.DagsterRunStatus.FAILURE,
        daemon_alive: dg.DagsterRunStatus.STARTED,
        daemon_reused: dg.DagsterRunStatus.FAILURE,
    }
    assert [c.run_id for c in pool_claims(instance)] == [cli_alive]
    assert recover_dead_runs(instance) == []  # nothing left to do


def test_a_finished_run_still_holding_a_slot_gives_it_back(instance):
    run_id = start_run(instance, launch_tags())
    claim(instance, run_id)
    instance.report_run_failed(instance.get_run_by_id(run_id))
    (freed,) = recover_dead_runs(instance)
    assert freed.line() == f"freed run {run_id} (FAILURE, still holding a slot): released pool duckdb"
    assert pool_claims(instance) == []


def test_the_run_recovery_sensor_frees_dead_daemon_runs(instance):
    defs = build_definitions(load_settings())
    sensor = defs.resolve_sensor_def("run_recovery")
    assert isinstance(sensor(sensor_context(defs, instance)), dg.SkipReason)
    run_id = start_run(instance, pid=dead_pid())
    claim(instance, run_id)
    result = sensor(sensor_context(defs, instance))
    assert f"freed run {run_id}" in result.skip_message and "released pool duckdb" in result.skip_message
    assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.FAILURE


def test_process_identity_tells_a_reused_pid_from_the_same_process():
    me = processes.current()
    assert processes.is_running(me) is True
    assert processes.is_running(dataclasses.replace(me, start="other-boot:1")) is False
    assert processes.is_running(processes.ProcessRef(me.host, dead_pid())) is False
    assert processes.is_running(dataclasses.replace(me, host="elsewhere")) is None
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        __import__("time").sleep(1.0)  # exited, not reaped yet: a zombie has finished
        assert processes.is_running(processes.ProcessRef(me.host, zombie.pid)) is False
    finally:
        zombie.wait()
