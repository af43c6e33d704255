"""Where the table catalog registers itself, so storage can ensure every table and view without importing the
modules that declare them. ``ibf_core.catalog`` registers on ``import ibf_core`` (see ``ibf_core/__init__.py``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from ibf_core.storage.tables import Catalog

CatalogProvider = Callable[[], "Catalog"]
_provider: CatalogProvider | None = None


def register_catalog(provider: CatalogProvider) -> None:
    """Make ``provider`` (called on every use, so it may import lazily) the catalog ``ensure_all_tables`` uses."""
    global _provider
    _provider = provider


def registered_catalog() -> Catalog:
    if _provider is None:
        raise LookupError("no table catalog is registered (ibf_core.catalog registers it on import)")
    return _provider()
