"""The warehouse suite on every backend: the Parquet lake, DuckLake on a SQLite catalog, DuckLake on a real
Postgres catalog. Idempotency, atomicity, a killed writer, concurrent writers from several processes with SQL
readers, read-only SQL, bad input; news and alerts through the same interface; start-up errors naming the setting."""

import multiprocessing as mp
import os
import signal
import subprocess
import sys
import textwrap
import time

import pandas as pd
import pytest

from helpers.bars import make_bars
from helpers.paths import TESTS
from ibf_core.market.checks import validate_bars
from ibf_core.processes import free_port
from ibf_core.settings import load_settings
from ibf_core.storage.backends import open_warehouse
from ibf_core.storage.interface import QueryRefused, WarehouseError
from ibf_core.storage.tables import MARKET_BARS

BACKENDS = ["lake", "ducklake-sqlite", "ducklake-postgres"]


@pytest.fixture(scope="module")
def postgres():
    from ibf_dagster.stack.postgres import local_postgres

    with local_postgres() as pg:
        yield pg


def _settings_env(backend: str, home, postgres_server, database: str) -> dict[str, str]:
    env = {"IBF_HOME": str(home)}
    if backend.startswith("ducklake"):
        env["IBF_WAREHOUSE"] = "ducklake"
    if backend == "ducklake-postgres":
        postgres_server.create_database(database)
        env["IBF_DUCKLAKE_CATALOG"] = f"postgres:dbname={database} host=127.0.0.1 port={postgres_server.port} user=postgres"
    return env


@pytest.fixture(params=BACKENDS)
def store_env(request, ibf_home, monkeypatch):
    """The backend's settings, exported (subprocesses inherit them), and a fresh warehouse."""
    server = request.getfixturevalue("postgres") if request.param == "ducklake-postgres" else None
    database = f"lake_{os.getpid()}_{abs(hash(request.node.name)) % 10**8}"
    env = _settings_env(request.param, ibf_home, server, database)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture
def store(store_env):
    return open_warehouse(load_settings())


def canonical(frame: pd.DataFrame, source="test") -> pd.DataFrame:
    return validate_bars(frame, "test").assign(source=source)


def content(store) -> list[tuple]:
    frame = store.query("SELECT * FROM market_bars ORDER BY symbol, date")
    return [tuple(r) for r in frame.astype(str).itertuples(index=False)]


def test_slice_replace_is_idempotent_and_keeps_other_rows(store):
    bars = canonical(make_bars(end="2021-06-30"))
    store.replace_slice(MARKET_BARS, bars, ["AAA", "BBB"], "2021-01-01", "2021-06-30")
    before = content(store)
    result = store.replace_slice(MARKET_BARS, bars, ["AAA", "BBB"], "2021-01-01", "2021-06-30")
    assert content(store) == before and result.rows_replaced == len(bars)
    march = bars[(bars.date >= "2021-03-01") & (bars.date <= "2021-03-31") & (bars.symbol == "AAA")]
    store.replace_slice(MARKET_BARS, march.assign(close=march.close * 1.1, source="new"), ["AAA"], "2021-03-01", "2021-03-31")
    stored = store.read(MARKET_BARS)
    assert len(stored) == len(bars) and stored.date.dtype.kind == "M"
    in_slice = (stored.symbol == "AAA") & stored.date.between("2021-03-01", "2021-03-31")
    assert in_slice.sum() == len(march) > 0 and set(stored.loc[in_slice, "source"]) == {"new"}
    assert stored.loc[in_slice, "close"].tolist() == pytest.approx((march.close * 1.1).tolist())
    assert set(stored.loc[~in_slice, "source"]) == {"test"}
    assert store.symbols(MARKET_BARS) == ["AAA", "BBB"]
    assert store.read(MARKET_BARS, ["BBB"], "2021-02-01", "2021-02-28").date.dt.month.unique().tolist() == [2]


