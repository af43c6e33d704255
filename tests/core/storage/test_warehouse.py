import hashlib
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import textwrap
import time

import duckdb
import pandas as pd
import pyarrow.parquet as pq
import pytest

from helpers.bars import make_bars
from helpers.paths import ROOT, TESTS
from ibf_core.market.checks import validate_bars
from ibf_core.storage.tables import MARKET_BARS
from ibf_core.storage.warehouse import QueryRefused, Warehouse, WarehouseError


def canonical(frame: pd.DataFrame, source="test") -> pd.DataFrame:
    return validate_bars(frame, "test").assign(source=source)


def digest(home) -> dict[str, str]:
    folder = Warehouse(home).table_dir(MARKET_BARS)
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.parquet"))}


def test_replace_slice_is_idempotent_and_keeps_other_rows(ibf_home):
    wh = Warehouse(ibf_home)
    bars = canonical(make_bars(end="2021-06-30"))
    wh.replace_slice(MARKET_BARS, bars, ["AAA", "BBB"], "2021-01-01", "2021-06-30")
    before = digest(ibf_home)
    result = wh.replace_slice(MARKET_BARS, bars, ["AAA", "BBB"], "2021-01-01", "2021-06-30")
    assert digest(ibf_home) == before  # byte-identical files on a re-run
    assert result.rows_replaced == len(bars)
    march = bars[(bars.date >= "2021-03-01") & (bars.date <= "2021-03-31") & (bars.symbol == "AAA")]
    new_march = march.assign(close=march.close * 1.1, high=march.high * 1.1, source="new")
    wh.replace_slice(MARKET_BARS, new_march, ["AAA"], "2021-03-01", "2021-03-31")
    stored = wh.query("SELECT * FROM market_bars ORDER BY symbol, date")
    assert len(stored) == len(bars)
    assert stored.date.dtype.kind == "M"
    in_slice = (stored.symbol == "AAA") & stored.date.between("2021-03-01", "2021-03-31")
    assert in_slice.sum() == len(march) > 0
    # the slice holds the new values ...
    assert stored.loc[in_slice, "close"].tolist() == pytest.approx(new_march.close.tolist())
    assert set(stored.loc[in_slice, "source"]) == {"new"}
    # ... and every row outside it is as first written
    outside = stored.loc[~in_slice].reset_index(drop=True)
    original = bars.loc[~bars.index.isin(march.index)].sort_values(["symbol", "date"]).reset_index(drop=True)
    assert outside.close.tolist() == pytest.approx(original.close.tolist())
    assert set(outside.source) == {"test"}


def test_slice_rows_outside_the_rectangle_are_refused(ibf_home):
    wh = Warehouse(ibf_home)
    bars = canonical(make_bars())
    with pytest.raises(WarehouseError, match="outside the slice"):
        wh.replace_slice(MARKET_BARS, bars, ["AAA"], "2021-01-01", "2021-12-31")
    assert wh.symbols(MARKET_BARS) == []


def test_failure_while_preparing_changes_nothing(ibf_home, monkeypatch):
    wh = Warehouse(ibf_home)
    bars = canonical(make_bars())
    wh.replace_slice(MARKET_BARS, bars, ["AAA", "BBB"], "2021-01-01", "2021-03-31")
    before = digest(ibf_home)
    calls = {"n": 0}
    real_write = pq.write_table

    def flaky(table, where, **kw):
        calls["n"] += 1
        if calls["n"] == 2:  # the second symbol's file fails after the first was prepared
            raise OSError("disk full")
        return real_write(table, where, **kw)

    monkeypatch.setattr(pq, "write_table", flaky)
    with pytest.raises(OSError):
        wh.replace_slice(MARKET_BARS, bars.assign(close=bars.close * 1.0001), ["AAA", "BBB"], "2021-01-01", "2021-03-31")
    assert digest(ibf_home) == before
    assert not list(wh.table_dir(MARKET_BARS).glob(".*.tmp"))


KILLED_WRITER = textwrap.dedent(
    """
    import sys, time
    import pyarrow.parquet as pq
    sys.path.insert(0, sys.argv[2])
    from helpers.bars import make_bars
    from ibf_core.market.checks import validate_bars
    from ibf_core.storage.tables import MARKET_BARS
    from ibf_core.storage.warehouse import Warehouse
    real = pq.write_table
    def slow_write(table, where, **kw):
        real(table, where, **kw)
        print("staged", flush=True)
        time.sleep(60)  # killed here: the new file is written but not yet swapped in
    pq.write_table = slow_write
    bars = validate_bars(make_bars(seed=1), "t").assign(source="new")
    Warehouse(sys.argv[1]).replace_slice(MARKET_BARS, bars, ["AAA", "BBB"], "2021-01-01", "2021-03-31")
    """
)


