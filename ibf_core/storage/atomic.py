"""The one way ibf replaces a file: stage a hidden temp file beside it, fsync it, ``os.replace`` it in, fsync
the folder. A reader sees the old file or the new one, never half a file; a crash leaves the old file (and at
worst a temp file, which :func:`remove_stale_temps` clears later).

A write of several files is one :class:`AtomicBatch`: every file is staged before the first swap, so a failure
while staging changes nothing. Any failure (``BaseException``, a ``KeyboardInterrupt`` included) removes the
batch's temp files that were not swapped in yet.

Locking: the writer takes no lock. A read-modify-write must hold the target's :func:`lock` from its read to its
swap, which a lock taken inside the write cannot do; a blind overwrite needs none (the last writer wins). A
caller holding a target's lock may clear that target's leftover temp files by name (:func:`remove_stale_temps`).

A full disk is an ``OSError(ENOSPC)`` naming the target (never the removed temp file); the stores turn it into one
line with the free space (:mod:`ibf_core.storage.space`). :func:`set_faults` (or ``IBF_STORAGE_FAULTS`` through
``open_warehouse``) makes staged files fail that way, so tests and CI need no small filesystem.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import os
import re
import secrets
import shutil
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from fnmatch import fnmatchcase
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa

# Heavy imports (pyarrow) stay inside the functions that need them: importing this module loads none of them.

LOCK_WAIT_S = 120.0
# Files staged at once by stage_parquet_many: Parquet encoding, zstd and fsync release the GIL, so a 500-symbol
# write of features takes ~1.9 s instead of 4.0 s on 2 cores; more threads gain nothing there.
STAGE_THREADS = 4
# A temp file this old belongs to a dead writer whatever its name: no live write stages a file for an hour.
STALE_AFTER_S = 3600.0
_TEMP_SUFFIX = ".tmp"
# ".<target name>.<8 random hex characters>.tmp" (mkstemp's 8 characters in files of older ibf versions)
_TEMP_NAME = re.compile(r"^\.(?P<target>.+)\.[A-Za-z0-9_]{8}\.tmp$")


# The lock a warehouse holds while it swaps a batch in and a backup holds while it snapshots the folder's files,
# so a backup sees every batch whole or not at all (held for the renames only: milliseconds).
COMMIT_LOCK = "_commit"


class FileLock:
    """An exclusive ``flock`` of ``path`` (created if missing) while the ``with`` block runs, waited for up to
    ``timeout`` seconds (then TimeoutError naming the file). Each ``with`` opens its own descriptor, so threads of
    one process exclude each other too; the kernel drops the lock of a killed holder.

    The filelock package did the same with ~0.5 ms of Python around each call: 0.26 s for the 500 partition
    locks of one 500-symbol write, several times per daily cycle; this takes 0.04 ms."""

    __slots__ = ("path", "timeout", "_fd")

    def __init__(self, path: Path | str, timeout: float = LOCK_WAIT_S) -> None:
        self.path, self.timeout, self._fd = str(path), timeout, -1

    def __enter__(self) -> FileLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            deadline, pause = None, 0.001
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    now = time.monotonic()
                    deadline = now + self.timeout if deadline is None else deadline
                    if now >= deadline:
                        raise TimeoutError(f"the lock {self.path} is held by another writer (waited {self.timeout:g} s)") from None
                    time.sleep(pause)
                    pause = min(0.05, pause * 2)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        fd, self._fd = self._fd, -1
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


def lock(folder: Path, name: str, timeout: float = LOCK_WAIT_S) -> FileLock:
    """An inter-process lock ``folder/.locks/<name>.lock`` for a read-modify-write of files under ``folder``."""
    lock_dir = folder / ".locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    return FileLock(lock_dir / f"{name}.lock", timeout)


@contextlib.contextmanager
def locks(targets: Iterable[tuple[Path, str]], timeout: float = LOCK_WAIT_S) -> Iterator[None]:
    """The :func:`lock` of every (folder, name), taken in sorted order so two writers never deadlock."""
    wanted = sorted(set(targets))
    for folder in dict.fromkeys(folder for folder, _ in wanted):
        (folder / ".locks").mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        for folder, name in wanted:
            stack.enter_context(FileLock(folder / ".locks" / f"{name}.lock", timeout))
        yield


# ----- the fault switch ---------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class WriterFaults:
    """Faults this process's atomic writer injects (tests, ``IBF_STORAGE_FAULTS``): after ``full_disk_skip`` files
    staged normally, the next ``full_disk_files`` files (-1: every one) fail with ENOSPC once their temp file holds
    data, as a disk that fills up in the middle of a write does."""

    full_disk_skip: int = 0
    full_disk_files: int = 0

    @classmethod
    def parse(cls, spec: str) -> WriterFaults:
        """``full_disk_files=2,full_disk_skip=1`` (empty: no fault); an unknown name or a bad value raises ValueError."""
        names = {f.name for f in dataclasses.fields(cls)}
        values: dict[str, int] = {}
        for part in filter(None, (p.strip() for p in spec.split(","))):
            name, sep, raw = part.partition("=")
            if not sep or name.strip() not in names:
                raise ValueError(f"storage fault {part!r}: use name=value with a name among {', '.join(sorted(names))}")
            try:
                values[name.strip()] = int(raw)
            except ValueError:
                raise ValueError(f"storage fault {part!r}: {raw.strip()!r} is not an integer") from None
        return cls(**values)


_faults = WriterFaults()
_faults_lock = threading.Lock()


def set_faults(faults: WriterFaults | None = None) -> WriterFaults:
    """Switch this process's writer faults (None: none); returns the previous ones."""
    global _faults
    with _faults_lock:
        previous, _faults = _faults, faults or WriterFaults()
    return previous


