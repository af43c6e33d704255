"""Faults a user meets: a backfill killed or stopped mid-run, a run waiting for a pool, a DuckDB session holding
``warehouse.duckdb``, queries that try to write, a damaged Parquet file. Every test starts the real processes it
needs (``ibf`` subprocesses, the IB Gateway simulator, a DuckDB holder) and stops them even when it fails."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from ibf_core.sim.ib.gateway import GatewaySimulator
from ibf_core.storage.tables import MARKET_BARS
from ibf_core.storage.warehouse import DamagedFile, Warehouse
from ibf_dagster.compat import pool_claims

IBF = str(Path(sys.executable).with_name("ibf"))
SLOW_IB = {"IBF_IB_REQUEST_INTERVAL": "0", "IBF_IB_TIMEOUT": "30"}


def run_ibf(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([IBF, *args], capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def lake_digest(home: Path) -> dict[str, str]:
    return {str(p.relative_to(home)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((home / "lake").rglob("*")) if p.is_file()}


@contextmanager
def started(args: list[str], env: dict | None = None, **popen):
    """A process in its own group, killed with the group however the test ends."""
    proc = subprocess.Popen(args, env={**os.environ, **(env or {})}, start_new_session=True, **popen)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)


@contextmanager
def instance_of(home: Path):
    previous = os.environ.get("DAGSTER_HOME")
    os.environ["DAGSTER_HOME"] = str(home / "dagster")
    try:
        with dg.DagsterInstance.get() as instance:
            yield instance
    finally:
        if previous is None:
            os.environ.pop("DAGSTER_HOME", None)
        else:
            os.environ["DAGSTER_HOME"] = previous


def wait_for_pool_holder(home: Path, proc: subprocess.Popen, timeout: float = 180) -> str:
    """The id of the run that is STARTED and holds the ``duckdb`` pool slot (the backfill is inside its step)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, "the backfill ended before its run held the pool"
        # A run's own event database exists once the backfill has created the instance's storage: opening the
        # instance earlier would race its creation (both processes would create the same SQLite tables).
        run_dbs = [p for p in (home / "dagster" / "history" / "runs").glob("*.db") if p.name != "index.db"]
        if run_dbs:
            with instance_of(home) as instance:
                for claim in pool_claims(instance, ["duckdb"]):
                    run = instance.get_run_by_id(claim.run_id)
                    if claim.claimed and run is not None and run.status == dg.DagsterRunStatus.STARTED:
                        return claim.run_id
        time.sleep(0.2)
    raise AssertionError("no run held the duckdb pool in time")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.fixture
def gateway():
    with GatewaySimulator() as sim:
        yield sim


@pytest.fixture
def slow_gateway(gateway):
    """The IB Gateway simulator answering every history request after 3 s: a backfill stays inside its run."""
    gateway.set_faults(reply_delay=3.0)
    return {**SLOW_IB, "IBF_IB_PORTS": str(gateway.port)}


SLOW_BACKFILL = ["backfill", "--source", "ibkr", "--symbols", "AAPL", "--start", "2012-01-03", "--end", "2012-12-31", "--assets", "market_bars"]


def test_a_killed_backfill_is_freed_by_the_next_one(ibf_home, slow_gateway):
    folder = ibf_home / "lake" / "market_bars"
    with started([IBF, *SLOW_BACKFILL], slow_gateway, stderr=subprocess.DEVNULL) as victim:
        dead_run = wait_for_pool_holder(ibf_home, victim)
        with instance_of(ibf_home) as instance:  # the run executes in ibf's supervised child, which dies with it
            victim_pid = int(instance.get_run_by_id(dead_run).tags["ibf/pid"])
        os.killpg(victim.pid, signal.SIGKILL)
        victim.wait(30)
    killed_at = time.perf_counter()
    # what a writer killed between staging and swap leaves behind (the atomic writer's temp file)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / ".AAPL.parquet.dead1234.tmp").write_bytes(b"half a file")
    nxt = run_ibf("backfill", "--symbols", "AAPL", "--start", "2012-01-03", "--end", "2012-12-31", "--assets", "market_bars", timeout=240)
    elapsed = time.perf_counter() - killed_at
    assert nxt.returncode == 0, nxt.stderr
    assert f"freed run {dead_run} (pid {victim_pid} gone): marked FAILED, released pool duckdb" in nxt.stderr
    print(f"kill -9 to the next backfill completed: {elapsed:.1f} s")
    with instance_of(ibf_home) as instance:
        assert instance.get_run_by_id(dead_run).status == dg.DagsterRunStatus.FAILURE
        assert pool_claims(instance) == []
    assert not list(folder.glob(".*.tmp"))
    assert Warehouse(ibf_home).query("SELECT count(*) AS n FROM market_bars").n.iloc[0] == 250


