"""The restore drill: warehouse tables, MLflow registry versions and Dagster run records change after a backup,
``ibf backup restore`` brings every one back; the daily ``backup`` schedule; a damaged backup is refused."""

import datetime as dt
import sqlite3
import time

import pytest
from helpers.bars import make_bars
from helpers.cli import run_ibf

from ibf_core.market.checks import validate_bars
from ibf_core.models.registry import ensure_experiment, list_versions, quiet_mlflow
from ibf_core.settings import load_settings
from ibf_core.storage.backup import PREFIX
from ibf_core.storage.tables import MARKET_BARS
from ibf_core.storage.warehouse import Warehouse
from ibf_dagster.backups import build_backup
from ibf_dagster.instance import get_instance
from ibf_dagster.resources import SettingsResource

NAME = "ibf-forecaster"


def write_bars(home, seed: int) -> None:
    frame = validate_bars(make_bars(symbols=("AAA", "BBB"), end="2021-03-31", seed=seed), "test").assign(source="test")
    Warehouse(home).replace_slice(MARKET_BARS, frame, ["AAA", "BBB"], "2021-01-01", "2021-03-31")


def register_version(settings, cutoff: dt.date) -> None:
    mlflow = quiet_mlflow()
    experiment = ensure_experiment(settings.mlflow_uri, settings.mlflow_experiment, settings.mlflow_artifacts_dir)
    client = mlflow.MlflowClient(settings.mlflow_uri)
    if not client.search_registered_models(f"name='{NAME}'"):
        client.create_registered_model(NAME)
    run = client.create_run(experiment)
    client.log_text(run.info.run_id, f"weights {cutoff}", "model/weights.txt")
    client.set_terminated(run.info.run_id)
    client.create_model_version(NAME, f"{run.info.artifact_uri}/model", run.info.run_id,
                                tags={"cutoff": cutoff.isoformat(), "manifest_sha256": "0" * 64})


def run_backup_job(settings):
    """One run of the ``backup`` job on the instance under IBF_HOME (what the schedule launches)."""
    job, _ = build_backup()
    return job.execute_in_process(instance=get_instance(settings), resources={"ibf": SettingsResource.of(settings)},
                                  raise_on_error=False)


def snapshot(settings) -> dict:
    """What the drill compares: every table's rows, the registry's versions, the run records."""
    home = settings.home_dir
    tables = {spec.name: Warehouse(home).read(spec).to_csv(index=False) for spec in [MARKET_BARS]}  # NaN == NaN here
    versions = [(v.version, v.cutoff, v.run_id) for v in list_versions(settings.mlflow_uri, NAME)]
    runs = sorted((r.run_id, r.status.value) for r in get_instance(settings).get_runs())
    return {"tables": tables, "versions": versions, "runs": runs}


@pytest.fixture
def platform(ibf_home, tmp_path, monkeypatch):
    """A warehouse, two registered versions and a run record under IBF_HOME."""
    monkeypatch.setenv("IBF_BACKUP_DIR", str(tmp_path / "scheduled"))
    settings = load_settings()
    write_bars(ibf_home, seed=0)
    register_version(settings, dt.date(2021, 1, 29))
    register_version(settings, dt.date(2021, 2, 26))
    assert run_backup_job(settings).success
    return settings


def test_restore_drill_brings_back_every_table_version_and_run(platform, ibf_home, tmp_path):
    before = snapshot(platform)
    assert len(before["versions"]) == 2 and len(before["runs"]) == 1 and before["tables"]["market_bars"]
    created = run_ibf("backup", "create", str(tmp_path / "b1"))
    assert created.returncode == 0, created.stderr
    # change things after the backup: tables, registry versions, runs
    write_bars(ibf_home, seed=1)
    register_version(platform, dt.date(2021, 3, 31))
    assert run_backup_job(platform).success
    changed = snapshot(platform)
    assert all(changed[k] != before[k] for k in before)
    restored = run_ibf("backup", "restore", str(tmp_path / "b1"))
    assert restored.returncode == 0, restored.stderr
    assert snapshot(platform) == before


def test_a_damaged_backup_is_one_error_line_and_the_state_stays(platform, ibf_home, tmp_path):
    assert run_ibf("backup", "create", str(tmp_path / "b1")).returncode == 0
    register_version(platform, dt.date(2021, 3, 31))
    after = snapshot(platform)
    damaged = tmp_path / "b1" / "home" / "mlflow.db"
    with sqlite3.connect(damaged) as con:
        con.execute("DELETE FROM model_versions")
    for command in ("verify", "restore"):
        proc = run_ibf("backup", command, str(tmp_path / "b1"))
        assert proc.returncode == 1
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and str(damaged) in lines[0], proc.stderr
    assert snapshot(platform) == after


def test_restore_into_an_empty_home_gives_a_working_platform(platform, tmp_path):
    assert run_ibf("backup", "create", str(tmp_path / "b1")).returncode == 0
    before = snapshot(platform)
    fresh = tmp_path / "fresh-home"
    env = {"IBF_HOME": str(fresh)}
    proc = run_ibf("backup", "restore", str(tmp_path / "b1"), env=env)
    assert proc.returncode == 0, proc.stderr
    rows = run_ibf("sql", "SELECT symbol, count(*) AS n FROM market_bars GROUP BY symbol ORDER BY symbol", "-f", "csv", env=env)
    assert rows.returncode == 0, rows.stderr
    n = before['tables']['market_bars'].count('\n') - 1  # rows of both symbols (the CSV has a header)
    assert rows.stdout.split() == ["symbol,n", f"AAA,{n // 2}",
                                   f"BBB,{n // 2}"]
    assert (fresh / "warehouse.duckdb").exists()  # the views for analysts' sessions, defined for this home
    moved = load_settings(home=fresh)
    assert snapshot(moved) == before
    versions = list_versions(moved.mlflow_uri, NAME)
    assert all(v.source.startswith(f"file://{fresh}/") for v in versions)  # artifact paths point at the new home
    mlflow = quiet_mlflow()
    weights = mlflow.artifacts.download_artifacts(artifact_uri=f"{versions[0].source}/weights.txt", dst_path=str(tmp_path / "dl"))
    assert open(weights).read() == "weights 2021-01-29"


def test_the_backup_schedule_keeps_the_newest_backups(platform, tmp_path, monkeypatch):
    _, schedule = build_backup()
    assert schedule.default_status.value == "STOPPED" and schedule.cron_schedule == "30 2 * * *"
    settings = platform.replace(backup_retention=2)
    for _ in range(3):
        time.sleep(1.1)  # backups are named by the second
        assert run_backup_job(settings).success
    kept = sorted((tmp_path / "scheduled").glob(f"{PREFIX}*"))
    assert len(kept) == 2
    for folder in kept:
        assert run_ibf("backup", "verify", str(folder)).returncode == 0


def test_the_backup_job_without_a_folder_fails_naming_the_setting(platform, monkeypatch):
    result = run_backup_job(platform.replace(backup_dir=None))
    assert not result.success
    failure = [e for e in result.all_events if e.is_failure][0]
    assert "IBF_BACKUP_DIR is not set" in str(failure.event_specific_data.error)
