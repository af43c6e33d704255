"""Backups of IBF_HOME: consistent while writers commit, verified by checksums, restored atomically."""

import hashlib
import json
import sqlite3
import threading
import time

import pytest
from helpers.bars import make_bars

from ibf_core.market.checks import validate_bars
from ibf_core.settings import load_settings
from ibf_core.storage import atomic, backup
from ibf_core.storage.backup import BackupError
from ibf_core.storage.tables import MARKET_BARS
from ibf_core.storage.warehouse import Warehouse

SYMBOLS = [f"S{i:02d}" for i in range(24)]  # enough files that a batch's swaps take a while


def bars(version: int, symbols=SYMBOLS):
    """Valid bars whose every close carries ``version`` (so a file tells which commit wrote it)."""
    frame = validate_bars(make_bars(symbols=symbols, end="2021-02-26"), "test").assign(source="test")
    return frame.assign(volume=version)


def write_version(wh: Warehouse, version: int) -> None:
    wh.replace_slice(MARKET_BARS, bars(version), SYMBOLS, "2021-01-01", "2021-02-26")


def content(path) -> str:
    """A file's content; a SQLite database's rows (the backup API copies rows, not the file's bytes)."""
    if path.suffix == ".db":
        con = sqlite3.connect(path)
        try:
            return "\n".join(con.iterdump())
        finally:
            con.close()
    return hashlib.sha256(path.read_bytes()).hexdigest()


def state(home) -> dict[str, str]:
    """Every backed-up file under ``home`` by content."""
    return {str(p.relative_to(home)): content(p)
            for p in sorted(home.rglob("*")) if p.is_file() and not backup._skipped(p.relative_to(home))}


def make_sqlite(path, rows):
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE IF NOT EXISTS runs (id INTEGER, artifact_uri TEXT)")
    con.executemany("INSERT INTO runs VALUES (?, ?)", rows)
    con.commit()
    con.close()


@pytest.fixture
def settings(ibf_home):
    wh = Warehouse(ibf_home)
    write_version(wh, 1)
    make_sqlite(ibf_home / "mlflow.db", [(1, f"{ibf_home}/mlflow-artifacts/1/abc/artifacts")])
    (ibf_home / "mlflow-artifacts" / "1").mkdir(parents=True)
    (ibf_home / "mlflow-artifacts" / "1" / "model.pkl").write_bytes(b"weights")
    (ibf_home / "cache").mkdir()
    (ibf_home / "cache" / "big.bin").write_bytes(b"x" * 100)
    return load_settings()


def test_backup_verify_restore_round_trip(settings, ibf_home, tmp_path):
    before = state(ibf_home)
    result = backup.create(settings, tmp_path / "b1")
    manifest = backup.verify(result.folder)
    assert "home/mlflow.db" in manifest["files"] and "home/mlflow-artifacts/1/model.pkl" in manifest["files"]
    assert not any(f.startswith("home/cache/") or "/.locks/" in f for f in manifest["files"])  # caches and locks left out
    assert result.files == len(manifest["files"]) and result.bytes > 0
    # change everything after the backup
    write_version(Warehouse(ibf_home), 2)
    make_sqlite(ibf_home / "mlflow.db", [(2, "x")])
    (ibf_home / "mlflow-artifacts" / "1" / "model.pkl").write_bytes(b"other")
    assert state(ibf_home) != before
    backup.restore(result.folder, settings)
    assert state(ibf_home) == before
    assert set(Warehouse(ibf_home).query("SELECT DISTINCT volume FROM market_bars").volume) == {1}
    assert not list(ibf_home.parent.glob(".ibf_home.restore-*"))  # the previous state is gone with its staging


def test_a_backup_is_a_new_folder_outside_ibf_home(settings, ibf_home, tmp_path):
    (tmp_path / "exists").mkdir()
    with pytest.raises(BackupError, match="exists"):
        backup.create(settings, tmp_path / "exists")
    with pytest.raises(BackupError, match="inside IBF_HOME"):
        backup.create(settings, ibf_home / "backups")