def test_a_read_of_some_columns_gives_those_columns_of_the_same_rows(store):
    bars = canonical(make_bars(end="2021-03-31"))
    store.replace_slice(MARKET_BARS, bars, ["AAA", "BBB"], "2021-01-01", "2021-03-31")
    whole = store.read(MARKET_BARS, ["BBB"], "2021-02-01", "2021-02-28")
    keys = store.read(MARKET_BARS, ["BBB"], "2021-02-01", "2021-02-28", columns=["symbol", "date"])
    assert list(keys.columns) == ["symbol", "date"] and keys.date.dtype.kind == "M"
    assert keys.equals(whole[["symbol", "date"]])
    assert list(store.read(MARKET_BARS, ["ZZZ"], columns=["close"]).columns) == ["close"]
    with pytest.raises(KeyError, match="no column 'nope'"):
        store.read(MARKET_BARS, ["AAA"], columns=["nope"])


def test_a_failure_inside_a_write_changes_nothing(store):
    bars = canonical(make_bars())
    store.replace_slice(MARKET_BARS, bars, ["AAA", "BBB"], "2021-01-01", "2021-03-31")
    before = content(store)

    def build(tx):
        tx.replace_slice(MARKET_BARS, bars.assign(source="half"), ["AAA", "BBB"], "2021-01-01", "2021-03-31")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        store.write([(MARKET_BARS, "AAA"), (MARKET_BARS, "BBB")], build)
    assert content(store) == before
    stamp = store.table_stamp(MARKET_BARS)
    store.replace_slice(MARKET_BARS, bars.assign(source="again"), ["AAA", "BBB"], "2021-01-01", "2021-03-31")
    assert store.table_stamp(MARKET_BARS) != stamp  # a commit changes the stamp caches key on


def test_every_backend_reads_dates_in_one_unit(store):
    """The same rows read from the lake and from DuckLake hash the same (``predictions``' inputs digest): the lake
    answered ``datetime64[us]``, DuckLake ``datetime64[ns]``, so moving a warehouse re-forecast every origin."""
    from ibf_core.models.inference import origin_digests

    bars = canonical(make_bars())
    store.replace_slice(MARKET_BARS, bars, ["AAA", "BBB"], "2021-01-01", "2021-03-31")
    stored = store.read(MARKET_BARS)
    assert str(stored["date"].dtype) == "datetime64[ns]"
    assert str(store.read(MARKET_BARS, ["ZZZ"])["date"].dtype) == "datetime64[ns]"  # no rows: the same type
    days = sorted(stored["date"].dt.date.unique())[-2:]
    expected = origin_digests(stored.assign(date=stored["date"].astype("datetime64[ns]")), days, 5, "1")
    assert origin_digests(stored, days, 5, "1") == expected


def test_a_write_changes_the_stamp_of_its_own_table_only(store):
    """A daily cycle writes alerts, predictions and drift scores after features: what a reader cached from bars
    and features (the service's warmed fresh forecasts) stays valid. On DuckLake every commit changed every stamp."""
    import dataclasses

    from ibf_core.monitoring.alerts import ALERTS, Alert, record_alerts

    bars = canonical(make_bars())
    store.replace_slice(MARKET_BARS, bars, ["AAA", "BBB"], "2021-01-01", "2021-03-31")
    bars_stamp, alerts_stamp = store.table_stamp(MARKET_BARS), store.table_stamp(ALERTS)
    alert = Alert(asset="features", check_name="c", partition="AAA|2021-03-01", severity="ERROR", description="d",
                  metadata={}, run_id="r", raised_at=pd.Timestamp("2021-03-01 15:00", tz="UTC").to_pydatetime(), evaluation_id="e1")
    assert len(record_alerts(store, [alert], None, log=lambda line: None)) == 1
    assert store.table_stamp(MARKET_BARS) == bars_stamp
    assert store.table_stamp(ALERTS) != alerts_stamp
    # A second small write: DuckLake keeps its row in the catalog ("inlined"), which the stamp once missed
    alerts_stamp = store.table_stamp(ALERTS)
    assert len(record_alerts(store, [dataclasses.replace(alert, evaluation_id="e2")], None, log=lambda line: None)) == 1
    assert store.table_stamp(ALERTS) != alerts_stamp
    store.replace_slice(MARKET_BARS, bars.assign(source="again"), ["AAA", "BBB"], "2021-01-01", "2021-03-31")
    assert store.table_stamp(MARKET_BARS) != bars_stamp