def _take_full_disk() -> bool:
    """Whether the file being staged now fails as if the disk were full (consumes one unit of the fault)."""
    global _faults
    with _faults_lock:
        faults = _faults
        if faults.full_disk_files == 0:
            return False
        if faults.full_disk_skip > 0:
            _faults = dataclasses.replace(faults, full_disk_skip=faults.full_disk_skip - 1)
            return False
        if faults.full_disk_files > 0:
            _faults = dataclasses.replace(faults, full_disk_files=faults.full_disk_files - 1)
        return True


# ----- staging --------------------------------------------------------------------------------------
def _create_temp(folder: Path, target_name: str, make: Callable[[Path], None]) -> Path:
    """A new hidden ``.<target>.<8 random characters>.tmp`` beside the target, created by ``make``.

    Not ``tempfile.mkstemp``/``mkdtemp``: they create 0600 files and 0700 folders whatever the umask, so a shared
    analyst account could not read the lake. ``make`` creates with 0666/0777 and the kernel applies the umask.
    """
    for _ in range(100):
        path = folder / f".{target_name}.{secrets.token_hex(4)}{_TEMP_SUFFIX}"
        try:
            make(path)
        except FileExistsError:
            continue
        return path
    raise FileExistsError(f"no free temp name beside {folder / target_name}")  # pragma: no cover


def _new_file(path: Path) -> None:
    os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))


def _new_folder(path: Path) -> None:
    os.mkdir(path, 0o777)


