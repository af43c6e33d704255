"""``ibf backup create|verify|restore``: the state under IBF_HOME, backed up and restored (ibf_core.storage.backup)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ibf_core.storage.backup import BackupError, create, lake_holder, restore, verify
from ibf_dagster.cli._common import _fail, _settings, out

# Heavy imports wait until a command runs: `ibf --help` must not load duckdb or pyarrow.


def backup_create(folder: Annotated[Path, typer.Argument(help="New folder for the backup")]) -> None:
    """Back up the warehouse, the MLflow store and artifacts and the Dagster instance (safe while runs write)."""
    try:
        result = create(_settings(), folder)
    except BackupError as exc:
        _fail(str(exc))
    out.print(f"backup {result.folder}: {result.files} files, {result.bytes / 2**20:.1f} MiB in {result.seconds:.1f} s",
              highlight=False)


def backup_verify(folder: Annotated[Path, typer.Argument(help="Backup folder")]) -> None:
    """Check every file of a backup against the SHA-256 checksums of its manifest."""
    try:
        manifest = verify(folder)
    except BackupError as exc:
        _fail(str(exc))
    out.print(f"backup {folder}: {len(manifest['files'])} files verified (created {manifest['created']})", highlight=False)


def _warehouse_held(home: Path) -> str | None:
    """A writer committing to the lake, or a session holding ``warehouse.duckdb`` (e.g. the DuckDB CLI)."""
    from ibf_core.storage.warehouse import Warehouse, WarehouseLocked

    try:
        Warehouse(home).view_versions()
    except WarehouseLocked as exc:
        return str(exc).split(", and ibf")[0]
    return lake_holder(home)


def backup_restore(folder: Annotated[Path, typer.Argument(help="Backup folder (verified first)")]) -> None:
    """Replace the state under IBF_HOME by a verified backup, atomically (the platform must be stopped)."""
    from ibf_core.storage.backends import open_warehouse
    from ibf_core.storage.warehouse import WarehouseError

    settings = _settings()
    try:
        manifest = restore(folder, settings, is_locked=_warehouse_held)
    except BackupError as exc:
        _fail(str(exc))
    try:  # the views of warehouse.duckdb name the lake's folders: defined anew for this IBF_HOME
        open_warehouse(settings).ensure_all_tables()
    except WarehouseError as exc:
        _fail(f"restored, but the warehouse's views could not be defined: {exc}")
    out.print(f"restored {settings.home_dir} from {folder} ({len(manifest['files'])} files, created {manifest['created']})",
              highlight=False)
