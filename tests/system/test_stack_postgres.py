"""``ibf stack``'s PostgreSQL lives under IBF_HOME: what it records outlives the stack, and backups hold it."""

import os
import shutil
import tempfile
from pathlib import Path

import psycopg2
import pytest

from ibf_core.settings import load_settings
from ibf_core.storage import backup
from ibf_dagster.stack.postgres import local_postgres
from ibf_dagster.stack.run import load_restored


@pytest.fixture
def home(monkeypatch):
    """An IBF_HOME the ``postgres`` user can reach when the tests run as root (pytest's tmp folders are root-only)."""
    parent = Path(tempfile.mkdtemp(prefix="ibf-stack-pg-"))
    parent.chmod(0o755)
    monkeypatch.setenv("IBF_HOME", str(parent / "home"))
    yield parent / "home"
    shutil.rmtree(parent, ignore_errors=True)


def rows(pg, database="mlflow") -> list:
    con = psycopg2.connect(pg.url(database))
    try:
        with con.cursor() as cur:
            cur.execute("SELECT name FROM model_versions ORDER BY name")
            return [r[0] for r in cur.fetchall()]
    finally:
        con.close()


def record(pg, name: str) -> None:
    pg.create_database("dagster")  # the stack creates both
    con = psycopg2.connect(pg.create_database("mlflow"))
    con.autocommit = True
    with con.cursor() as cur:
        cur.execute("CREATE TABLE IF NOT EXISTS model_versions (name text)")
        cur.execute("INSERT INTO model_versions VALUES (%s)", [name])
    con.close()


def test_the_stack_database_outlives_the_stack_and_is_backed_up(home, tmp_path):
    folder = home / "stack" / "postgres"
    with local_postgres(folder=folder) as pg:
        record(pg, "v1")
    assert (folder / "data" / "PG_VERSION").exists()  # kept after the stop
    with local_postgres(folder=folder) as pg:
        assert rows(pg) == ["v1"]  # the next stack sees what the last one recorded
        assert backup.running_stack_postgres(home) == pg.port
        running = backup.create(load_settings(), tmp_path / "while-running").folder  # pg_dump of the live cluster
        record(pg, "v2")
    manifest = backup.verify(running)
    assert "postgres/stack-mlflow.pgdump" in manifest["files"]
    assert not any(f.startswith("home/stack/postgres/") for f in manifest["files"])
    stopped = backup.create(load_settings(), tmp_path / "stopped").folder  # the stopped cluster's files
    assert "home/stack/postgres/data/PG_VERSION" in backup.verify(stopped)["files"]

    backup.restore(running, load_settings())
    restored = home / "stack" / "postgres"
    assert sorted(p.name for p in (restored / "restore").iterdir()) == ["dagster.pgdump", "mlflow.pgdump"]
    with local_postgres(folder=restored) as pg:  # what `ibf stack up` does after a restore
        pg.create_database("dagster"), pg.create_database("mlflow")
        load_restored(pg, restored / "restore", lambda line: None)
        assert rows(pg) == ["v1"]
    assert not list((restored / "restore").iterdir())  # loaded once

    backup.restore(stopped, load_settings())
    assert os.stat(home / "stack" / "postgres" / "data").st_mode & 0o777 == 0o700
    with local_postgres(folder=home / "stack" / "postgres") as pg:
        assert rows(pg) == ["v1", "v2"]


def test_a_postgres_instance_is_dumped_and_restored(home, tmp_path, monkeypatch):
    with local_postgres() as pg:
        url = pg.create_database("dagster_instance")
        monkeypatch.setenv("IBF_DAGSTER_PG_URL", url)
        con = psycopg2.connect(url)
        con.autocommit = True
        with con.cursor() as cur:
            cur.execute("CREATE TABLE runs (run_id text)")
            cur.execute("INSERT INTO runs VALUES ('r1')")
        home.mkdir(parents=True)
        folder = backup.create(load_settings(), tmp_path / "b1").folder
        assert "postgres/dagster.pgdump" in backup.verify(folder)["files"]
        with con.cursor() as cur:
            cur.execute("INSERT INTO runs VALUES ('r2')")
        backup.restore(folder, load_settings())
        with con.cursor() as cur:
            cur.execute("SELECT run_id FROM runs ORDER BY run_id")
            assert [r[0] for r in cur.fetchall()] == ["r1"]
        con.close()