def _stage(target: Path, write: Callable[[Path], None]) -> Path:
    """``write`` into a new hidden temp file beside ``target`` and fsync it; the temp file is gone on failure, and
    a full disk is raised as ``OSError(ENOSPC)`` naming ``target`` (not the temp file, which no longer exists)."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = _create_temp(target.parent, target.name, _new_file)
    except OSError as exc:
        if _says_full(exc):
            raise _named_full_disk(exc, target) from None
        raise
    try:
        write(tmp)
        if _take_full_disk():
            raise OSError(errno.ENOSPC, "No space left on device (injected by IBF_STORAGE_FAULTS)", str(tmp))
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        # The failed writer's frames hold its open file, whose blocks stay in use until they go: clear them now,
        # not at some later garbage collection (a full disk would stay full while the error is kept).
        traceback.clear_frames(exc.__traceback__)
        if isinstance(exc, OSError) and _says_full(exc):  # Arrow's OSError keeps the errno only in its text
            raise _named_full_disk(exc, target) from None
        raise
    return tmp


def _says_full(exc: OSError) -> bool:
    return exc.errno == errno.ENOSPC or "no space left on device" in str(exc).lower()


def _named_full_disk(exc: OSError, target: Path) -> OSError:
    return OSError(errno.ENOSPC, str(exc.strerror or exc).splitlines()[0], str(target))


def _parquet_writer(table: pa.Table) -> Callable[[Path], None]:
    def write(tmp: Path) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq  # looked up per call: tests replace pq.write_table to fail midway

        # Dictionary encoding only for text columns: float columns (most of ``features``' 115) are nearly all
        # distinct, so a dictionary only adds a page per column. Measured on 100 features files of 245 rows:
        # 7.5-9.9 ms a write instead of 10.6-13.8, 6.0-7.3 ms a read instead of 5.9-9.0, 10% smaller.
        types = pa.types
        text = [f.name for f in table.schema if types.is_string(f.type) or types.is_large_string(f.type) or types.is_dictionary(f.type)]
        pq.write_table(table, tmp, compression="zstd", use_dictionary=text)

    return write


def _bytes_writer(data: bytes) -> Callable[[Path], None]:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            handle.write(data)

    return write


def _fsync_dir(folder: Path) -> None:
    """Make the swap itself durable (the rename lives in the folder's entry table)."""
    if os.name != "posix":  # pragma: no cover - folders cannot be opened for fsync elsewhere
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ----- the batch ------------------------------------------------------------------------------------
class AtomicBatch:
    """Files staged now and swapped in (in the order staged) by :meth:`commit`; deletions happen in that order too.

    As a context manager it commits on a clean exit and discards (removes every temp file) on any exception.
    ``commit_lock`` (e.g. ``lock(folder, COMMIT_LOCK)``) is held while the files are swapped in.
    """

    def __init__(self, commit_lock: contextlib.AbstractContextManager | None = None) -> None:
        self._ops: list[tuple[Path | None, Path]] = []  # (temp file, target); None: delete the target
        self._done = False
        self._commit_lock = commit_lock or contextlib.nullcontext()

    def __len__(self) -> int:
        return len(self._ops)

    def _add(self, target: Path, write: Callable[[Path], None]) -> None:
        if self._done:
            raise RuntimeError("this batch was already committed or discarded")
        try:
            self._ops.append((_stage(target, write), target))
        except BaseException:
            self.discard()  # a failure while staging changes nothing: no temp file of this batch survives
            raise

    def stage_parquet(self, target: Path, table: pa.Table) -> None:
        self._add(target, _parquet_writer(table))

    def stage_parquet_many(self, jobs: Iterable[tuple[Path, Callable[[], pa.Table]]]) -> None:
        """Stage one Parquet file per (target, make table) on :data:`STAGE_THREADS` threads, in the order given.

        Each table is made in its thread and dropped once written, so at most a few are in memory. A failure
        of any removes every file of the batch, as :meth:`stage_parquet` does."""
        if self._done:
            raise RuntimeError("this batch was already committed or discarded")
        jobs = list(jobs)

        def one(job: tuple[Path, Callable[[], pa.Table]]) -> Path:
            target, make = job
            return _stage(target, _parquet_writer(make()))

        staged: list[Path | None] = [None] * len(jobs)
        error: BaseException | None = None
        with ThreadPoolExecutor(max_workers=STAGE_THREADS, thread_name_prefix="ibf-stage") as pool:
            futures = [pool.submit(one, job) for job in jobs]
            for i, future in enumerate(futures):
                try:
                    staged[i] = future.result()
                except BaseException as exc:  # the others still finish, so their temp files can be removed
                    error = error or exc
        self._ops.extend((tmp, target) for tmp, (target, _) in zip(staged, jobs) if tmp is not None)
        if error is not None:
            self.discard()
            raise error

    def stage_bytes(self, target: Path, data: bytes) -> None:
        self._add(target, _bytes_writer(data))

    def stage_text(self, target: Path, text: str, encoding: str = "utf-8") -> None:
        self.stage_bytes(target, text.encode(encoding))

    def stage_json(self, target: Path, value: Any, **dumps: Any) -> None:
        """``value`` as JSON text; ``dumps`` are passed to :func:`json.dumps` (e.g. ``indent``, ``sort_keys``)."""
        self.stage_text(target, json.dumps(value, **dumps))

    def delete(self, target: Path) -> None:
        """Remove ``target`` (if present) at its place in the commit order."""
        if self._done:
            raise RuntimeError("this batch was already committed or discarded")
        self._ops.append((None, target))

    def commit(self) -> int:
        """Swap every staged file in and apply the deletions; returns how many. On a failure the files not yet
        swapped in are discarded (the ones before stay swapped in: a rename cannot be taken back)."""
        if self._done:
            raise RuntimeError("this batch was already committed or discarded")
        self._done = True
        folders: dict[Path, None] = {}
        with self._commit_lock:
            for i, (tmp, target) in enumerate(self._ops):
                try:
                    if tmp is None:
                        target.unlink(missing_ok=True)
                    else:
                        os.replace(tmp, target)
                except BaseException:
                    _unlink_temps(self._ops[i:])
                    raise
                folders[target.parent] = None
        for folder in folders:
            _fsync_dir(folder)
        return len(self._ops)

    def discard(self) -> None:
        """Remove every staged temp file; nothing is swapped in."""
        self._done = True
        _unlink_temps(self._ops)

    def __enter__(self) -> AtomicBatch:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if kind is None:
            self.commit()
        else:
            self.discard()


def _unlink_temps(ops: Iterable[tuple[Path | None, Path]]) -> None:
    for tmp, _ in ops:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


# ----- one file -------------------------------------------------------------------------------------
def write_parquet(target: Path, table: pa.Table) -> None:
    """Replace ``target`` by ``table`` as zstd-compressed Parquet, atomically and durably."""
    with AtomicBatch() as batch:
        batch.stage_parquet(target, table)


def write_bytes(target: Path, data: bytes) -> None:
    with AtomicBatch() as batch:
        batch.stage_bytes(target, data)


def write_text(target: Path, text: str, encoding: str = "utf-8") -> None:
    with AtomicBatch() as batch:
        batch.stage_text(target, text, encoding)


def write_json(target: Path, value: Any, **dumps: Any) -> None:
    with AtomicBatch() as batch:
        batch.stage_json(target, value, **dumps)


# ----- leftovers ------------------------------------------------------------------------------------
def temp_target(path: Path) -> str | None:
    """The target's file name when ``path`` is a temp file of this module, else None."""
    match = _TEMP_NAME.match(path.name)
    return match.group("target") if match else None


def remove_stale_temps(
    folder: Path, held: Iterable[str] = (), *, max_age_s: float = STALE_AFTER_S, now: float | None = None
) -> list[Path]:
    """Remove temp files of dead writers in ``folder``; returns the paths removed.

    ``held``: file-name patterns (``fnmatch``, e.g. ``"AAPL.parquet"`` or ``"[0-9]*.parquet"``) of targets whose
    lock the caller holds; every writer of such a target holds that lock, so its temp files are a dead writer's
    whatever their age. Any other temp file is removed once older than ``max_age_s``.
    """
    if not folder.is_dir():
        return []
    patterns = list(held)
    now = time.time() if now is None else now
    removed = []
    for path in folder.iterdir():
        target = temp_target(path)
        if target is None:
            continue
        try:
            locked = any(fnmatchcase(target, p) for p in patterns)
            if locked or now - path.stat().st_mtime > max_age_s:
                path.unlink()
                removed.append(path)
        except FileNotFoundError:  # swapped in or removed meanwhile by its (live) writer
            continue
    return sorted(removed)


# ----- folders ------------------------------------------------------------------------------------
def publish_folder(target: Path, build: Callable[[Path], Path | None]) -> bool:
    """Create the folder ``target`` whole or not at all: ``build(staging)`` fills a hidden folder beside it (and may
    return the sub-folder that holds the result), its files are fsynced, then it is renamed into place.

    First writer wins: when ``target`` already exists (another process published it) nothing changes and False is
    returned. The staging folder is removed in every case.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = _create_temp(target.parent, target.name, _new_folder)
    try:
        built = Path(build(staging) or staging)
        for path in sorted(built.rglob("*")):
            if path.is_file():
                with open(path, "rb") as handle:
                    os.fsync(handle.fileno())
        try:
            os.rename(built, target)
        except OSError:  # the target exists: published meanwhile by another process
            return False
        _fsync_dir(target.parent)
        return True
    finally:
        shutil.rmtree(staging, ignore_errors=True)
