"""The default executor runs a one-step run in the run worker's process and a longer run with a subprocess per
step (Dagster's multiprocess executor), so a UI backfill's one-step runs do not import the code location twice."""

import os

import dagster as dg
import pytest

from helpers import executor_jobs


@pytest.mark.parametrize("job_name, in_process", [("one_step", True), ("two_steps", False)])
def test_one_step_runs_in_process_and_longer_runs_in_step_processes(tmp_path, monkeypatch, job_name, in_process):
    monkeypatch.setenv("IBF_TEST_PID_DIR", str(tmp_path))
    with dg.instance_for_test() as instance:
        from dagster._core.definitions.reconstruct import ReconstructableJob  # step processes load the job by file

        result = dg.execute_job(ReconstructableJob.for_file(executor_jobs.__file__, job_name), instance=instance)
        assert result.success
        kinds = {e.event_type_value for e in result.all_events}
    pids = {p.name: int(p.read_text()) for p in tmp_path.iterdir() if p.is_file()}
    assert pids and all((pid == os.getpid()) == in_process for pid in pids.values()), pids
    assert ("STEP_WORKER_STARTING" in kinds) != in_process


def test_the_definitions_use_it_unless_the_k8s_executor_is_chosen(ibf_home):
    from ibf_core.settings import load_settings
    from ibf_dagster.definitions import build_definitions

    job = build_definitions(load_settings()).resolve_implicit_global_asset_job_def()
    assert job.executor_def.name == "ibf_multi_or_in_process"