def test_sigterm_stops_a_backfill_within_seconds_and_leaves_no_stuck_run(ibf_home, slow_gateway):
    with started([IBF, *SLOW_BACKFILL], slow_gateway, stderr=subprocess.PIPE, text=True) as proc:
        run_id = wait_for_pool_holder(ibf_home, proc)
        sent = time.perf_counter()
        proc.send_signal(signal.SIGTERM)  # what `kill PID` or a service manager sends
        proc.wait(60)
        stopped_in = time.perf_counter() - sent
        stderr = proc.stderr.read()
    assert stopped_in < 15, f"took {stopped_in:.1f} s"
    assert proc.returncode == 130
    assert error_lines(stderr) == [f"error: interrupted: run {run_id} marked FAILED, its pool slots released"], stderr
    assert "Traceback" not in stderr
    with instance_of(ibf_home) as instance:
        assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.FAILURE
        assert pool_claims(instance) == []
    print(f"SIGTERM to exit: {stopped_in:.1f} s")


def test_a_pool_wait_names_the_holder_does_not_spin_and_times_out(ibf_home, gateway, slow_gateway):
    gateway.set_faults(reply_delay=8.0)  # the holder stays in its step for 30 s or more (4+ requests)
    slower = [*SLOW_BACKFILL[:6], "2010-01-04", *SLOW_BACKFILL[7:]]
    with started([IBF, *slower], slow_gateway, stderr=subprocess.DEVNULL) as holder:
        holder_run = wait_for_pool_holder(ibf_home, holder)
        with instance_of(ibf_home) as instance:  # the pid executing the run: ibf's supervised child
            holder_pid = int(instance.get_run_by_id(holder_run).tags["ibf/pid"])
        env = {"IBF_POOL_WAIT_TIMEOUT": "8"}
        args = [IBF, "backfill", "--symbols", "MSFT", "--start", "2012-01-03", "--end", "2012-01-31", "--assets", "market_bars"]
        with started(args, env, stderr=subprocess.PIPE, text=True) as waiter:
            lines = []
            for line in waiter.stderr:
                lines.append(line)
                if line.startswith("waiting for pool duckdb"):
                    break
            assert lines and lines[-1].startswith(f"waiting for pool duckdb: held by run {holder_run} (ibf backfill, pid {holder_pid}"), lines
            (waiting,) = children(waiter.pid)  # the supervised child executes the run
            cpu_before, wait_started = cpu_seconds(waiting), time.perf_counter()
            time.sleep(5)
            waited_cpu = cpu_seconds(waiting) - cpu_before
            rest = waiter.stderr.read()
            waiter.wait(60)
            gave_up_after = time.perf_counter() - wait_started
    # before the fix Dagster's executor polled without sleeping: 100% of a core for the whole wait
    assert waited_cpu < 1.5, f"{waited_cpu:.2f} s of CPU in 5 s of waiting"
    assert waiter.returncode == 1
    (line,) = error_lines(rest)
    assert line.startswith(f"error: gave up after 8 s waiting for pool duckdb: held by run {holder_run}")
    assert gave_up_after < 30
    with instance_of(ibf_home) as instance:
        assert all(c.run_id == holder_run for c in pool_claims(instance))  # the waiter claims nothing any more
    print(f"pool wait: {waited_cpu:.2f} s CPU in 5 s of waiting; gave up {gave_up_after:.1f} s after the first wait line")