def test_killed_write_leaves_old_rows_not_a_hole(ibf_home, tmp_path):
    wh = Warehouse(ibf_home)
    old = canonical(make_bars(seed=0), source="old")
    wh.replace_slice(MARKET_BARS, old, ["AAA", "BBB"], "2021-01-01", "2021-03-31")
    script = tmp_path / "writer.py"
    script.write_text(KILLED_WRITER)
    tests_dir = str(TESTS)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(ibf_home), tests_dir],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([tests_dir, os.getcwd()])},
    )
    assert proc.stdout.readline().startswith("staged")  # (two staging threads may print on one line)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stored = wh.query("SELECT source, count(*) AS n FROM market_bars GROUP BY source")
    assert stored.to_dict("records") == [{"source": "old", "n": len(old)}]
    # the dead writer's staged temp file is removed by the next writer holding the symbol's lock
    folder = wh.table_dir(MARKET_BARS)
    # (files are staged on a few threads at once: the kill may find one or both staged)
    assert {p.name.split(".")[1] for p in folder.glob(".*.tmp")} in ({"AAA"}, {"BBB"}, {"AAA", "BBB"})
    wh.replace_slice(MARKET_BARS, old, ["AAA", "BBB"], "2021-01-01", "2021-03-31")
    assert not list(folder.glob(".*.tmp"))


def _writer(home, seed, rounds):
    bars = validate_bars(make_bars(seed=seed), "t").assign(source=f"w{seed}")
    wh = Warehouse(home)
    for _ in range(rounds):
        wh.replace_slice(MARKET_BARS, bars, ["AAA", "BBB"], "2021-01-01", "2021-03-31")


def test_concurrent_writers_and_sql_readers(ibf_home):
    Warehouse(ibf_home).ensure_all_tables()
    ctx = mp.get_context("spawn")
    writers = [ctx.Process(target=_writer, args=(str(ibf_home), seed, 15)) for seed in (1, 2)]
    for w in writers:
        w.start()
    n_queries, deadline = 0, time.time() + 60
    while any(w.is_alive() for w in writers) and time.time() < deadline:
        # read-only connections to warehouse.duckdb, as `ibf sql` opens them
        rows = Warehouse(ibf_home).query("SELECT count(*) AS n FROM market_bars")
        assert rows.n.iloc[0] in (0, 2 * 61)  # never a partial slice
        n_queries += 1
    for w in writers:
        w.join(30)
        assert w.exitcode == 0
    assert n_queries > 0
    final = Warehouse(ibf_home).query("SELECT symbol, count(*) n, count(DISTINCT source) s FROM market_bars GROUP BY 1")
    assert final.n.tolist() == [61, 61] and final.s.tolist() == [1, 1]


def test_sql_connection_is_read_only(ibf_home):
    wh = Warehouse(ibf_home)
    wh.ensure_all_tables()
    with pytest.raises(QueryRefused, match="CREATE"):
        wh.query("CREATE TABLE x AS SELECT 1")
    with pytest.raises(QueryRefused, match="DROP"):
        wh.query("DROP VIEW market_bars")


def test_no_query_can_write_or_reach_outside_the_lake(ibf_home, tmp_path):
    wh = Warehouse(ibf_home)
    wh.replace_slice(MARKET_BARS, canonical(make_bars()), ["AAA", "BBB"], "2021-01-01", "2021-03-31")
    before = digest(ibf_home)
    aaa = wh.table_dir(MARKET_BARS) / "AAA.parquet"
    attempts = {
        f"COPY (SELECT 1 AS x) TO '{aaa}' (FORMAT parquet)": "COPY",
        f"SELECT 1; COPY (SELECT 1 AS x) TO '{aaa}'": "COPY",
        f"EXPORT DATABASE '{tmp_path / 'export'}'": "EXPORT",
        f"ATTACH '{wh.lake_dir / 'x.duckdb'}' AS x": "ATTACH",
        "INSTALL httpfs": "LOAD",
        "LOAD httpfs": "LOAD",
        "SET enable_external_access = true": "SET",
        "PRAGMA enable_profiling": "PRAGMA",
        "SELECT * FROM read_csv('/etc/passwd')": "read only the lake",
        f"SELECT * FROM read_parquet('{wh.lake_dir}/../warehouse.duckdb')": "read only the lake",
        "SELECT * FROM glob('/etc/*')": "read only the lake",
    }
    for sql, refusal in attempts.items():
        with pytest.raises(QueryRefused, match=refusal):
            wh.query(sql)
    assert digest(ibf_home) == before
    assert sorted(p.name for p in wh.lake_dir.iterdir()) == ["market_bars"]
    assert not (tmp_path / "export").exists()
    # reading the lake's own files directly is allowed
    assert wh.query(f"SELECT count(*) AS n FROM read_parquet('{aaa}')").n.iloc[0] == 61


