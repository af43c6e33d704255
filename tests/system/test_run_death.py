"""Never a silent death: a run whose process is killed (OOM killer, kill -9, segfault) ends FAILED saying why,
gives back its pool slots and becomes an alert.

- ``ibf train`` / ``ibf backfill`` run their work in a supervised child (ibf_dagster/supervise.py): these tests
  start the real command, find the child executing the run (its ``ibf/pid`` tag) and SIGKILL it.
- a run launched by the daemon has no supervisor: the ``run_recovery`` sensor finds its worker gone, marks it
  FAILED with the cause (the kernel log may name an OOM kill) and records an ``alerts`` row and a webhook POST.

Every test starts real processes and kills them (and their children) however it ends.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import pytest

from helpers.sensors import sensor_context
from ibf_core import processes
from ibf_core.settings import get_settings
from ibf_core.storage.warehouse import Warehouse
from ibf_dagster.compat import PoolClaim, pool_claims
from ibf_dagster.recovery import launch_tags
from helpers.webhook import Hook

IBF = str(Path(sys.executable).with_name("ibf"))
CUTOFF = "2013-02-27"
OOM_LINE = "died: killed by signal 9 (out of memory?)"


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def descendants(pid: int) -> list[int]:
    """Live descendants of ``pid`` (children first)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        kids = [p for p, parent in parents.items() if parent in frontier]
        found += kids
        frontier = kids
    return found


@contextmanager
def started(args: list[str], env: dict | None = None, **popen):
    """A process in its own group; it, its group and every descendant (the supervised child runs in a session of
    its own) are killed however the test ends."""
    proc = subprocess.Popen(args, env={**os.environ, **(env or {})}, start_new_session=True, **popen)
    try:
        yield proc
    finally:
        for pid in descendants(proc.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)



@dg.asset(pool="gpu")
def gpu_holder():
    return 1


def started_run(instance, pid: int, tags: dict | None = None, asset_selection=None, job=None) -> str:
    """A STARTED run whose RUN_START event names ``pid`` (what Dagster records for a run worker)."""
    job = job or dg.Definitions(assets=[gpu_holder]).resolve_implicit_global_asset_job_def()
    run = instance.create_run_for_job(job, run_id=str(uuid.uuid4()), tags=tags or {}, asset_selection=asset_selection)
    event = dg.DagsterEvent(dg.DagsterEventType.RUN_START.value, job_name=run.job_name, pid=pid)
    instance.handle_new_event(
        dg.EventLogEntry(error_info=None, level="DEBUG", user_message="", run_id=run.run_id, timestamp=time.time(), dagster_event=event)
    )
    return run.run_id


def claim(instance, pool: str, run_id: str, step_key: str) -> None:
    """``run_id``'s step takes a slot of ``pool`` (limit 1 from dagster.yaml's default_limit, as the executor sets it)."""
    instance.event_log_storage.initialize_concurrency_limit_to_default(pool)
    assert instance.event_log_storage.claim_concurrency_slot(pool, run_id, step_key).is_claimed


def failure_messages(instance, run_id: str) -> list[str]:
    records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.RUN_FAILURE).records
    return [r.event_log_entry.dagster_event.message for r in records]


def alerts(home: Path):
    return Warehouse(home).query("SELECT asset, check_name, partition, severity, description, run_id, webhook_status FROM alerts")


