"""Disk space under the state folder: how much is free, and the one error a full disk raises.

A write that hits ENOSPC changes nothing (the atomic writer removes its temp files, see
:mod:`ibf_core.storage.atomic`); :func:`naming_full_disk` turns the low-level error (an ``OSError`` from Python, an
Arrow or DuckDB error whose text says so) into :class:`DiskFullError` with one line naming the path and the free
space, which the CLI prints as its ``error:`` line and a Dagster run shows as its failure.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from ibf_core.storage.interface import DiskFullError

F = TypeVar("F", bound=Callable[..., Any])

# ENOSPC, and EDQUOT (a quota is a full disk for this user); Arrow and DuckDB wrap them in their own errors and
# keep only the text.
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
_FULL_TEXTS = ("no space left on device", "disk quota exceeded")


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it was raised from) says the disk is full."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _FULL_ERRNOS:
            return True
        if any(text in str(current).lower() for text in _FULL_TEXTS):
            return True
        current = current.__cause__ or current.__context__
    return False


def existing_folder(path: Path) -> Path:
    """``path`` or its nearest existing parent folder (a full disk may stop a folder from being created)."""
    path = Path(path).absolute()
    while not path.is_dir() and path != path.parent:
        path = path.parent
    return path


def free_bytes(path: Path) -> int:
    """Bytes free for this user on the filesystem holding ``path`` (or its nearest existing parent)."""
    return shutil.disk_usage(existing_folder(path)).free


def human_bytes(count: float) -> str:
    """``512 B``, ``3.1 MiB``, ``1.2 GiB``: binary units, one decimal."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


@dataclass(frozen=True)
class FreeSpace:
    """Free space under the state folder against the floor ``IBF_MIN_FREE_MIB`` (0: no floor)."""

    free_bytes: int
    floor_bytes: int

    @property
    def ok(self) -> bool:
        return self.free_bytes >= self.floor_bytes

    def summary(self) -> str:
        """``"3.1 GiB free under IBF_HOME (floor 1.0 GiB)"``, and ``"below the floor"`` when it is."""
        below = "; below the floor" if not self.ok else ""
        return f"{human_bytes(self.free_bytes)} free under IBF_HOME (floor IBF_MIN_FREE_MIB = {human_bytes(self.floor_bytes)}){below}"


def free_space(home: Path, min_free_mib: int) -> FreeSpace:
    """The free space under ``home`` (its nearest existing parent before it is created) against the floor."""
    return FreeSpace(free_bytes(home), min_free_mib * 2**20)


def disk_full_error(path: Path | str, home: Path) -> DiskFullError:
    """The one-line error of a write of ``path`` that hit a full disk under ``home``; the free space is measured
    where ``path`` lies (the lake may be a filesystem of its own inside ``home``)."""
    return DiskFullError(f"no space left on device writing {path} ({human_bytes(free_bytes(Path(path)))} free under {home})")


@contextlib.contextmanager
def naming_full_disk(home: Path, what: Path | str | None = None) -> Iterator[None]:
    """Raise a full disk inside as :class:`DiskFullError` naming the path written (the error's file name, else
    ``what``, else ``home``) and the free space under ``home``; any other error passes unchanged."""
    try:
        yield
        return
    except DiskFullError:
        raise
    except Exception as exc:
        if not is_disk_full(exc):
            raise
        error = disk_full_error(getattr(exc, "filename", None) or what or home, home)
    raise error  # outside the handler: no chained low-level error (and its frames) rides along


def full_disk_named(method: F) -> F:
    """A store method (of an object with ``home``) whose full disk raises :class:`DiskFullError` (see above)."""

    @functools.wraps(method)
    def run(self: Any, *args: Any, **kwargs: Any) -> Any:
        with naming_full_disk(self.home):
            return method(self, *args, **kwargs)

    return run  # type: ignore[return-value]
