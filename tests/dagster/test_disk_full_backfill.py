"""A full disk during a backfill through Dagster: the run fails with one line naming the path and the free space,
the tables stay as they were, and the same backfill succeeds once space is free. The disk is filled by the atomic
writer's fault switch (IBF_STORAGE_FAULTS), which reaches the run's own process, so this runs everywhere; as root a
real small tmpfs under the lake fills up too."""

import json
import os
import re
import subprocess

import dagster as dg
import pytest
from helpers.cli import ibf, lake_state, run_ibf

from ibf_core.storage import atomic, space

FULL = re.compile(r"no space left on device writing (?P<path>\S+) \((?P<free>[\d.]+ (B|KiB|MiB|GiB|TiB)) free under (?P<home>\S+)\)")
BACKFILL = ("backfill", "--symbols", "AAPL,MSFT", "--start", "2012-01-03", "--end", "2012-12-31", "--assets", "market_bars")


def counts() -> list[dict]:
    return json.loads(ibf("sql", "SELECT symbol, count(*) AS n FROM market_bars GROUP BY 1 ORDER BY 1", "-f", "json").stdout)


def test_a_full_disk_fails_the_run_naming_path_and_free_space_and_changes_nothing(ibf_home, monkeypatch):
    monkeypatch.setenv("IBF_MIN_FREE_MIB", "1")  # a floor any test machine meets (the huge one below fails it)
    first = ibf("backfill", "--symbols", "AAPL,MSFT", "--start", "2012-01-03", "--end", "2012-06-29", "--assets", "market_bars")
    assert "disk_space=pass" in first.stderr
    before, rows = lake_state(ibf_home), counts()
    assert rows == [{"symbol": "AAPL", "n": 125}, {"symbol": "MSFT", "n": 125}]

    proc = run_ibf(*BACKFILL, env={"IBF_STORAGE_FAULTS": "full_disk_files=-1"})
    assert proc.returncode == 1, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    match = FULL.search(errors[0])
    assert match and errors[0].startswith("error: no space left on device writing "), errors[0]
    assert match["home"] == str(ibf_home.resolve())
    assert re.fullmatch(rf"{re.escape(str(ibf_home.resolve()))}/lake/market_bars/(AAPL|MSFT)\.parquet", match["path"])
    assert lake_state(ibf_home) == before and counts() == rows
    assert not [p for p in ibf_home.rglob("*") if atomic.temp_target(p) is not None]

    monkeypatch.setenv("DAGSTER_HOME", str(ibf_home / "dagster"))
    with dg.DagsterInstance.get() as instance:
        failed = instance.get_run_records(dg.RunsFilter(statuses=[dg.DagsterRunStatus.FAILURE]))
        assert failed
        failures = [
            e.dagster_event.step_failure_data.error
            for e in instance.all_logs(failed[0].dagster_run.run_id)
            if e.dagster_event is not None and e.dagster_event.is_step_failure
        ]
    assert failures
    root = failures[0]  # what the Dagster UI shows under the step's failure: the cause, our one line
    while root.cause is not None:
        root = root.cause
    assert root.cls_name == "DiskFullError" and FULL.search(root.message), root.message

    # space is free again: the same backfill completes; the WARN check says when free space is below the floor
    proc = run_ibf(*BACKFILL, env={"IBF_MIN_FREE_MIB": str(10**9)})
    assert proc.returncode == 0, proc.stderr
    assert "disk_space=FAIL" in proc.stderr and "fresh=FAIL" in proc.stderr  # both WARN: the run still succeeds
    assert counts() == [{"symbol": "AAPL", "n": 250}, {"symbol": "MSFT", "n": 250}]
    assert not [p for p in ibf_home.rglob("*") if atomic.temp_target(p) is not None]


def test_a_real_full_filesystem_under_the_lake_fails_the_backfill_and_the_retry_succeeds(ibf_home, monkeypatch):
    """The lake on a real 16 MiB tmpfs (root only), filled by a ballast file; the Dagster instance stays beside it."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root; the test above covers the same failure with the fault switch")
    lake = ibf_home / "lake"
    lake.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(lake)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    monkeypatch.setenv("IBF_MIN_FREE_MIB", "1")
    try:
        ibf("backfill", "--symbols", "AAPL,MSFT", "--start", "2012-01-03", "--end", "2012-06-29", "--assets", "market_bars")
        rows = counts()
        with open(lake / "ballast", "wb") as handle:  # leave 32 KiB: less than ten years of bars need
            handle.write(b"\0" * (space.free_bytes(lake) - 32 * 1024))
        before = lake_state(ibf_home)
        decade = ("backfill", "--symbols", "AAPL,MSFT", "--start", "2003-01-02", "--end", "2012-12-31", "--assets", "market_bars")
        proc = run_ibf(*decade)
        assert proc.returncode == 1, proc.stderr
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, proc.stderr
        match = FULL.search(errors[0])
        assert match and match["home"] == str(ibf_home.resolve()), errors[0]
        assert match["path"].startswith(str((lake / "market_bars").resolve())) and match["free"].endswith("KiB"), errors[0]
        assert lake_state(ibf_home) == before and counts() == rows
        assert not [p for p in ibf_home.rglob("*") if atomic.temp_target(p) is not None]
        (lake / "ballast").unlink()
        ibf(*decade)
        assert [r["n"] for r in counts()] == [2517, 2517]
    finally:
        subprocess.run(["umount", "-l", str(lake)], check=False)