def test_bad_input_is_refused_and_leaves_the_warehouse_as_it_was(store):
    bars = canonical(make_bars())
    store.replace_slice(MARKET_BARS, bars, ["AAA", "BBB"], "2021-01-01", "2021-03-31")
    before = content(store)
    with pytest.raises(WarehouseError, match="outside the slice"):
        store.replace_slice(MARKET_BARS, bars, ["AAA"], "2021-01-01", "2021-03-31")
    with pytest.raises(WarehouseError, match="lacks column"):
        store.replace_slice(MARKET_BARS, bars.drop(columns=["close"]), ["AAA", "BBB"], "2021-01-01", "2021-03-31")
    with pytest.raises(WarehouseError, match="cannot be stored"):
        store.replace_slice(MARKET_BARS, bars.iloc[:0], ["../x"], "2021-01-01", "2021-03-31")
    assert content(store) == before


def test_sql_is_read_only_and_cannot_reach_outside(store, tmp_path):
    store.replace_slice(MARKET_BARS, canonical(make_bars()), ["AAA", "BBB"], "2021-01-01", "2021-03-31")
    before = content(store)
    for sql, refusal in {
        "DELETE FROM market_bars": "DELETE",
        "CREATE TABLE x AS SELECT 1": "CREATE",
        "COPY (SELECT 1 AS x) TO '/tmp/ibf-x.parquet'": "COPY",
        "ATTACH 'x.duckdb' AS x": "ATTACH",
        "LOAD httpfs": "LOAD",
        "SET enable_external_access = true": "SET",
        "SELECT * FROM read_csv('/etc/passwd')": "read only",
    }.items():
        with pytest.raises(QueryRefused, match=refusal):
            store.query(sql)
    assert content(store) == before
    # the catalog's views exist on every backend (forecast_outcomes reads predictions and market_bars)
    assert store.query("SELECT count(*) AS n FROM forecast_outcomes").n.iloc[0] == 0


