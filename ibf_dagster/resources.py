"""Resources, built in one place: how assets and sensors get the settings, the warehouse, bars and MLflow.

``SettingsResource`` carries the settings the definitions were built with (every value but the secrets, which
``Settings`` reads from the environment of the process that runs the step); assets and sensors call
``settings.get()`` instead of reading the environment or capturing settings when the code location loads.
"""

from __future__ import annotations

import json
from functools import lru_cache

import dagster as dg

from ibf_core.settings import Settings, get_settings, load_settings
from ibf_core.sources import make_source
from ibf_core.sources.base import BarSource
from ibf_core.storage.backends import open_warehouse
from ibf_core.storage.interface import TableStore
from ibf_dagster.compat import mlflow_tracking_resource

# Heavy imports (talib) stay inside the functions that need them: importing this module loads none of them.


@lru_cache(maxsize=8)
def _settings_from(values: str) -> Settings:
    return load_settings(**json.loads(values))


class SettingsResource(dg.ConfigurableResource):
    """ibf settings (``IBF_*`` / config/settings.toml) as the code location loaded them; secrets stay in the env."""

    values: str

    @classmethod
    def of(cls, settings: Settings) -> "SettingsResource":
        return cls(values=settings.model_dump_json(exclude=settings.secret_field_names()))

    def get(self) -> Settings:
        return _settings_from(self.values)


class WarehouseResource(dg.ConfigurableResource):
    """The warehouse (IBF_WAREHOUSE: the Parquet lake under IBF_HOME, or DuckLake); a DuckLake catalog string may
    hold a password, so it is read from the environment of the process running the step, never from run config."""

    home: str
    backend: str = "lake"
    data_path: str | None = None

    def get(self) -> TableStore:
        return _warehouse(self.home, self.backend, self.data_path)


@lru_cache(maxsize=8)
def _warehouse(home: str, backend: str, data_path: str | None) -> TableStore:
    """One store per process and location (a DuckLake store keeps its attached connections)."""
    return open_warehouse(get_settings().replace(home=home, warehouse=backend, ducklake_data_path=data_path))


class BarSourceResource(dg.ConfigurableResource):
    """The market-bar source; run config may override the settings' source (``ibf backfill --source csv --csv PATH``)."""

    source: str | None = None
    csv_path: str | None = None

    def get(self, settings: Settings) -> BarSource:
        changes = {k: v for k, v in (("source", self.source), ("csv_path", self.csv_path)) if v is not None}
        return make_source(settings.replace(**changes) if changes else settings)


def build_resources(settings: Settings) -> dict[str, object]:
    from ibf_core.models.registry import ensure_experiment

    return {
        "ibf": SettingsResource.of(settings),
        "warehouse": WarehouseResource(
            home=str(settings.home_dir), backend=settings.warehouse, data_path=settings.ducklake_data_path
        ),
        "bar_source": BarSourceResource(),
        "mlflow": mlflow_tracking_resource(
            settings.mlflow_experiment,
            settings.mlflow_uri,
            on_init=lambda: ensure_experiment(settings.mlflow_uri, settings.mlflow_experiment, settings.experiment_artifacts),
        ),
    }
