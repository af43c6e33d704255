"""A full disk loses nothing: a warehouse write that hits ENOSPC (a real small tmpfs, or the atomic writer's fault
switch) leaves every table byte-identical, removes its temp files and raises one line naming the path and the free
space; the same write succeeds once space is free."""

import hashlib
import os
import re
import subprocess
from pathlib import Path

import pytest
from helpers.bars import make_bars as raw_bars

from ibf_core.market.checks import validate_bars
from ibf_core.settings import SettingsError, load_settings
from ibf_core.storage import atomic, space
from ibf_core.storage.backends import open_warehouse
from ibf_core.storage.tables import MARKET_BARS
from ibf_core.storage.warehouse import DiskFullError, Warehouse

SYMBOLS = ["AAA", "BBB", "CCC"]
MESSAGE = re.compile(r"^no space left on device writing (?P<path>\S+) \((?P<free>[\d.]+ (B|KiB|MiB|GiB|TiB)) free under (?P<home>\S+)\)$")


@pytest.fixture(autouse=True)
def no_faults_after():
    yield
    atomic.set_faults(None)


def make_bars(symbols=("AAA", "BBB"), start="2021-01-04", end="2021-03-31", seed=0):
    return validate_bars(raw_bars(symbols, start, end, seed), "test").assign(source="test")


def lake_state(home: Path) -> dict[str, str]:
    """Every file of the lake (temp files included; not the empty lock files a write creates) by its digest."""
    files = (p for p in sorted((home / "lake").rglob("*")) if p.is_file() and p.parent.name != ".locks")
    return {str(p.relative_to(home)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def temp_files(home: Path) -> list[Path]:
    return [p for p in home.rglob("*") if atomic.temp_target(p) is not None]


def stored_rows(store: Warehouse):
    return store.query("SELECT * FROM market_bars ORDER BY symbol, date")


def test_enospc_midway_through_a_batch_changes_nothing_and_names_path_and_free_space(tmp_path):
    store = Warehouse(tmp_path / "home")
    store.replace_slice(MARKET_BARS, make_bars(SYMBOLS, "2021-01-04", "2021-03-31", seed=1), SYMBOLS, "2021-01-04", "2021-03-31")
    before, rows = lake_state(store.home), stored_rows(store)
    # one file staged, then the disk "fills" inside the second one's temp file
    atomic.set_faults(atomic.WriterFaults(full_disk_skip=1, full_disk_files=1))
    newer = make_bars(SYMBOLS, "2021-01-04", "2021-06-30", seed=2)
    with pytest.raises(DiskFullError) as raised:
        store.replace_slice(MARKET_BARS, newer, SYMBOLS, "2021-01-04", "2021-06-30")
    line = str(raised.value)
    assert "\n" not in line
    match = MESSAGE.match(line)
    assert match, line
    assert match["path"] in {str(store.table_dir(MARKET_BARS) / f"{s}.parquet") for s in SYMBOLS}
    assert match["home"] == str(store.home)
    assert lake_state(store.home) == before and temp_files(store.home) == []
    assert stored_rows(store).equals(rows)
    assert atomic.set_faults(None) == atomic.WriterFaults()  # the fault was used up
    result = store.replace_slice(MARKET_BARS, newer, SYMBOLS, "2021-01-04", "2021-06-30")
    assert result.rows_written == len(newer)
    assert len(stored_rows(store)) == len(newer) and temp_files(store.home) == []


def test_every_file_failing_leaves_a_new_table_absent(tmp_path):
    store = Warehouse(tmp_path / "home")
    store.ensure_all_tables()
    before = lake_state(store.home)
    atomic.set_faults(atomic.WriterFaults(full_disk_files=-1))
    for _ in range(2):  # -1: the disk stays full until the fault is cleared
        with pytest.raises(DiskFullError, match=r"AAA\.parquet"):
            store.replace_slice(MARKET_BARS, make_bars(["AAA"]), ["AAA"], "2021-01-04", "2021-03-31")
    assert lake_state(store.home) == before and store.symbols(MARKET_BARS) == []


def test_the_fault_switch_is_a_setting_and_a_bad_one_is_refused(tmp_path, monkeypatch):
    settings = load_settings(home=tmp_path / "home", storage_faults="full_disk_skip=2,full_disk_files=3")
    open_warehouse(settings)
    assert atomic.set_faults(None) == atomic.WriterFaults(full_disk_skip=2, full_disk_files=3)
    with pytest.raises(SettingsError, match="IBF_STORAGE_FAULTS.*full_disk_files"):
        open_warehouse(load_settings(home=tmp_path / "home", storage_faults="full_disk=1"))
    with pytest.raises(SettingsError, match="'x' is not an integer"):
        open_warehouse(load_settings(home=tmp_path / "home", storage_faults="full_disk_files=x"))


def test_disk_full_is_recognised_from_python_arrow_and_duckdb_errors():
    assert space.is_disk_full(OSError(28, "No space left on device"))
    assert space.is_disk_full(RuntimeError("IO Error: could not write file: No space left on device"))
    try:
        try:
            raise OSError(28, "No space left on device")
        except OSError as inner:
            raise RuntimeError("step failed") from inner
    except RuntimeError as outer:
        assert space.is_disk_full(outer)
    assert not space.is_disk_full(OSError(13, "Permission denied"))
    assert space.human_bytes(512) == "512 B" and space.human_bytes(3 * 2**20 + 2**19) == "3.5 MiB"


@pytest.fixture
def small_disk(tmp_path):
    """A real 8 MiB tmpfs mounted at a fresh folder (root only), unmounted however the test ends."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root; the fault-switch tests cover the same writer everywhere")
    where = tmp_path / "small"
    where.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(where)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_a_real_full_tmpfs_changes_nothing_and_the_write_succeeds_once_space_is_freed(small_disk):
    store = Warehouse(small_disk / "home")
    symbols = [f"S{i:02d}" for i in range(12)]
    store.replace_slice(MARKET_BARS, make_bars(symbols[:2], "2021-01-04", "2021-03-31"), symbols[:2], "2021-01-04", "2021-03-31")
    before, rows = lake_state(store.home), stored_rows(store)
    ballast = small_disk / "ballast"
    with open(ballast, "wb") as handle:  # leave 64 KiB: less than the write below needs
        handle.write(b"\0" * (space.free_bytes(small_disk) - 64 * 1024))
    free_before = space.free_bytes(small_disk)
    bigger = make_bars(symbols, "2015-01-02", "2021-03-31", seed=3)
    with pytest.raises(DiskFullError) as raised:
        store.replace_slice(MARKET_BARS, bigger, symbols, "2015-01-02", "2021-03-31")
    match = MESSAGE.match(str(raised.value))
    assert match, str(raised.value)
    assert match["home"] == str(store.home) and match["path"].startswith(str(store.table_dir(MARKET_BARS)))
    # the failed write's temp files are gone *and closed*: their blocks are free again at once, not at a later
    # garbage collection (the message reported 0 B while the failed Arrow writer still held its file)
    assert match["free"] == space.human_bytes(free_before) == "64.0 KiB"
    assert space.free_bytes(small_disk) == free_before
    assert lake_state(store.home) == before and temp_files(store.home) == []
    assert stored_rows(store).equals(rows)
    ballast.unlink()
    store.replace_slice(MARKET_BARS, bigger, symbols, "2015-01-02", "2021-03-31")
    assert len(stored_rows(store)) == len(bigger) and temp_files(store.home) == []