HOLDER = textwrap.dedent(
    """
    import sys, time, duckdb
    con = duckdb.connect(sys.argv[1])  # read-write: the DuckDB CLI's default
    print("holding", flush=True)
    time.sleep(600)
    """
)


@contextmanager
def read_write_session(db: Path):
    with started([sys.executable, "-c", HOLDER, str(db)], stdout=subprocess.PIPE, text=True) as holder:
        assert holder.stdout.readline().strip() == "holding"
        yield holder


def test_a_read_write_session_blocks_only_a_backfill_that_must_change_a_view(ibf_home):
    month = ["--symbols", "IBM", "--assets", "market_bars"]
    assert run_ibf("backfill", *month, "--start", "2012-01-03", "--end", "2012-01-31").returncode == 0
    with read_write_session(ibf_home / "warehouse.duckdb"):
        second = run_ibf("backfill", *month, "--start", "2012-02-01", "--end", "2012-02-29")
        assert second.returncode == 0, second.stderr
        assert run_ibf("sql", "SELECT count(*) AS n FROM market_bars", "-f", "csv").stdout.splitlines() == ["n", "40"]
    with duckdb.connect(str(ibf_home / "warehouse.duckdb")) as con:  # a view an older ibf defined differently
        con.execute("COMMENT ON VIEW forecast_outcomes IS 'ibf:0000000000000000'")
    before = lake_digest(ibf_home)
    with read_write_session(ibf_home / "warehouse.duckdb") as holder:
        began = time.perf_counter()
        third = run_ibf("backfill", *month, "--start", "2012-03-01", "--end", "2012-03-30")
        took = time.perf_counter() - began
    assert third.returncode == 1
    (line,) = error_lines(third.stderr)
    assert f"is held by PID {holder.pid} (" in line and "warehouse.duckdb" in line, line
    assert "Traceback" not in third.stderr
    assert took < 60, f"{took:.1f} s"  # the old code retried 30 s, then died with a traceback
    print(f"backfill needing a view change, warehouse held read-write: failed in {took:.1f} s")
    assert lake_digest(ibf_home) == before
    fourth = run_ibf("backfill", *month, "--start", "2012-03-01", "--end", "2012-03-30")
    assert fourth.returncode == 0, fourth.stderr
    assert Warehouse(ibf_home).view_versions()["forecast_outcomes"] != "0000000000000000"


def test_ibf_sql_refuses_writes_and_files_outside_the_lake(ibf_home, tmp_path):
    assert run_ibf("backfill", "--symbols", "IBM", "--start", "2013-02-01", "--end", "2013-02-28", "--assets", "market_bars").returncode == 0
    before = lake_digest(ibf_home)
    target = ibf_home / "lake" / "market_bars" / "IBM.parquet"
    attempts = [
        f"COPY (SELECT 1 AS x) TO '{target}' (FORMAT parquet)",
        "SELECT * FROM read_csv('/etc/passwd')",
        f"ATTACH '{ibf_home / 'lake' / 'evil.duckdb'}' AS evil",
        "INSTALL httpfs",
        "LOAD httpfs",
    ]
    for sql in attempts:
        proc = run_ibf("sql", sql)
        assert proc.returncode == 1, (sql, proc.stdout)
        assert len(error_lines(proc.stderr)) == 1 and proc.stderr.count("\n") == 1, (sql, proc.stderr)
        assert proc.stdout == ""
    assert lake_digest(ibf_home) == before
    assert not (ibf_home / "lake" / "evil.duckdb").exists()


