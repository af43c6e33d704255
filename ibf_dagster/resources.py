"""Resources, built in one place from ibf settings (environment / config/settings.toml) and run config."""

from __future__ import annotations

import dagster as dg

from ibf_core.settings import Settings, load_settings
from ibf_core.sources.base import BarSource
from ibf_core.storage.warehouse import Warehouse


class WarehouseResource(dg.ConfigurableResource):
    """The DuckDB warehouse under IBF_HOME."""

    home: str

    def get(self) -> Warehouse:
        return Warehouse(self.home)


class BarSourceResource(dg.ConfigurableResource):
    """The market-bar source; run config may override the settings (``ibf backfill --source csv --csv PATH``)."""

    source: str
    csv_path: str | None = None

    def settings(self) -> Settings:
        return load_settings(source=self.source, csv_path=self.csv_path)

    def get(self) -> BarSource:
        from ibf_core.sources import make_source

        return make_source(self.settings())


def build_resources(settings: Settings) -> dict[str, dg.ConfigurableResource]:
    return {
        "warehouse": WarehouseResource(home=str(settings.home_dir)),
        "bar_source": BarSourceResource(
            source=settings.source, csv_path=str(settings.csv_path) if settings.csv_path else None
        ),
    }
