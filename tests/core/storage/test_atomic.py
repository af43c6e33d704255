"""The one atomic writer (ibf_core.storage.atomic): stage, fsync, swap, fsync the folder; nothing half-done."""

import json
import os
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ibf_core.storage import atomic


def table(value: float) -> pa.Table:
    return pa.table({"x": pa.array([value, value + 1], pa.float64())})


def temps(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def failing_midway(monkeypatch, fail_on: int = 1, error: type[BaseException] = OSError) -> dict[str, int]:
    """Make the ``fail_on``-th Parquet write write half a file, then raise."""
    real = pq.write_table
    calls = {"n": 0}

    def write(tbl, where, **kw):
        calls["n"] += 1
        if calls["n"] == fail_on:
            with open(where, "wb") as handle:
                handle.write(b"PAR1 half a file")
            raise error("disk full")
        return real(tbl, where, **kw)

    monkeypatch.setattr(pq, "write_table", write)
    return calls


def test_write_parquet_replaces_the_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "t" / "a.parquet"
    atomic.write_parquet(target, table(1.0))
    atomic.write_parquet(target, table(5.0))
    assert pq.read_table(target).column("x").to_pylist() == [5.0, 6.0]
    assert pq.ParquetFile(target).metadata.row_group(0).column(0).compression == "ZSTD"
    assert temps(target.parent) == []


@pytest.mark.parametrize("error", [OSError, KeyboardInterrupt])
def test_a_failure_while_staging_leaves_the_old_file_byte_identical(tmp_path, monkeypatch, error):
    target = tmp_path / "a.parquet"
    atomic.write_parquet(target, table(1.0))
    before = target.read_bytes()
    failing_midway(monkeypatch, error=error)
    with pytest.raises(error):
        atomic.write_parquet(target, table(2.0))
    assert target.read_bytes() == before
    assert temps(tmp_path) == []


def test_a_batch_whose_second_of_three_stagings_fails_swaps_nothing(tmp_path, monkeypatch):
    a, b, c = (tmp_path / f"{n}.parquet" for n in "abc")
    atomic.write_parquet(a, table(1.0))
    atomic.write_parquet(b, table(2.0))
    before = {p.name: p.read_bytes() for p in (a, b)}
    calls = failing_midway(monkeypatch, fail_on=2)
    with pytest.raises(OSError, match="disk full"):
        with atomic.AtomicBatch() as batch:
            batch.stage_parquet(a, table(10.0))
            batch.stage_parquet(b, table(20.0))
            batch.stage_parquet(c, table(30.0))
    assert calls["n"] == 2  # the third was never staged
    assert {p.name: p.read_bytes() for p in (a, b)} == before and not c.exists()
    assert temps(tmp_path) == []


def test_many_files_staged_on_threads_swap_in_the_order_given(tmp_path, monkeypatch):
    targets = [tmp_path / f"{i:02d}.parquet" for i in range(12)]
    swapped, real = [], os.replace
    monkeypatch.setattr(atomic.os, "replace", lambda src, dst: (swapped.append(Path(dst)), real(src, dst)))
    with atomic.AtomicBatch() as batch:
        batch.stage_parquet_many((t, lambda i=i: table(float(i))) for i, t in enumerate(targets))
        batch.delete(targets[0])
    assert swapped == targets
    assert [pq.read_table(t).column("x")[0].as_py() for t in targets[1:]] == [float(i) for i in range(1, 12)]
    assert not targets[0].exists() and temps(tmp_path) == []


def test_a_failing_file_among_many_staged_on_threads_leaves_nothing(tmp_path):
    targets = [tmp_path / f"{i:02d}.parquet" for i in range(12)]
    atomic.write_parquet(targets[0], table(-1.0))
    before = targets[0].read_bytes()

    def make(i):
        if i == 7:
            raise OSError("disk full")
        return table(float(i))

    with pytest.raises(OSError, match="disk full"):
        with atomic.AtomicBatch() as batch:
            batch.stage_parquet_many((t, lambda i=i: make(i)) for i, t in enumerate(targets))
    assert targets[0].read_bytes() == before
    assert [t for t in targets[1:] if t.exists()] == [] and temps(tmp_path) == []


def test_a_failure_during_the_swaps_removes_the_remaining_temps(tmp_path, monkeypatch):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    real = os.replace

    def replace(src, dst):
        if str(dst).endswith("b.json"):
            raise OSError("gone")
        real(src, dst)

    monkeypatch.setattr(atomic.os, "replace", replace)
    batch = atomic.AtomicBatch()
    batch.stage_json(a, {"a": 1})
    batch.stage_json(b, {"b": 2})
    with pytest.raises(OSError, match="gone"):
        batch.commit()
    assert json.loads(a.read_text()) == {"a": 1} and not b.exists()
    assert temps(tmp_path) == []


def test_the_file_and_the_folder_are_fsynced(tmp_path, monkeypatch):
    real = os.fsync
    synced = []

    def fsync(fd):
        synced.append(os.path.isdir(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(atomic.os, "fsync", fsync)
    atomic.write_text(tmp_path / "a.txt", "hello")
    assert synced == [False, True]  # the staged file before the swap, the folder after it
    assert (tmp_path / "a.txt").read_text() == "hello"


def test_batch_order_and_deletions(tmp_path):
    old = tmp_path / "old.bin"
    atomic.write_bytes(old, b"x")
    with atomic.AtomicBatch() as batch:
        batch.stage_bytes(tmp_path / "new.bin", b"y")
        batch.delete(old)
        batch.delete(tmp_path / "never-existed.bin")
    assert len(batch) == 3
    assert not old.exists() and (tmp_path / "new.bin").read_bytes() == b"y"
    with pytest.raises(RuntimeError):
        batch.stage_bytes(tmp_path / "late.bin", b"z")


def test_stale_temp_cleanup_removes_dead_writers_temps_only(tmp_path):
    # writers that died after staging: their temp files are still there
    dead_held = atomic._stage(tmp_path / "AAA.parquet", lambda p: p.write_bytes(b"a"))
    dead_old = atomic._stage(tmp_path / "BBB.parquet", lambda p: p.write_bytes(b"b"))
    live = atomic._stage(tmp_path / "CCC.parquet", lambda p: p.write_bytes(b"c"))
    data = tmp_path / "AAA.parquet"
    data.write_bytes(b"data")
    hour_ago = time.time() - atomic.STALE_AFTER_S - 60
    os.utime(dead_old, (hour_ago, hour_ago))
    assert atomic.temp_target(dead_held) == "AAA.parquet" and atomic.temp_target(data) is None

    removed = atomic.remove_stale_temps(tmp_path, held=["AAA.parquet"])
    assert removed == sorted([dead_held, dead_old])  # held by the caller's lock, or older than an hour
    assert live.exists() and data.read_bytes() == b"data"  # a fresh temp of a target not locked may be live
    assert atomic.remove_stale_temps(tmp_path, held=["[A-Z]*.parquet"]) == [live]
    assert atomic.remove_stale_temps(tmp_path / "missing") == []


def test_publish_folder_is_whole_or_nothing_and_first_writer_wins(tmp_path):
    target = tmp_path / "cache" / "model" / "1"

    def failing(staging):
        (staging / "half.json").write_text("{")
        raise RuntimeError("download broke")

    with pytest.raises(RuntimeError, match="download broke"):
        atomic.publish_folder(target, failing)
    assert not target.exists() and list(target.parent.iterdir()) == []  # no half folder, no staging left

    def build(staging):
        (staging / "out").mkdir()
        (staging / "out" / "bundle.json").write_text("{}")
        return staging / "out"

    assert atomic.publish_folder(target, build) is True
    assert (target / "bundle.json").read_text() == "{}"
    def other(staging):
        (staging / "other").write_text("x")

    assert atomic.publish_folder(target, other) is False  # already published: the first copy stays
    assert sorted(p.name for p in target.iterdir()) == ["bundle.json"]
    assert [p.name for p in target.parent.iterdir()] == ["1"]


@pytest.mark.parametrize("umask, file_mode, folder_mode", [(0o002, 0o664, 0o775), (0o022, 0o644, 0o755)])
def test_written_files_and_published_folders_respect_the_umask(tmp_path, umask, file_mode, folder_mode):
    """mkstemp/mkdtemp would make them 0600/0700 whatever the umask: a shared analyst account could not read them."""
    import stat

    previous = os.umask(umask)
    try:
        atomic.write_parquet(tmp_path / "a.parquet", table(1.0))
        atomic.write_json(tmp_path / "b.json", {"x": 1})
        with atomic.AtomicBatch() as batch:
            batch.stage_text(tmp_path / "c.txt", "c")
        assert atomic.publish_folder(tmp_path / "model", lambda staging: (staging / "weights.bin").write_bytes(b"w") and None)
    finally:
        os.umask(previous)
    for name in ("a.parquet", "b.json", "c.txt", "model/weights.bin"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == file_mode, name
    assert stat.S_IMODE((tmp_path / "model").stat().st_mode) == folder_mode


# ----- locks --------------------------------------------------------------------------------------
_HOLD = "import sys, time; from pathlib import Path; from ibf_core.storage import atomic\n" \
        "with atomic.lock(Path(sys.argv[1]), 'S1'):\n    print('held', flush=True); time.sleep(60)\n"


def test_a_lock_another_process_holds_times_out_naming_its_file_and_a_killed_holder_frees_it(tmp_path):
    import signal
    import subprocess
    import sys

    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        started = time.monotonic()
        with pytest.raises(TimeoutError, match=r"\.locks/S1\.lock is held by another writer \(waited 0\.3 s\)"):
            with atomic.locks([(tmp_path, "S0"), (tmp_path, "S1")], timeout=0.3):
                pass
        assert 0.3 <= time.monotonic() - started < 5
        with atomic.lock(tmp_path, "S0", timeout=0.1):  # the lock taken before the timeout was released
            pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(30)
    with atomic.lock(tmp_path, "S1", timeout=1):  # the kernel freed the killed holder's lock
        pass


def test_threads_of_one_process_exclude_each_other(tmp_path):
    inside, overlaps = [0], []

    def work():
        for _ in range(50):
            with atomic.locks([(tmp_path, "a"), (tmp_path, "b")]):
                inside[0] += 1
                overlaps.append(inside[0])
                time.sleep(0.0005)
                inside[0] -= 1

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(overlaps) == 200 and max(overlaps) == 1