def test_a_truncated_parquet_file_is_named_and_a_backfill_of_its_symbol_repairs_it(ibf_home):
    args = ["backfill", "--symbols", "AAPL,MSFT", "--start", "2013-01-02", "--end", "2013-02-28", "--assets", "market_bars"]
    assert run_ibf(*args).returncode == 0
    bad = ibf_home / "lake" / "market_bars" / "AAPL.parquet"
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])  # a copy cut short by a full disk
    wh = Warehouse(ibf_home)
    with pytest.raises(DamagedFile, match=re.escape(str(bad))):
        wh.read(MARKET_BARS, ["AAPL"])
    with pytest.raises(DamagedFile, match=re.escape(str(bad)) + ".*backfill AAPL"):
        wh.query("SELECT count(*) FROM market_bars")
    assert len(wh.read(MARKET_BARS, ["MSFT"])) == 40  # other symbols stay readable
    proc = run_ibf("sql", "SELECT symbol, count(*) AS n FROM market_bars GROUP BY 1", "-f", "csv")
    assert proc.returncode == 0 and proc.stdout.splitlines() == ["symbol,n", "MSFT,40"]
    assert f"warning: left out {bad}" in proc.stderr
    repair = run_ibf("backfill", "--symbols", "AAPL", "--start", "2013-01-02", "--end", "2013-02-28", "--assets", "market_bars")
    assert repair.returncode == 0, repair.stderr
    (kept,) = (ibf_home / "lake" / "_quarantine" / "market_bars").iterdir()
    assert kept.name.startswith("AAPL.") and kept.read_bytes() == data[: len(data) // 2]
    assert f"{bad} is damaged" in repair.stderr and str(kept) in repair.stderr
    counts = run_ibf("sql", "SELECT symbol, count(*) AS n FROM market_bars GROUP BY 1 ORDER BY 1", "-f", "csv")
    assert counts.stdout.splitlines() == ["symbol,n", "AAPL,40", "MSFT,40"] and "warning" not in counts.stderr


def test_debug_shows_the_traceback_and_plain_errors_are_one_line(ibf_home, tmp_path):
    copy = f"COPY (SELECT 1) TO '{tmp_path / 'x.csv'}'"
    plain = run_ibf("sql", copy)
    assert plain.returncode == 1 and plain.stderr.splitlines() == ["error: COPY statements are refused: queries here are read-only (SELECT only)"]
    assert not (tmp_path / "x.csv").exists()
    debug = run_ibf("--debug", "sql", copy)
    assert debug.returncode == 1 and "Traceback (most recent call last)" in debug.stderr and "QueryRefused" in debug.stderr
    assert debug.stderr.splitlines()[-1] == plain.stderr.splitlines()[0]
    settings = run_ibf("sql", "SELECT 1", env={"IBF_POOL_WAIT_TIMEOUT": "soon"})
    assert settings.returncode == 2 and len(error_lines(settings.stderr)) == 1 and "IBF_POOL_WAIT_TIMEOUT" in settings.stderr


def group_members(pgid: int) -> list[int]:
    """Live processes of process group ``pgid`` (zombies left out)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


@pytest.mark.slow
def test_sigterm_stops_ibf_ui_and_the_whole_dagster_dev_group_within_seconds(ibf_home):
    import socket

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dagster_group = None
    try:
        with started([IBF, "ui", "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as ui:
            deadline = time.time() + 240
            while time.time() < deadline:
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/server_info", timeout=5).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(1)
            else:
                raise AssertionError("dagster dev did not answer")
            (dagster_group,) = children(ui.pid)  # dagster dev, leader of its own process group
            assert len(group_members(dagster_group)) >= 3  # dagster dev, webserver, daemon, code server ...
            sent = time.perf_counter()
            ui.send_signal(signal.SIGTERM)
            ui.wait(60)
            took = time.perf_counter() - sent
        assert took < 20, f"{took:.1f} s"
        assert ui.returncode == 128 + signal.SIGTERM
        assert group_members(dagster_group) == []
        print(f"SIGTERM to ibf ui gone with its group: {took:.1f} s")
    finally:
        if dagster_group is not None and group_members(dagster_group):
            os.killpg(dagster_group, signal.SIGKILL)