def wait_for_claim(instance, proc: subprocess.Popen, pool: str, claimed: bool, timeout: float = 120) -> tuple[str, int]:
    """(run id, pid of the process executing it) of the STARTED run that holds (``claimed``) or waits for a slot
    of ``pool``, started by ``proc``'s child."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, f"ibf ended before its run reached the {pool} pool: {proc.communicate()}"
        for claim in pool_claims(instance, [pool]):
            run = instance.get_run_by_id(claim.run_id)
            if claim.claimed == claimed and run is not None and run.status == dg.DagsterRunStatus.STARTED:
                if run.tags.get("ibf/launched_by", "").startswith("ibf "):
                    return claim.run_id, int(run.tags["ibf/pid"])
        time.sleep(0.2)
    raise AssertionError(f"no run of ibf reached the {pool} pool in time")


def test_a_train_killed_by_sigkill_says_so_and_leaves_its_run_failed_without_slots(ibf_home, instance):
    # A live run (this test process) holds the only gpu slot: the training run waits for it inside its step claim.
    holder = started_run(instance, os.getpid(), launch_tags())
    claim(instance, "gpu", holder, "gpu_holder")
    with started([IBF, "train", "--cutoff", CUTOFF], {"IBF_POOL_WAIT_TIMEOUT": "300"}, stderr=subprocess.PIPE, text=True) as proc:
        run_id, worker = wait_for_claim(instance, proc, "gpu", claimed=False)
        assert worker != proc.pid and worker in descendants(proc.pid)  # the run executes in the supervised child
        started_at = time.perf_counter()
        os.kill(worker, signal.SIGKILL)  # what the OOM killer does
        _, stderr = proc.communicate(timeout=60)
        took = time.perf_counter() - started_at
    print(f"SIGKILL of the child to ibf train's exit: {took:.1f} s\n{stderr}")
    assert proc.returncode == 128 + signal.SIGKILL
    assert error_lines(stderr) == [f"error: run {run_id} (trained_models) {OOM_LINE}"], stderr
    assert "Traceback" not in stderr
    assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.FAILURE
    assert failure_messages(instance, run_id) == [f"ibf: run {run_id} (trained_models) {OOM_LINE}; marked FAILED"]
    assert pool_claims(instance) == [PoolClaim("gpu", holder, "gpu_holder", True)]  # the killed run's claim is gone
    rows = alerts(ibf_home)
    assert rows.to_dict("records") == [{
        "asset": "trained_models", "check_name": "run_died", "partition": CUTOFF, "severity": "ERROR",
        "description": f"run {run_id} (trained_models) {OOM_LINE}", "run_id": run_id, "webhook_status": "not configured",
    }]


def test_a_backfill_killed_inside_its_step_frees_the_pool_slot_it_held(ibf_home, instance):
    from ibf_core.sim.ib.gateway import GatewaySimulator

    args = [IBF, "backfill", "--source", "ibkr", "--symbols", "AAPL", "--start", "2012-01-03", "--end", "2012-12-31", "--assets", "market_bars"]
    with GatewaySimulator() as gateway:
        gateway.set_faults(reply_delay=3.0)  # every history request answered after 3 s: the run stays in its step
        env = {"IBF_IB_REQUEST_INTERVAL": "0", "IBF_IB_TIMEOUT": "30", "IBF_IB_PORTS": str(gateway.port)}
        with started(args, env, stderr=subprocess.PIPE, text=True) as proc:
            run_id, worker = wait_for_claim(instance, proc, "duckdb", claimed=True)
            os.kill(worker, signal.SIGKILL)
            _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGKILL
    assert error_lines(stderr) == [f"error: run {run_id} (market_bars) {OOM_LINE}"], stderr
    assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.FAILURE
    assert OOM_LINE in failure_messages(instance, run_id)[0]
    assert pool_claims(instance) == []


def test_signals_other_than_sigkill_are_named():
    from ibf_dagster.supervise import death_cause

    assert death_cause(signal.SIGKILL) == "killed by signal 9 (out of memory?)"
    assert death_cause(signal.SIGSEGV) == "killed by signal 11 (SIGSEGV)"
    assert death_cause(signal.SIGABRT) == "killed by signal 6 (SIGABRT)"


def test_the_supervised_child_skips_the_interpreter_teardown_and_keeps_the_exit_status_and_output(tmp_path):
    """The child ends with os._exit once the command returned (2.7 s of teardown after a 500-symbol cycle): its
    output is flushed, its exit status is the command's, and exit handlers (teardown) do not run."""
    script = tmp_path / "entry.py"
    script.write_text(
        "import atexit, sys\n"
        "def slow(): open(sys.argv[-1] + '.teardown', 'w').close()\n"
        "def main():\n"
        "    atexit.register(slow)\n"
        "    print('out', end='')\n"
        "    sys.stderr.write('err')\n"
        "    raise SystemExit(int(sys.argv[-2]))\n"
    )
    for status in (0, 3):
        marker = tmp_path / f"run{status}"
        proc = subprocess.run(
            [sys.executable, "-c", "from ibf_dagster.supervise import child_main; child_main()", str(os.getpid()),
             "entry:main", str(status), str(marker)],
            capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": f"{tmp_path}:{os.getcwd()}"},
        )
        assert (proc.returncode, proc.stdout, proc.stderr) == (status, "out", "err")
        assert not Path(f"{marker}.teardown").exists()


def test_exit_codes_are_those_the_interpreter_gives():
    from ibf_dagster.supervise import _exit_code

    assert [_exit_code(None), _exit_code(0), _exit_code(2), _exit_code(256 + 3)] == [0, 0, 2, 3]