KILLED_WRITER = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, sys.argv[1])
    from helpers.bars import make_bars
    from ibf_core.market.checks import validate_bars
    from ibf_core.storage.backends import open_warehouse
    from ibf_core.storage.tables import MARKET_BARS
    bars = validate_bars(make_bars(seed=1), "t").assign(source="new")
    def build(tx):
        tx.replace_slice(MARKET_BARS, bars, ["AAA", "BBB"], "2021-01-01", "2021-03-31")
        print("written, not committed", flush=True)
        time.sleep(60)  # killed here
    open_warehouse().write([(MARKET_BARS, "AAA"), (MARKET_BARS, "BBB")], build)
    """
)


def test_a_writer_killed_mid_write_leaves_the_old_rows_and_blocks_no_one(store, tmp_path):
    old = canonical(make_bars(seed=0), source="old")
    store.replace_slice(MARKET_BARS, old, ["AAA", "BBB"], "2021-01-01", "2021-03-31")
    script = tmp_path / "writer.py"
    script.write_text(KILLED_WRITER)
    tests_dir = str(TESTS)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([tests_dir, os.getcwd()])}
    proc = subprocess.Popen([sys.executable, str(script), tests_dir], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout.readline().strip() == "written, not committed"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert store.query("SELECT source, count(*) AS n FROM market_bars GROUP BY source").to_dict("records") == [
        {"source": "old", "n": len(old)}
    ]
    started = time.monotonic()
    store.replace_slice(MARKET_BARS, old.assign(source="after"), ["AAA", "BBB"], "2021-01-01", "2021-03-31")
    assert time.monotonic() - started < 30  # the dead writer's locks and transaction are gone
    assert set(store.read(MARKET_BARS).source) == {"after"}


def _writer(env: dict[str, str], seed: int, symbols: list[str], rounds: int) -> None:
    os.environ.update(env)
    bars = validate_bars(make_bars(seed=seed), "t").assign(source=f"w{seed}")
    bars = bars[bars.symbol.isin(symbols)]
    store = open_warehouse(load_settings())
    for _ in range(rounds):
        store.replace_slice(MARKET_BARS, bars, symbols, "2021-01-01", "2021-03-31")


@pytest.mark.parametrize("symbols", [["AAA", "BBB"], None], ids=["same-symbols", "disjoint-symbols"])
def test_concurrent_writers_in_processes_and_sql_readers(store, store_env, symbols):
    store.ensure_all_tables()
    ctx = mp.get_context("spawn")
    plan = [(1, symbols or ["AAA"]), (2, symbols or ["BBB"])]
    writers = [ctx.Process(target=_writer, args=(store_env, seed, names, 8)) for seed, names in plan]
    for w in writers:
        w.start()
    n_queries, deadline = 0, time.time() + 120
    while any(w.is_alive() for w in writers) and time.time() < deadline:
        counts = store.query("SELECT symbol, count(*) AS n, count(DISTINCT source) AS s FROM market_bars GROUP BY 1")
        assert set(counts.n) <= {61} and set(counts.s) <= {1}  # never a partial or mixed slice
        n_queries += 1
    for w in writers:
        w.join(60)
        assert w.exitcode == 0
    assert n_queries > 0
    final = store.query("SELECT symbol, count(*) n, count(DISTINCT source) s FROM market_bars GROUP BY 1 ORDER BY 1")
    assert final.symbol.tolist() == ["AAA", "BBB"] and final.n.tolist() == [61, 61] and final.s.tolist() == [1, 1]


def test_news_and_alerts_go_through_the_same_interface(store):
    from ibf_core.monitoring.alerts import Alert, read_alerts, record_alerts
    from ibf_core.news.store import read_articles, read_mentions, write_news

    t = pd.Timestamp("2021-03-01 15:00", tz="UTC")
    articles = pd.DataFrame({
        "url": ["u1", "u2"], "title": ["a", "b"], "summary": ["", ""], "source": ["x", "y"],
        "published_at": [t, t + pd.Timedelta(days=40)], "overall_sentiment_score": [0.1, -0.2],
        "overall_sentiment_label": ["Neutral", "Neutral"], "topics": ["[]", "[]"], "origin": ["file", "file"],
    })
    mentions = pd.DataFrame({
        "symbol": ["AAA", "BBB"], "url": ["u1", "u2"], "date": pd.to_datetime(["2021-03-01", "2021-04-12"]),
        "published_at": [t, t + pd.Timedelta(days=40)], "relevance": [0.5, 0.9], "ticker_sentiment": [0.2, -0.1],
        "label": ["Neutral", "Neutral"], "origin": ["file", "file"],
    })
    write_news(store, articles, mentions)
    write_news(store, articles, mentions)  # an upsert: the same rows once
    assert read_articles(store).url.tolist() == ["u1", "u2"]
    assert read_mentions(store, ["BBB"]).url.tolist() == ["u2"]
    assert store.query("SELECT count(*) AS n FROM news_mentions").n.iloc[0] == 2
    alert = Alert(asset="features", check_name="c", partition="AAA|2021-03-01", severity="ERROR",
                  description="d", metadata={}, run_id="r", raised_at=t.to_pydatetime(), evaluation_id="e1")
    assert len(record_alerts(store, [alert], None, log=lambda line: None)) == 1
    assert record_alerts(store, [alert], None, log=lambda line: None) == []  # idempotent
    assert read_alerts(store).alert_id.tolist() == [alert.alert_id]


def test_a_catalog_that_cannot_exist_is_named_and_nothing_is_created(ibf_home, tmp_path, monkeypatch):
    monkeypatch.setenv("IBF_WAREHOUSE", "ducklake")
    monkeypatch.setenv("IBF_DUCKLAKE_CATALOG", f"sqlite:{tmp_path / 'no-such-folder' / 'catalog.sqlite'}")
    with pytest.raises(WarehouseError, match="IBF_DUCKLAKE_CATALOG.*no-such-folder.*does not exist"):
        open_warehouse(load_settings())
    assert not (tmp_path / "no-such-folder").exists()


def test_an_unreachable_postgres_catalog_is_named_without_its_password(ibf_home, monkeypatch):
    monkeypatch.setenv("IBF_WAREHOUSE", "ducklake")
    monkeypatch.setenv("IBF_DUCKLAKE_CATALOG", f"postgres:dbname=lake host=127.0.0.1 port={free_port()} user=ibf password=S3cretPw")
    with pytest.raises(WarehouseError, match="IBF_DUCKLAKE_CATALOG") as raised:
        open_warehouse(load_settings())
    assert "S3cretPw" not in str(raised.value) and "password=***" in str(raised.value)


def test_a_postgres_catalog_database_that_does_not_exist_is_named(ibf_home, monkeypatch, postgres):
    monkeypatch.setenv("IBF_WAREHOUSE", "ducklake")
    monkeypatch.setenv("IBF_DUCKLAKE_CATALOG", f"postgres:dbname=no_such_lake host=127.0.0.1 port={postgres.port} user=postgres")
    with pytest.raises(WarehouseError, match="IBF_DUCKLAKE_CATALOG.*no_such_lake"):
        open_warehouse(load_settings())


def test_an_s3_prefix_without_access_is_named(ibf_home, monkeypatch):
    monkeypatch.setenv("IBF_WAREHOUSE", "ducklake")
    monkeypatch.setenv("IBF_DUCKLAKE_DATA_PATH", "s3://ibf-lake/data/")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMIEXAMPLEKEY")
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens: no access
    with pytest.raises(WarehouseError, match="IBF_DUCKLAKE_DATA_PATH: s3://ibf-lake/data/") as raised:
        open_warehouse(load_settings())
    assert "wJalrXUtnFEMIEXAMPLEKEY" not in str(raised.value)


@pytest.mark.parametrize("backend", ["ducklake-sqlite", "ducklake-postgres"])
def test_ibf_backfill_and_sql_run_on_ducklake(ibf_home, monkeypatch, request, backend):
    from helpers.cli import run_ibf

    server = request.getfixturevalue("postgres") if backend == "ducklake-postgres" else None
    env = _settings_env(backend, ibf_home, server, f"lake_cli_{os.getpid()}")
    done = run_ibf("backfill", "--start", "2012-10-01", "--end", "2012-12-31", "--assets", "market_bars,features", env=env)
    assert done.returncode == 0, done.stderr
    assert not (ibf_home / "lake").exists()  # nothing went to the Parquet lake
    shown = run_ibf("sql", "SELECT symbol, count(*) AS n FROM features GROUP BY 1 ORDER BY 1", "--format", "csv", env=env)
    assert shown.returncode == 0, shown.stderr
    from ibf_core.calendar import trading_days

    sessions = len(trading_days("2012-10-01", "2012-12-31"))  # 62: the NYSE closed for Hurricane Sandy
    assert shown.stdout.splitlines() == ["symbol,n"] + [f"{s},{sessions}" for s in ("AAPL", "GOOG", "IBM", "MSFT")]
    again = run_ibf("backfill", "--start", "2012-12-01", "--end", "2012-12-31", "--assets", "market_bars", env=env)
    assert again.returncode == 0, again.stderr
    counted = run_ibf("sql", "SELECT count(*) AS n FROM market_bars", "--format", "csv", env=env)
    assert counted.stdout.splitlines() == ["n", str(4 * sessions)]  # a re-run replaces its slice, adds nothing


def test_a_wrong_ducklake_setting_is_one_error_line_and_nothing_is_written(ibf_home, tmp_path):
    from helpers.cli import run_ibf

    env = {"IBF_HOME": str(ibf_home), "IBF_WAREHOUSE": "ducklake",
           "IBF_DUCKLAKE_CATALOG": f"postgres:dbname=lake host=127.0.0.1 port={free_port()} user=ibf password=S3cretPw"}
    for args in (["backfill", "--start", "2012-12-01", "--end", "2012-12-31", "--assets", "market_bars"], ["sql", "SELECT 1"]):
        done = run_ibf(*args, env=env)
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert done.returncode != 0 and lines[-1].startswith("error:") and "IBF_DUCKLAKE_CATALOG" in lines[-1], done.stderr
        assert "S3cretPw" not in done.stderr + done.stdout
    assert not (ibf_home / "ducklake").exists() and not (ibf_home / "lake").exists()


def test_ducklake_reads_of_tables_not_created_yet_see_no_rows_and_create_nothing(ibf_home, monkeypatch):
    from ibf_core.storage.ducklake import DuckLakeWarehouse

    monkeypatch.setenv("IBF_WAREHOUSE", "ducklake")
    writer = open_warehouse(load_settings())  # creates the (empty) catalog
    reader = open_warehouse(load_settings(), reader=True)
    assert reader.query("SELECT count(*) AS n FROM market_bars").n.iloc[0] == 0
    assert reader.query("SELECT count(*) AS n FROM forecast_outcomes").n.iloc[0] == 0
    assert reader.read(MARKET_BARS).empty and reader.partitions(MARKET_BARS) == []
    assert reader.read_partitions(MARKET_BARS).num_rows == 0
    with writer._connection(read_only=True) as cur:
        assert DuckLakeWarehouse._existing(cur) == set()  # no read created a table


def test_ibf_sql_on_a_ducklake_that_does_not_exist_yet_says_so_and_creates_nothing(ibf_home):
    from helpers.cli import run_ibf

    done = run_ibf("sql", "SELECT count(*) FROM market_bars", env={"IBF_HOME": str(ibf_home), "IBF_WAREHOUSE": "ducklake"})
    assert done.returncode != 0 and done.stderr.strip().splitlines()[-1].startswith("error: IBF_DUCKLAKE_CATALOG")
    assert not (ibf_home / "ducklake").exists()


@pytest.mark.parametrize("store_env", ["ducklake-sqlite", "ducklake-postgres"], indirect=True)
def test_ducklake_expires_old_snapshots_after_a_write_and_stamps_stay_unique(store_env, monkeypatch):
    """Replaced files stay for time travel until their snapshots expire (~13 MB a daily cycle at 500 symbols):
    a write expires those older than IBF_DUCKLAKE_KEEP_HOURS; a table whose last change was expired keeps a stamp
    of its own, never one it had before."""
    import dataclasses
    from pathlib import Path

    from ibf_core.monitoring.alerts import ALERTS, Alert, record_alerts

    store = open_warehouse(load_settings())  # the default: 24 hours
    data = Path(store.data_path)
    alert = Alert(asset="features", check_name="c", partition="AAA|2021-03-01", severity="ERROR", description="d",
                  metadata={}, run_id="r", raised_at=pd.Timestamp("2021-03-01 15:00", tz="UTC").to_pydatetime(), evaluation_id="e1")
    record_alerts(store, [alert], None, log=lambda line: None)
    bars = canonical(make_bars())
    stamps = [store.table_stamp(ALERTS)]
    for version in range(3):
        store.replace_slice(MARKET_BARS, bars.assign(volume=version), ["AAA", "BBB"], "2021-01-01", "2021-03-31")
    files = sorted(p for p in data.rglob("*.parquet"))
    assert len(files) >= 3 and store.table_stamp(ALERTS) == stamps[0]  # each version of the bars kept
    monkeypatch.setenv("IBF_DUCKLAKE_KEEP_HOURS", str(1 / 3600))  # one second
    store = open_warehouse(load_settings())
    time.sleep(1.5)
    store.replace_slice(MARKET_BARS, bars.assign(volume=7), ["AAA", "BBB"], "2021-01-01", "2021-03-31")
    left = sorted(p for p in data.rglob("*.parquet"))
    # The versions replaced before the second are deleted; the one this write replaced is a snapshot younger than it
    assert left and set(files) & set(left) <= {files[-1]}, (files, left)  # DuckLake names files by UUIDv7: in time order
    assert set(store.query("SELECT DISTINCT volume FROM market_bars").volume) == {7}
    assert len(store.query("SELECT * FROM alerts")) == 1
    stamps.append(store.table_stamp(ALERTS))  # its last change expired: a stamp of its own
    record_alerts(store, [dataclasses.replace(alert, evaluation_id="e2")], None, log=lambda line: None)
    stamps.append(store.table_stamp(ALERTS))
    time.sleep(1.5)
    store.replace_slice(MARKET_BARS, bars.assign(volume=8), ["AAA", "BBB"], "2021-01-01", "2021-03-31")
    stamps.append(store.table_stamp(ALERTS))
    assert len(set(stamps)) == len(stamps), stamps
    assert not set(files) & set(data.rglob("*.parquet"))
