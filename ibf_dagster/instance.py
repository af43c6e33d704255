"""The Dagster instance lives under IBF_HOME: DAGSTER_HOME = $IBF_HOME/dagster with the repo's dagster.yaml."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ibf_core.settings import Settings
from ibf_core.storage import atomic

# Heavy imports (dagster, psycopg2) stay inside the functions that need them: importing this module loads none of them.

DAGSTER_YAML = Path(__file__).resolve().parents[1] / "dagster.yaml"
PLANNED_EVENTS_ENV = "DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS"


PG_URL_ENV = "IBF_DAGSTER_PG_URL"
# Appended to the repo's dagster.yaml when IBF_DAGSTER_PG_URL is set: run, event-log and schedule storage in
# Postgres. The URL (it carries the password) is read by Dagster from the environment, never written to the file.
POSTGRES_STORAGE = f"""
# Added by ibf because {PG_URL_ENV} is set: runs, event logs and schedules live in Postgres.
storage:
  postgres:
    postgres_url:
      env: {PG_URL_ENV}
"""


# Appended otherwise: Dagster's SQLite event log, with batches of partition materializations written at once
# (ibf_dagster/compat.py). The folder is Dagster's default one, so an existing instance keeps its history.
SQLITE_EVENT_LOG = """
# Added by ibf: the SQLite event log writes a step's partition materializations in one transaction.
event_log_storage:
  module: ibf_dagster.compat
  class: BatchedSqliteEventLogStorage
  config:
    base_dir: {base_dir}
"""


class InstanceStorageError(RuntimeError):
    """The configured Postgres instance cannot be used (its message names the setting, never the password)."""


def instance_yaml(settings: Settings) -> bytes:
    """The dagster.yaml for these settings: the repo's file, plus Postgres storage or the batched SQLite event log."""
    text = DAGSTER_YAML.read_bytes()
    if settings.dagster_pg_url is not None:
        return text + POSTGRES_STORAGE.encode()
    base_dir = json.dumps(str(settings.dagster_home.resolve() / "history" / "runs"))
    return text + SQLITE_EVENT_LOG.format(base_dir=base_dir).encode()


def _with_driver(url: str, driver: str | None) -> str:
    """``url`` with its scheme naming ``driver`` (``postgresql+psycopg2://``) or none (libpq's ``postgresql://``).

    Dagster's Postgres storage needs psycopg2 (SQLAlchemy 2 would pick psycopg 3 for a bare ``postgresql://``,
    whose server-side parameters break Dagster's NOTIFY); libpq itself accepts no driver in the scheme."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.split("+")[0] not in ("postgres", "postgresql"):
        return url
    return f"postgresql{'+' + driver if driver else ''}://{rest}"


def check_postgres(settings: Settings, timeout_s: int = 5) -> None:
    """Connect once to the configured Postgres; a failure is one error naming the setting (password redacted)."""
    import psycopg2

    url = _with_driver(settings.dagster_pg_url.get_secret_value(), None)
    try:
        psycopg2.connect(url, connect_timeout=timeout_s).close()
    except psycopg2.Error as exc:
        reason = " ".join(str(exc).split())
        for secret in settings.secret_values():
            reason = reason.replace(secret, "***")
        raise InstanceStorageError(f"{PG_URL_ENV}: cannot connect to the Dagster instance's Postgres: {reason}") from None


def prepare_dagster_home(settings: Settings) -> Path:
    """Create DAGSTER_HOME under IBF_HOME, refresh its dagster.yaml and export DAGSTER_HOME for this process."""
    home = settings.dagster_home
    home.mkdir(parents=True, exist_ok=True)
    target = home / "dagster.yaml"
    wanted = instance_yaml(settings)
    if not target.exists() or target.read_bytes() != wanted:
        atomic.write_bytes(target, wanted)
    os.environ["DAGSTER_HOME"] = str(home)
    if settings.dagster_pg_url is not None:
        # Dagster reads the URL from here (the file names only the variable); a settings file may have set it.
        os.environ[PG_URL_ENV] = _with_driver(settings.dagster_pg_url.get_secret_value(), "psycopg2")
    # A step's partition materializations reach the storage as one batch: Postgres inserts it at once, and so
    # does ibf's SQLite event log (one transaction per file instead of ~4 per event).
    os.environ.setdefault("DAGSTER_EVENT_BATCH_SIZE", str(settings.dagster_event_batch_size))
    # One "planned" event per run instead of one per partition: a 60k-partition backfill otherwise spends
    # most of its time writing them (docs/partition-scale.md). Trade-off: partitions of a failed run show as
    # missing rather than failed; the run itself still shows as failed. Set it to 0 to keep Dagster's default.
    os.environ.setdefault(PLANNED_EVENTS_ENV, "1")
    return home


def get_instance(settings: Settings):
    """The persistent DagsterInstance for these settings (the same one `make ui` shows)."""
    from dagster import DagsterInstance

    if settings.dagster_pg_url is not None:
        check_postgres(settings)
    prepare_dagster_home(settings)
    return DagsterInstance.get()
