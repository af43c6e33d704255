"""The `ibf` CLI end to end: real Dagster runs on a persistent instance under IBF_HOME, real warehouse."""

import hashlib
import json
import subprocess
import time
from pathlib import Path

import dagster as dg

from helpers.bars import make_bars
from helpers.cli import IBF_BIN, ibf, lake_state
from ibf_core.calendar import trading_days
from ibf_core.storage.warehouse import Warehouse

def lake_digest(home: Path) -> dict[str, str]:
    folder = home / "lake" / "market_bars"
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.parquet"))}


def test_backfill_sample_is_idempotent_and_recorded_in_dagster(ibf_home, monkeypatch):
    ibf("backfill", "--symbols", "AAPL,MSFT", "--start", "2012-01-03", "--end", "2012-12-31", "--assets", "market_bars")
    counts = json.loads(ibf("sql", "SELECT symbol, count(*) AS n FROM market_bars GROUP BY 1 ORDER BY 1", "-f", "json").stdout)
    assert counts == [{"symbol": "AAPL", "n": 250}, {"symbol": "MSFT", "n": 250}]
    first = lake_digest(ibf_home)
    ibf("backfill", "--symbols", "AAPL,MSFT", "--start", "2012-01-03", "--end", "2012-12-31")
    assert lake_digest(ibf_home) == first  # re-running the rectangle gives identical rows
    monkeypatch.setenv("DAGSTER_HOME", str(ibf_home / "dagster"))  # restored after the test
    with dg.DagsterInstance.get() as instance:
        done = instance.get_materialized_partitions(dg.AssetKey("market_bars"))
    assert {"2012-01|AAPL", "2012-12|MSFT"} <= done
    assert not any(k.startswith("2013") for k in done)


def test_bad_csv_exits_non_zero_and_changes_nothing(ibf_home, tmp_path, monkeypatch):
    good = tmp_path / "good.csv"
    make_bars().to_csv(good, index=False)
    ibf("backfill", "--csv", str(good), "--symbols", "AAA,BBB", "--start", "2021-01-04", "--end", "2021-03-31")
    before, lake_before = lake_digest(ibf_home), lake_state(ibf_home)
    bad_frame = make_bars(seed=5)
    bad_frame.loc[7, "low"] = bad_frame.loc[7, "high"] * 2
    bad = tmp_path / "bad.csv"
    bad_frame.to_csv(bad, index=False)
    monkeypatch.setenv("IBF_BAR_POLICY", "strict")
    proc = ibf("backfill", "--csv", str(bad), "--symbols", "AAA,BBB", "--start", "2021-01-04", "--end", "2021-03-31", check=False)
    assert proc.returncode == 1
    error_lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and "bad.csv" in error_lines[0] and "row 9" in error_lines[0] and "high below low" in error_lines[0]
    assert lake_digest(ibf_home) == before and lake_state(ibf_home) == lake_before  # news and bar_issues too
    proc = ibf("backfill", "--csv", str(good), "--symbols", "ZZZ", check=False)
    assert proc.returncode != 0 and "ZZZ" in proc.stderr
    assert lake_digest(ibf_home) == before
    # the same file under the default policy: the row is dropped, recorded, the rest loads
    monkeypatch.setenv("IBF_BAR_POLICY", "repair")
    proc = ibf("backfill", "--csv", str(bad), "--symbols", "AAA,BBB", "--start", "2021-01-04", "--end", "2021-03-31")
    assert "0 rows repaired, 1 dropped (1 missing sessions), see bar_issues" in proc.stderr
    issues = json.loads(ibf("sql", "SELECT symbol, date, rule, action FROM bar_issues ORDER BY rule", "-f", "json").stdout)
    day = bad_frame.loc[7, "date"]
    assert issues == [{"symbol": "AAA", "date": f"{day}T00:00:00.000", "rule": "high_below_low", "action": "dropped"},
                      {"symbol": "AAA", "date": f"{day}T00:00:00.000", "rule": "missing_session", "action": "reported"}]


