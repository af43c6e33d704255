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