def _view_sql(home, name: str) -> tuple[str, str]:
    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as con:
        return con.execute("SELECT sql, comment FROM duckdb_views() WHERE view_name = ?", [name]).fetchone()


def test_a_changed_view_definition_reaches_an_existing_warehouse(ibf_home, monkeypatch):
    import ibf_core.monitoring.outcomes as monitoring
    from ibf_core.storage.tables import ViewSpec

    wh = Warehouse(ibf_home)
    wh.ensure_all_tables()
    v1 = monitoring.FORECAST_OUTCOMES
    sql, comment = _view_sql(ibf_home, "forecast_outcomes")
    assert comment == f"ibf:{v1.version}" and "hit_95" in sql
    v2 = ViewSpec(v1.name, v1.sql.replace("SELECT p.symbol,", "SELECT 42 AS answer, p.symbol,"))
    assert v2.version != v1.version
    monkeypatch.setattr(monitoring, "FORECAST_OUTCOMES", v2)
    wh.ensure_all_tables()
    assert "answer" in wh.query("SELECT * FROM forecast_outcomes").columns
    assert _view_sql(ibf_home, "forecast_outcomes")[1] == f"ibf:{v2.version}"


def test_a_view_of_an_older_ibf_without_a_version_is_redefined(ibf_home):
    wh = Warehouse(ibf_home)
    wh.ensure_all_tables()
    with duckdb.connect(str(wh.db_path)) as con:  # what ibf wrote before views carried a version
        con.execute("CREATE OR REPLACE VIEW alerts AS SELECT 1 AS stale")
    assert wh.view_versions()["alerts"] is None
    wh.ensure_all_tables()
    assert "alert_id" in wh.query("SELECT * FROM alerts").columns


def test_ensuring_an_unchanged_warehouse_writes_nothing(ibf_home, monkeypatch):
    wh = Warehouse(ibf_home)
    wh.ensure_all_tables()

    def no_write(self, statements):
        raise AssertionError(f"unexpected write to warehouse.duckdb: {statements}")

    monkeypatch.setattr(Warehouse, "_execute_write", no_write)
    wh.ensure_all_tables()  # an analyst's read-only session could not block this: it only reads
    wh.replace_slice(MARKET_BARS, canonical(make_bars()), ["AAA", "BBB"], "2021-01-01", "2021-03-31")


def test_current_views_are_not_even_read(ibf_home, monkeypatch):
    """A read-write DuckDB session conflicts even with a read-only open: writers must not open the file at all."""
    wh = Warehouse(ibf_home)
    wh.ensure_all_tables()

    def no_open(self):
        raise AssertionError("warehouse.duckdb was opened although its views are current")

    monkeypatch.setattr(Warehouse, "_view_rows", no_open)
    wh.ensure_all_tables()
    wh.replace_slice(MARKET_BARS, canonical(make_bars()), ["AAA", "BBB"], "2021-01-01", "2021-03-31")
    assert wh.query("SELECT count(*) AS n FROM market_bars").n.iloc[0] == 2 * 61


def test_a_moved_home_redefines_the_views(ibf_home, tmp_path):
    wh = Warehouse(ibf_home)
    wh.replace_slice(MARKET_BARS, canonical(make_bars()), ["AAA", "BBB"], "2021-01-01", "2021-03-31")
    moved = tmp_path / "moved"
    ibf_home.rename(moved)
    Warehouse(moved).ensure_all_tables()
    assert str(moved / "lake" / "market_bars") in _view_sql(moved, "market_bars")[0]
    assert Warehouse(moved).query("SELECT count(*) AS n FROM market_bars").n.iloc[0] == 2 * 61


def test_storage_imports_none_of_its_users():
    import importlib.util

    path = ROOT / "scripts" / "code_metrics.py"
    spec = importlib.util.spec_from_file_location("code_metrics", path)
    metrics = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(metrics)
    assert metrics.storage_user_imports() == []