def test_two_concurrent_backfills_and_sql_while_running(ibf_home):
    ibf("universe", "add", "AAPL", "GOOG", "IBM", "MSFT")
    procs = [
        subprocess.Popen([IBF_BIN, "backfill", "--symbols", syms, "--start", "2010-01-04", "--end", "2012-12-31"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for syms in ("AAPL,GOOG", "IBM,MSFT")
    ]
    queries = 0
    while any(p.poll() is None for p in procs):
        if (ibf_home / "warehouse.duckdb").exists():
            Warehouse(ibf_home).query("SELECT symbol, count(*) FROM market_bars GROUP BY 1")
            queries += 1
        time.sleep(0.2)
    for p in procs:
        assert p.wait() == 0, p.stderr.read()
    counts = Warehouse(ibf_home).query("SELECT symbol, count(*) AS n FROM market_bars GROUP BY 1 ORDER BY 1")
    sessions = len(trading_days("2010-01-04", "2012-12-31"))  # 754: Hurricane Sandy closed NYSE two days
    assert counts.n.tolist() == [sessions] * 4
    assert queries > 0


def test_sql_formats_and_read_only(ibf_home):
    ibf("backfill", "--symbols", "IBM", "--start", "2013-02-01", "--end", "2013-02-28")
    csv = ibf("sql", "SELECT date, close FROM market_bars ORDER BY date LIMIT 2", "--format", "csv").stdout
    assert csv.splitlines()[0] == "date,close" and csv.splitlines()[1].startswith("2013-02-01,")
    table = ibf("sql", "SELECT count(*) AS n FROM market_bars").stdout
    assert "19" in table
    proc = ibf("sql", "DELETE FROM market_bars", check=False)
    assert proc.returncode != 0 and "error:" in proc.stderr
    assert json.loads(ibf("sql", "SELECT count(*) AS n FROM market_bars", "-f", "json").stdout) == [{"n": 19}]


def test_universe_commands_and_bad_input(ibf_home):
    assert "AAPL" not in ibf("universe", "list").stdout  # a fresh instance has no symbol partitions yet
    assert "added: AAPL" in ibf("universe", "add", "AAPL").stdout
    assert "AAPL *" in ibf("universe", "list").stdout  # * = also in IBF_UNIVERSE (the default universe)
    ibf("universe", "add", "fb")
    assert "FB" in ibf("universe", "list").stdout
    ibf("universe", "remove", "FB")
    assert "FB" not in ibf("universe", "list").stdout
    proc = ibf("universe", "add", "nvda", check=False)  # not in the sample (IBF_SOURCE): refused, not added
    assert proc.returncode == 1 and "unknown symbol NVDA (source sample:" in proc.stderr
    assert "NVDA" not in ibf("universe", "list").stdout
    proc = ibf("universe", "add", "BAD|X", check=False)
    assert proc.returncode == 2 and "invalid symbol" in proc.stderr
    proc = ibf("backfill", "--start", "2012-05-01", "--end", "2012-01-01", check=False)
    assert proc.returncode != 0 and "empty date range 2012-05-01..2012-01-01: the start is after the end" in proc.stderr


def test_invalid_setting_fails_at_start_naming_the_variable(ibf_home, monkeypatch):
    monkeypatch.setenv("IBF_IB_PORTS", "4002,x")
    proc = ibf("sql", "SELECT 1", check=False)
    assert proc.returncode == 2 and "IBF_IB_PORTS" in proc.stderr


def test_a_backfill_too_large_for_the_sqlite_instance_warns_once_with_the_settings(ibf_home, monkeypatch):
    from ibf_core.progress import set_notice_sink
    from ibf_core.settings import get_settings
    from ibf_dagster import runner

    monkeypatch.setenv("IBF_UNIVERSE", "AAPL,MSFT")
    get_settings.cache_clear()
    notices: list[str] = []
    set_notice_sink(notices.append)
    try:
        runner.backfill(get_settings(), ["AAPL", "MSFT"], "2012-01-03", "2012-03-30", assets="market_bars")
        assert not [n for n in notices if "partition materializations" in n]  # 6 partitions: far below the limit
        monkeypatch.setattr(runner, "SQLITE_PARTITIONS_WARNING", 5)
        summaries = runner.backfill(get_settings(), ["AAPL", "MSFT"], "2012-01-03", "2012-03-30", assets="market_bars")
    finally:
        set_notice_sink(None)
        get_settings.cache_clear()
    assert all(s.success for s in summaries)  # a warning, not a refusal
    (line,) = [n for n in notices if "partition materializations" in n]
    assert line.startswith("warning: this backfill records 6 partition materializations in the embedded SQLite")
    assert "IBF_DAGSTER_PG_URL" in line and "IBF_DATE_PARTITIONS=year" in line


def test_a_range_run_records_its_metadata_once_on_the_latest_partition_event(ibf_home, monkeypatch):
    from ibf_core.settings import get_settings
    from ibf_dagster import runner

    monkeypatch.setenv("IBF_UNIVERSE", "AAPL,MSFT")
    get_settings.cache_clear()
    try:
        (summary,) = runner.backfill(get_settings(), ["AAPL", "MSFT"], "2012-01-03", "2012-03-30", assets="market_bars")
        assert summary.success
        instance = runner.get_instance(get_settings())
        events = instance.fetch_materializations(dg.AssetKey("market_bars"), limit=100).records
    finally:
        get_settings.cache_clear()
    assert len(events) == 6  # 2 symbols x 3 months
    latest, *others = events  # newest first: the asset's latest materialization
    full = latest.asset_materialization.metadata
    assert full["dagster/row_count"].value == 2 * 62 and "symbols" in full and "preview" in full
    for record in others:  # every other partition: where the run's metadata is, nothing repeated
        metadata = record.asset_materialization.metadata
        assert set(metadata) == {"run_partitions", "run_metadata_on"}
        assert metadata["run_metadata_on"].value == latest.partition_key and metadata["run_partitions"].value == 6
