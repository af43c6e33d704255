"""The one place a warehouse backend is chosen: ``IBF_WAREHOUSE`` (lake or ducklake) and its settings."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ibf_core.settings import SettingsError, get_settings
from ibf_core.storage import atomic
from ibf_core.storage.ducklake import DuckLakeWarehouse, S3Credentials
from ibf_core.storage.interface import TableStore

if TYPE_CHECKING:  # pragma: no cover
    from ibf_core.settings import Settings

# Heavy imports (tenacity) stay inside the functions that need them: importing this module loads none of them.


def open_warehouse(settings: Settings | None = None, *, reader: bool = False) -> TableStore:
    """The warehouse the settings name (the environment's when None). For a writer DuckLake is checked once
    (catalog and data path reachable), so a wrong setting fails here with one message naming it, before anything
    is written; a ``reader`` (the REST service) creates nothing and learns of a missing one from ``exists()``."""
    if settings is None:
        settings = get_settings()
    if settings.storage_faults:  # only switched on here, so a test's in-process faults are not reset by an open
        try:
            atomic.set_faults(atomic.WriterFaults.parse(settings.storage_faults))
        except ValueError as exc:
            raise SettingsError(f"invalid settings: IBF_STORAGE_FAULTS: {exc}") from None
    if settings.warehouse == "ducklake":
        def secret(value):
            return value.get_secret_value() if value is not None else None

        s3 = S3Credentials(
            secret(settings.aws_access_key_id), secret(settings.aws_secret_access_key), settings.aws_region, settings.aws_endpoint_url
        )
        store = DuckLakeWarehouse(settings.home_dir, secret(settings.ducklake_catalog), settings.ducklake_data_path, s3,
                                  keep_hours=settings.ducklake_keep_hours)
        if not reader:
            store.check()
        return store
    from ibf_core.storage.warehouse import Warehouse

    return Warehouse(settings.home_dir)