# ----- runs of the daemon: no supervisor, the run_recovery sensor -----------------------------------------------
def killed_worker() -> int:
    """The pid of a real process killed with SIGKILL (and reaped), as the OOM killer leaves a run worker."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(30) == -signal.SIGKILL
    return proc.pid


def oom_killed_worker() -> int:
    """The pid of a process the kernel's OOM killer killed, in a memory cgroup of 64 MiB (cgroup v1 or v2);
    skips where this machine does not let the test create one."""
    roots = [(Path("/sys/fs/cgroup"), "memory.max"), (Path("/sys/fs/cgroup/memory"), "memory.limit_in_bytes")]
    for root, limit in roots:
        if not (root / limit).exists() and not (root / "cgroup.controllers").exists():
            continue
        group = root / f"ibf-test-oom-{os.getpid()}"
        try:
            group.mkdir()
            (group / limit).write_text(str(64 * 1024 * 1024))
        except OSError:
            if group.exists():
                group.rmdir()
            continue
        try:
            code = f"open('{group}/cgroup.procs', 'w').write('0'); b = bytearray(512 * 1024 * 1024); import time; time.sleep(30)"
            proc = subprocess.Popen([sys.executable, "-c", code])
            try:
                status = proc.wait(60)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        finally:
            group.rmdir()
        if status == -signal.SIGKILL:
            return proc.pid
    pytest.skip("no memory cgroup this test may create: the OOM killer cannot be made to kill a process here")


def daemon_training_run(instance, settings, worker: int) -> str:
    """A trained_models run as the drift/weekly sensors launch it (no ibf tags), its worker ``worker``, holding gpu."""
    from ibf_dagster.definitions import build_definitions

    job = build_definitions(settings).resolve_implicit_global_asset_job_def()
    tags = {"dagster/partition": CUTOFF, "ibf/trigger": "drift"}
    run_id = started_run(instance, worker, tags, asset_selection=frozenset({dg.AssetKey("trained_models")}), job=job)
    claim(instance, "gpu", run_id, "trained_models")
    return run_id


def recover_with_the_sensor(instance, settings):
    from ibf_dagster.definitions import build_definitions

    defs = build_definitions(settings)
    return defs.resolve_sensor_def("run_recovery")(sensor_context(defs, instance))


def test_a_daemon_run_whose_worker_was_killed_is_failed_with_the_cause_and_alerted(ibf_home, instance, monkeypatch):
    worker = killed_worker()
    with Hook() as hook:
        monkeypatch.setenv("IBF_ALERT_WEBHOOK", hook.url)
        get_settings.cache_clear()
        settings = get_settings()
        run_id = daemon_training_run(instance, settings, worker)
        result = recover_with_the_sensor(instance, settings)
        assert f"freed run {run_id} (pid {worker} gone): marked FAILED, released pool gpu" in result.skip_message
        recover_with_the_sensor(instance, settings)  # the next tick: nothing new, no second alert
        assert hook.requests == 1
    cause = f"its process (pid {worker}) is gone without ending the run (killed? out of memory?)"
    if processes.oom_killed(worker) is True:  # the kernel log names an old OOM kill of a process with this pid
        pytest.skip(f"pid {worker} was OOM-killed before in this boot")
    headline = f"run {run_id} (trained_models) died: {cause}"
    assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.FAILURE
    assert failure_messages(instance, run_id) == [f"ibf: {headline}; marked FAILED"]
    assert pool_claims(instance) == []
    assert alerts(ibf_home).to_dict("records") == [{
        "asset": "trained_models", "check_name": "run_died", "partition": CUTOFF, "severity": "ERROR",
        "description": headline, "run_id": run_id, "webhook_status": "sent",
    }]
    assert run_id in hook.bodies[0]["text"] and "trained_models" in hook.bodies[0]["text"]


def test_a_daemon_run_killed_by_the_oom_killer_says_so(ibf_home, instance):
    worker = oom_killed_worker()
    settings = get_settings()
    run_id = daemon_training_run(instance, settings, worker)
    recover_with_the_sensor(instance, settings)
    headline = f"run {run_id} (trained_models) died: killed by the OOM killer (pid {worker})"
    if processes.oom_killed(worker) is None:
        headline = f"run {run_id} (trained_models) died: its process (pid {worker}) is gone without ending the run (killed? out of memory?)"
    assert failure_messages(instance, run_id) == [f"ibf: {headline}; marked FAILED"]
    assert alerts(ibf_home)["description"].tolist() == [headline]
    assert pool_claims(instance) == []


def test_kernel_log_oom_lines_name_their_victim():
    assert processes.oom_victims("Out of memory: Killed process 4242 (python) total-vm:321232kB, anon-rss:65280kB") == {4242}
    assert processes.oom_victims("Memory cgroup out of memory: Killed process 77 (python) total-vm:1kB") == {77}
    line = "oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,task=python,pid=6020,uid=0"
    assert processes.oom_victims(line) == {6020}
    assert processes.oom_victims("python invoked oom-killer: gfp_mask=0xcc0(GFP_KERNEL), order=0, oom_score_adj=0") == set()
    assert processes.oom_killed(killed_worker()) in (False, None)  # a plain kill -9 is no OOM kill
