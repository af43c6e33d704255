"""The Dagster instance lives under IBF_HOME: DAGSTER_HOME = $IBF_HOME/dagster with the repo's dagster.yaml."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ibf_core.settings import Settings

DAGSTER_YAML = Path(__file__).resolve().parents[1] / "dagster.yaml"


def prepare_dagster_home(settings: Settings) -> Path:
    """Create DAGSTER_HOME under IBF_HOME, refresh its dagster.yaml and export DAGSTER_HOME for this process."""
    home = settings.dagster_home
    home.mkdir(parents=True, exist_ok=True)
    target = home / "dagster.yaml"
    if not target.exists() or target.read_bytes() != DAGSTER_YAML.read_bytes():
        shutil.copyfile(DAGSTER_YAML, target)
    os.environ["DAGSTER_HOME"] = str(home)
    return home


def get_instance(settings: Settings):
    """The persistent DagsterInstance for these settings (the same one `make ui` shows)."""
    from dagster import DagsterInstance

    prepare_dagster_home(settings)
    return DagsterInstance.get()