def test_a_tampered_file_fails_verification_and_restore_leaves_the_state(settings, ibf_home, tmp_path):
    folder = backup.create(settings, tmp_path / "b1").folder
    write_version(Warehouse(ibf_home), 2)
    after = state(ibf_home)
    damaged = folder / "home" / "lake" / "market_bars" / "S01.parquet"
    damaged.write_bytes(damaged.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(BackupError) as caught:
        backup.verify(folder)
    assert str(damaged) in str(caught.value) and "SHA-256" in str(caught.value)
    with pytest.raises(BackupError, match="S01.parquet"):
        backup.restore(folder, settings)
    assert state(ibf_home) == after


@pytest.mark.parametrize("change", ["missing", "extra", "manifest"])
def test_verification_names_a_missing_extra_or_damaged_manifest_file(settings, tmp_path, change):
    folder = backup.create(settings, tmp_path / "b1").folder
    if change == "missing":
        (folder / "home" / "mlflow.db").unlink()
        expected = str(folder / "home" / "mlflow.db")
    elif change == "extra":
        (folder / "home" / "planted.txt").write_text("x")
        expected = str(folder / "home" / "planted.txt")
    else:
        (folder / "manifest.json").write_text("{not json")
        expected = str(folder / "manifest.json")
    with pytest.raises(BackupError, match=expected.replace(".", r"\.")):
        backup.verify(folder)


def test_backups_taken_while_a_writer_commits_are_never_torn(settings, ibf_home, tmp_path):
    """A writer commits versions 2, 3, ... of 24 symbols' files in one batch each, while backups are taken:
    every backup holds one version in all the files (a committed state), and restores to it."""
    stop = threading.Event()
    committed = []

    def writer():
        wh, version = Warehouse(ibf_home), 2
        while not stop.is_set():
            write_version(wh, version)
            committed.append(version)
            version += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        folders = [backup.create(settings, tmp_path / f"b{i}").folder for i in range(12)]
    finally:
        stop.set()
        thread.join()
    assert len(committed) >= 2
    seen = set()
    for folder in folders:
        lake = Warehouse(folder / "home")
        versions = lake.query("SELECT symbol, min(volume) AS lo, max(volume) AS hi FROM market_bars GROUP BY symbol")
        assert len(versions) == len(SYMBOLS) and (versions.lo == versions.hi).all()
        assert versions.lo.nunique() == 1, f"{folder} is torn: {versions.to_dict('records')}"
        seen.add(int(versions.lo.iloc[0]))
    assert seen <= {1, *committed}
    backup.restore(folders[-1], settings)
    restored = Warehouse(ibf_home).query("SELECT DISTINCT volume FROM market_bars").volume
    assert list(restored) == [int(Warehouse(folders[-1] / "home").query("SELECT max(volume) v FROM market_bars").v[0])]


def test_sqlite_is_copied_as_one_committed_state(ibf_home, tmp_path):
    """A writer adds rows two at a time in one transaction: a backup never holds an odd count."""
    ibf_home.mkdir(parents=True)
    db = ibf_home / "dagster" / "history" / "runs.db"
    db.parent.mkdir(parents=True)
    make_sqlite(db, [])
    stop = threading.Event()

    def writer():
        con = sqlite3.connect(db, timeout=30)
        i = 0
        while not stop.is_set():
            with con:
                con.execute("INSERT INTO runs VALUES (?, 'a')", [i])
                con.execute("INSERT INTO runs VALUES (?, 'b')", [i])
            i += 1
        con.close()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        folders = [backup.create(load_settings(), tmp_path / f"b{i}").folder for i in range(5)]
    finally:
        stop.set()
        thread.join()
    counts = [sqlite3.connect(f / "home" / "dagster" / "history" / "runs.db").execute("SELECT count(*) FROM runs").fetchone()[0]
              for f in folders]
    assert all(c % 2 == 0 for c in counts) and counts[-1] > 0, counts


def test_a_failure_midway_leaves_the_previous_state(settings, ibf_home, tmp_path, monkeypatch):
    folder = backup.create(settings, tmp_path / "b1").folder
    write_version(Warehouse(ibf_home), 2)
    after = state(ibf_home)

    def half_copied(staging):
        assert (staging / "lake" / "market_bars").is_dir()  # the backup is unpacked beside IBF_HOME ...
        raise OSError("disk full")  # ... when the fault strikes

    with pytest.raises(OSError, match="disk full"):
        backup.restore(folder, settings, after_unpack=half_copied)
    assert state(ibf_home) == after
    monkeypatch.setattr(backup, "_exchange", lambda a, b: (_ for _ in ()).throw(OSError("swap failed")))
    with pytest.raises(BackupError, match="swap failed; nothing was restored"):
        backup.restore(folder, settings)
    assert state(ibf_home) == after
    assert not list(ibf_home.parent.glob(".ibf_home.restore-*"))


def test_a_crashed_restore_leaves_the_state_and_its_staging_is_cleared_next_time(settings, ibf_home, tmp_path):
    folder = backup.create(settings, tmp_path / "b1").folder
    before = state(ibf_home)
    crashed = ibf_home.parent / ".ibf_home.restore-99-1"  # what a killed restore leaves: a half-unpacked folder
    (crashed / "lake").mkdir(parents=True)
    write_version(Warehouse(ibf_home), 2)
    backup.restore(folder, settings)
    assert state(ibf_home) == before and not crashed.exists()


def test_restore_refuses_while_a_writer_commits(settings, ibf_home, tmp_path):
    folder = backup.create(settings, tmp_path / "b1").folder
    after = state(ibf_home)
    held, release = threading.Event(), threading.Event()

    def committing():
        with atomic.lock(ibf_home, atomic.COMMIT_LOCK):
            held.set()
            release.wait(30)

    thread = threading.Thread(target=committing)
    thread.start()
    held.wait(10)
    try:
        with pytest.raises(BackupError, match="warehouse writer holds"):
            backup.restore(folder, settings)
    finally:
        release.set()
        thread.join()
    assert state(ibf_home) == after


def test_restore_into_another_home_rewrites_recorded_paths(settings, ibf_home, tmp_path):
    folder = backup.create(settings, tmp_path / "b1").folder
    other = tmp_path / "elsewhere" / "home"
    backup.restore(folder, load_settings(home=other))
    uri = sqlite3.connect(other / "mlflow.db").execute("SELECT artifact_uri FROM runs").fetchone()[0]
    assert uri == f"{other}/mlflow-artifacts/1/abc/artifacts"
    assert len(Warehouse(other).query("SELECT * FROM market_bars")) == len(bars(1))


def test_prune_keeps_the_newest(settings, tmp_path):
    import datetime as dt

    root = tmp_path / "backups"
    made = [backup.create(settings, backup.timestamped_folder(root, dt.datetime(2026, 1, d, tzinfo=dt.timezone.utc))).folder
            for d in (1, 2, 3)]
    (root / "unrelated").mkdir()
    removed = backup.prune(root, keep=2)
    assert removed == made[:1]
    assert sorted(p.name for p in root.iterdir()) == ["ibf-backup-20260102T000000Z", "ibf-backup-20260103T000000Z", "unrelated"]
    assert json.loads((made[2] / "manifest.json").read_text())["format"] == backup.FORMAT


def test_a_ducklake_warehouse_is_backed_up_and_restored_into_another_home(ibf_home, tmp_path, monkeypatch):
    from ibf_core.storage.backends import open_warehouse

    monkeypatch.setenv("IBF_WAREHOUSE", "ducklake")
    settings = load_settings()
    open_warehouse(settings).replace_slice(MARKET_BARS, bars(1), SYMBOLS, "2021-01-01", "2021-02-26")
    folder = backup.create(settings, tmp_path / "b1").folder
    assert "home/ducklake/catalog.sqlite" in backup.verify(folder)["files"]
    open_warehouse(settings).replace_slice(MARKET_BARS, bars(2), SYMBOLS, "2021-01-01", "2021-02-26")
    backup.restore(folder, settings)
    assert set(open_warehouse(settings).query("SELECT DISTINCT volume FROM market_bars").volume) == {1}
    other = load_settings(home=tmp_path / "other")
    backup.restore(folder, other)
    moved = open_warehouse(other)
    assert len(moved.query("SELECT * FROM market_bars")) == len(bars(1))
    # the data path recorded in the catalog is the new home's: writes land there, not in the old home
    moved.replace_slice(MARKET_BARS, bars(3), SYMBOLS, "2021-01-01", "2021-02-26")
    assert set(open_warehouse(settings).query("SELECT DISTINCT volume FROM market_bars").volume) == {1}


def test_a_remote_ducklake_is_refused_naming_the_setting(ibf_home, tmp_path, monkeypatch):
    ibf_home.mkdir(parents=True)
    monkeypatch.setenv("IBF_WAREHOUSE", "ducklake")
    monkeypatch.setenv("IBF_DUCKLAKE_DATA_PATH", "s3://bucket/lake/")
    with pytest.raises(BackupError, match="IBF_DUCKLAKE_DATA_PATH"):
        backup.create(load_settings(), tmp_path / "b1")
    assert not (tmp_path / "b1").exists()


# The writer of the test below: its own process, as every ibf writer is (a `ibf` command, a Dagster run). In one
# process the copy would not see the writer's SQLite locks (POSIX locks belong to the process, and DuckDB's
# SQLite is another library than Python's), so a commit in flight looks like a crashed one (CI of stop 34).
_WRITER = """
import sys, pandas as pd
from pathlib import Path
from ibf_core.settings import load_settings
from ibf_core.storage.backends import open_warehouse
from ibf_core.storage.tables import MARKET_BARS
frame, symbols, work = pd.read_pickle(sys.argv[1]), sys.argv[2].split(","), Path(sys.argv[3])
store, version = open_warehouse(load_settings()), 2
with open(work / "committed", "a") as out:
    while not (work / "stop").exists():
        store.replace_slice(MARKET_BARS, frame.assign(volume=version), symbols, "2021-01-01", "2021-02-26")
        out.write(f"{version}\\n")
        out.flush()
        version += 1
"""


def test_ducklake_backups_taken_while_a_writer_commits_restore_to_a_committed_state(ibf_home, tmp_path, monkeypatch):
    """The catalog is copied before the data files are listed: every file a backed-up snapshot names is there."""
    import subprocess
    import sys

    from ibf_core.storage.backends import open_warehouse

    monkeypatch.setenv("IBF_WAREHOUSE", "ducklake")
    settings = load_settings()
    open_warehouse(settings).replace_slice(MARKET_BARS, bars(1), SYMBOLS, "2021-01-01", "2021-02-26")
    bars(1).to_pickle(tmp_path / "bars.pkl")
    writer = subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path / "bars.pkl"), ",".join(SYMBOLS), str(tmp_path)])
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "committed").exists() or not (tmp_path / "committed").read_text():  # writing already
            assert writer.poll() is None and time.monotonic() < deadline, "the writer did not commit"
            time.sleep(0.05)
        folders = []
        for i in range(4):
            folders.append(backup.create(settings, tmp_path / f"b{i}").folder)
            time.sleep(0.5)
    finally:
        (tmp_path / "stop").touch()
        try:
            writer.wait(60)
        finally:
            writer.kill()
    assert writer.returncode == 0
    committed = [1, *map(int, (tmp_path / "committed").read_text().split())]
    assert len(committed) > 2
    for i, folder in enumerate(folders):
        restored = load_settings(home=tmp_path / f"restored{i}")
        backup.restore(folder, restored)
        found = open_warehouse(restored).query("SELECT symbol, min(volume) AS lo, max(volume) AS hi FROM market_bars GROUP BY symbol")
        assert len(found) == len(SYMBOLS) and (found.lo == found.hi).all() and found.lo.nunique() == 1, folder
        assert int(found.lo.iloc[0]) in committed