@pytest.mark.parametrize("umask, mode", [(0o002, 0o664), (0o022, 0o644)])
def test_lake_files_are_readable_by_the_group_the_umask_allows(tmp_path, umask, mode):
    import stat

    previous = os.umask(umask)
    try:
        wh = Warehouse(tmp_path / "home")
        wh.replace_slice(MARKET_BARS, canonical(make_bars()), ["AAA", "BBB"], "2021-01-01", "2021-03-31")
    finally:
        os.umask(previous)
    files = [p for p in (tmp_path / "home" / "lake").rglob("*") if p.is_file() and ".locks" not in p.parts]
    assert {p.name for p in files} >= {"AAA.parquet", "BBB.parquet", "_schema.parquet"}
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in files} == {p.name: mode for p in files}


def test_read_cache_answers_from_memory_until_a_writer_swaps_a_file_in(ibf_home):
    from ibf_core.storage.read_cache import ReadCache

    store = Warehouse(ibf_home)
    bars = canonical(make_bars(["AAA", "BBB"], "2021-01-04", "2021-02-26"))
    store.replace_slice(MARKET_BARS, bars, ["AAA", "BBB"], "2021-01-04", "2021-02-26")
    cached = ReadCache(store)
    first = cached.read(MARKET_BARS, ["AAA"], "2021-01-04", "2021-01-29")
    first["close"] = -1.0  # a caller changing its frame does not change the kept one
    again = cached.read(MARKET_BARS, ["AAA"], "2021-01-04", "2021-01-29")
    count = "SELECT count(*) AS n, sum(close) AS s FROM market_bars"
    before = cached.query(count)
    assert cached.query(count).equals(before) and (cached.hits, cached.misses) == (2, 2)
    assert (again["close"] > 0).all()
    pd.testing.assert_frame_equal(again, store.read(MARKET_BARS, ["AAA"], "2021-01-04", "2021-01-29"))
    changed = bars[bars["symbol"] == "BBB"].assign(close=lambda f: f["close"] * 2, high=lambda f: f["high"] * 2,
                                                    open=lambda f: f["open"] * 2, low=lambda f: f["low"] * 2)
    store.replace_slice(MARKET_BARS, changed, ["BBB"], "2021-01-04", "2021-02-26")
    after = cached.query(count)
    assert cached.misses == 3 and after["s"].iloc[0] != before["s"].iloc[0]
    assert after.equals(store.query(count))


def test_a_column_declared_after_the_files_were_written_reads_as_null(ibf_home):
    """Schema evolution: an optional column added to a table (``rank_score`` in ``predictions``) must not break
    reads that name it over files written before it existed, once a writer has ensured the table."""
    import dataclasses

    import pyarrow as pa

    from ibf_core.storage.tables import SCHEMA_FILE, Column

    wh = Warehouse(ibf_home)
    bars = canonical(make_bars(end="2021-03-31"))
    wh.replace_slice(MARKET_BARS, bars, ["AAA", "BBB"], "2021-01-01", "2021-03-31")
    newer = dataclasses.replace(MARKET_BARS, columns=(*MARKET_BARS.columns, Column("extra", pa.float64(), "added later", optional=True)))
    wh.ensure_table(newer)  # what every writer does first
    assert pq.read_schema(wh.table_dir(newer) / SCHEMA_FILE).names == newer.column_names
    read = wh.read(newer, ["AAA"], columns=["symbol", "date", "close", "extra"])
    assert len(read) == (bars["symbol"] == "AAA").sum() and read["extra"].isna().all()
    assert read["close"].notna().all()


def test_a_write_over_files_from_before_a_declared_column_keeps_their_rows_with_null_there(ibf_home):
    """The merge reads a stored file directly when it has the declared schema, by name when it predates a column."""
    import dataclasses

    import pyarrow as pa

    from ibf_core.storage.tables import Column

    wh = Warehouse(ibf_home)
    bars = canonical(make_bars(end="2021-03-31"))
    bars = bars[bars["symbol"] == "AAA"]
    wh.replace_slice(MARKET_BARS, bars, ["AAA"], "2021-01-01", "2021-03-31")
    newer = dataclasses.replace(MARKET_BARS, columns=(*MARKET_BARS.columns, Column("extra", pa.float64(), "added later", optional=True)))
    wh.ensure_table(newer)
    march = bars[(bars["symbol"] == "AAA") & (bars["date"] >= "2021-03-01")].assign(extra=1.5)
    wh.replace_slice(newer, march, ["AAA"], "2021-03-01", "2021-03-31")
    read = wh.read(newer, ["AAA"])
    assert len(read) == (bars["symbol"] == "AAA").sum()
    assert read.loc[read["date"] < "2021-03-01", "extra"].isna().all()
    assert (read.loc[read["date"] >= "2021-03-01", "extra"] == 1.5).all()
    assert pq.read_schema(wh.table_dir(newer) / "AAA.parquet").names == newer.column_names
