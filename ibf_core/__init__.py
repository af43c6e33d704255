"""ibf's core library (no Dagster). Importing it registers the table catalog with storage (cheap: lazy)."""

from ibf_core import catalog as _catalog  # noqa: F401  registers ibf_core.catalog.catalog with ibf_core.storage
