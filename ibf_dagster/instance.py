"""The Dagster instance lives under IBF_HOME: DAGSTER_HOME = $IBF_HOME/dagster with the repo's dagster.yaml."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ibf_core.settings import Settings

DAGSTER_YAML = Path(__file__).resolve().parents[1] / "dagster.yaml"
PLANNED_EVENTS_ENV = "DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS"


def prepare_dagster_home(settings: Settings) -> Path:
    """Create DAGSTER_HOME under IBF_HOME, refresh its dagster.yaml and export DAGSTER_HOME for this process."""
    home = settings.dagster_home
    home.mkdir(parents=True, exist_ok=True)
    target = home / "dagster.yaml"
    if not target.exists() or target.read_bytes() != DAGSTER_YAML.read_bytes():
        shutil.copyfile(DAGSTER_YAML, target)
    os.environ["DAGSTER_HOME"] = str(home)
    # One "planned" event per run instead of one per partition: a 60k-partition backfill otherwise spends
    # most of its time writing them (docs/partition-scale.md). Trade-off: partitions of a failed run show as
    # missing rather than failed; the run itself still shows as failed. Set it to 0 to keep Dagster's default.
    os.environ.setdefault(PLANNED_EVENTS_ENV, "1")
    return home


def get_instance(settings: Settings):
    """The persistent DagsterInstance for these settings (the same one `make ui` shows)."""
    from dagster import DagsterInstance

    prepare_dagster_home(settings)
    return DagsterInstance.get()
