"""Bad input changes nothing, for every source: an unknown symbol, an unknown asset name or an empty date range is
refused by the one pre-flight check (ibf_core.sources.preflight) before any Dagster run, partition key or row.

The commands run in-process (typer's CliRunner) against a temporary IBF_HOME holding one real baseline backfill, so
"nothing changed" compares a world that has runs, partitions and rows: the run count, the ``symbol`` partition keys,
every table's row count and every lake file's bytes.
"""

import socket

import pytest
from typer.testing import CliRunner

from helpers.bars import make_bars
from helpers.cli import lake_state
from ibf_core.settings import get_settings, load_settings
from ibf_core.sim.alphavantage.server import AlphaVantageSimulator, synthetic_feed, synthetic_fundamentals
from ibf_core.sim.ib.gateway import GatewaySimulator
from ibf_core.storage.registry import registered_catalog
from ibf_core.storage.warehouse import Warehouse
from ibf_dagster.cli import app
from ibf_dagster.instance import get_instance
from ibf_dagster.partitions import SYMBOL_PARTITIONS

RANGE = ("--start", "2012-01-03", "--end", "2012-01-31")
# (arguments, what the one error line must say): the same refusals for every source
REFUSED = [
    (["backfill", "--symbols", "NOPE", "--start", "2012-01-03", "--end", "2012-01-10"], "unknown symbol NOPE (source {source}:"),
    (["backfill", "--symbols", "AAPL,NOPE,ZZZ", *RANGE], "unknown symbols NOPE, ZZZ (source {source}:"),
    (["backfill", "--symbols", "NOPE", "--assets", "fundamentals", *RANGE], "unknown symbol NOPE (source {source}:"),
    (["universe", "add", "NOPE"], "unknown symbol NOPE (source {source}:"),
    (["backfill", "--symbols", "AAPL", "--assets", "nope_asset", *RANGE], "unknown asset nope_asset (asset graph: "),
    (["backfill", "--symbols", "AAPL", "--assets", "market_bars,nope_asset", *RANGE], "unknown asset nope_asset (asset graph: "),
    (["backfill", "--symbols", "AAPL", "--start", "2012-01-07", "--end", "2012-01-08"],
     "empty date range 2012-01-07..2012-01-08: no NYSE session between them"),
    (["backfill", "--symbols", "AAPL", "--start", "2012-01-10", "--end", "2012-01-03"],
     "empty date range 2012-01-10..2012-01-03: the start is after the end"),
]


def world(home) -> dict:
    """What a refused command must leave as it was: runs, symbol partition keys, rows per table, lake bytes."""
    instance = get_instance(load_settings())
    warehouse = Warehouse(home)
    rows = {spec.name: int(warehouse.query(f"SELECT count(*) AS n FROM {spec.name}").n.iloc[0])
            for spec in registered_catalog().tables}
    return {"runs": len(instance.get_run_records()), "symbols": sorted(instance.get_dynamic_partitions(SYMBOL_PARTITIONS.name)),
            "rows": rows, "lake": lake_state(home)}


def invoke(*args: str):
    get_settings.cache_clear()  # the environment a test set is the one the command reads
    return CliRunner().invoke(app, list(args))


def baseline(*args: str) -> dict:
    """One real backfill (AAPL, January 2012, market_bars) so the world has a run, partitions and rows."""
    done = invoke("backfill", "--symbols", "AAPL", "--assets", "market_bars", *RANGE, *args)
    assert done.exit_code == 0, done.output
    return world(get_settings().home_dir)


def assert_refused(args: list[str], needle: str, before: dict, home) -> str:
    result = invoke(*args)
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code != 0 and len(errors) == 1, (args, result.output)
    assert needle in errors[0], (needle, errors[0])
    assert world(home) == before, args  # no run, no partition key, no row, no byte
    return errors[0]


def test_sample_source_refuses_bad_input_before_anything_is_written(ibf_home, instance):
    before = baseline()
    assert before["runs"] == 1 and before["rows"]["market_bars"] == 20 and "AAPL" in before["symbols"]
    lines = [assert_refused(args, needle.format(source="sample"), before, ibf_home) for args, needle in REFUSED]
    assert lines[0].endswith("(source sample: the embedded sample has AAPL, FB, GOOG, IBM, MSFT)")
    assert "market_bars" in lines[4] and "news_sentiment" in lines[4]
    # a good request still runs: the check refuses only what is bad
    added = invoke("universe", "add", "FB")
    assert added.exit_code == 0 and "added: FB" in added.output


def test_csv_source_names_the_file_and_what_it_has(ibf_home, instance, tmp_path, monkeypatch):
    bars = tmp_path / "bars.csv"
    frame = make_bars(symbols=("AAPL", "MSFT"), start="2011-12-01", end="2012-02-29")
    frame.to_csv(bars, index=False)
    monkeypatch.setenv("IBF_SOURCE", "csv")
    monkeypatch.setenv("IBF_CSV_PATH", str(bars))
    before = baseline()
    assert before["rows"]["market_bars"] == 20
    lines = [assert_refused(args, needle.format(source="csv"), before, ibf_home) for args, needle in REFUSED]
    assert lines[0].endswith(f"(source csv: {bars} has AAPL, MSFT)")
    line = assert_refused(["backfill", "--csv", str(bars), "--symbols", "NOPE"], "unknown symbol NOPE", before, ibf_home)
    assert f"{bars} has AAPL, MSFT" in line


def test_csv_lists_of_known_symbols_are_truncated(tmp_path):
    from ibf_core.sources.csv import CsvSource
    from ibf_core.sources.preflight import BadInputError, check_symbols

    names = [f"S{i:02d}" for i in range(14)]
    bars = tmp_path / "many.csv"
    make_bars(symbols=tuple(names), start="2012-01-03", end="2012-01-31").to_csv(bars, index=False)
    with pytest.raises(BadInputError) as refused:
        check_symbols(CsvSource(bars), ["S01", "NOPE"])
    assert str(refused.value) == f"unknown symbol NOPE (source csv: {bars} has {', '.join(names[:10])} and 4 more)"
    missing = [f"N{i:02d}" for i in range(12)]
    with pytest.raises(BadInputError) as refused:
        check_symbols(CsvSource(bars), missing)
    assert str(refused.value).startswith(f"unknown symbols {', '.join(missing[:10])} and 2 more (source csv: ")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ibkr_source_asks_contract_details_of_the_simulator(ibf_home, instance, monkeypatch):
    with GatewaySimulator() as gateway:  # the real ib_insync client against the simulator on a free loopback port
        monkeypatch.setenv("IBF_SOURCE", "ibkr")
        monkeypatch.setenv("IBF_IB_PORTS", str(gateway.port))
        monkeypatch.setenv("IBF_IB_REQUEST_INTERVAL", "0")
        monkeypatch.setenv("IBF_IB_TIMEOUT", "10")
        before = baseline()
        assert before["rows"]["market_bars"] == 20
        history = len(gateway.historical_requests())
        lines = [assert_refused(args, needle.format(source="ibkr"), before, ibf_home) for args, needle in REFUSED]
        assert f"IB contract details at 127.0.0.1:{gateway.port}" in lines[0] and "error 200" in lines[0]
        streamed = assert_refused(["stream", "--symbols", "AAPL,NOPE", "--duration", "1"], "unknown symbol NOPE (source ibkr:",
                                  before, ibf_home)
        assert "AAPL" not in streamed.split("(")[0]
        assert len(gateway.historical_requests()) == history  # refused before any history request
        # a symbol the simulator serves but IB answers error 200 for (delisted) is unknown too
        gateway.set_faults(unknown_symbols="IBM")
        assert_refused(["universe", "add", "IBM"], "unknown symbol IBM (source ibkr:", before, ibf_home)
    # unreachable: the lookup cannot answer, the command is refused naming the ports, nothing changes
    monkeypatch.setenv("IBF_IB_PORTS", str(free_port()))
    assert_refused(["universe", "add", "MSFT"], "no TWS / IB Gateway accepted an API connection", before, ibf_home)


def test_alpha_vantage_is_never_asked_about_a_symbol_the_bar_source_refuses(ibf_home, instance, monkeypatch):
    """The observed bug: news_sentiment rows and a partition key for NOPE. The Alpha Vantage feeds do not define
    "unknown" (no articles, or OVERVIEW's ``{}``, is data); the bar source refuses first and AV gets no request."""
    feed = synthetic_feed(("AAPL", "NOPE"), "2012-01-03", "2012-01-31", per_day=2.0)
    data = synthetic_fundamentals(("AAPL", "NOPE"), "2011-01-03", "2012-01-31")
    with AlphaVantageSimulator(feed, fundamentals=data) as sim:
        for name, value in {"IBF_NEWS_SOURCE": "alphavantage", "IBF_FUNDAMENTALS_SOURCE": "alphavantage",
                            "IBF_ALPHAVANTAGE_URL": sim.url, "ALPHAVANTAGE_API_KEY": "test-key",
                            "IBF_ALPHAVANTAGE_REQUESTS_PER_DAY": "500"}.items():
            monkeypatch.setenv(name, value)
        before = baseline()
        asked = len(sim.request_log)
        for args, needle in REFUSED:
            assert_refused(args, needle.format(source="sample"), before, ibf_home)
        assert len(sim.request_log) == asked
        # a symbol the bar source knows and the feed has nothing on is not refused: zero articles is data
        done = invoke("backfill", "--symbols", "IBM", "--assets", "news_sentiment", *RANGE)
        assert done.exit_code == 0, done.output
    news = Warehouse(ibf_home).query("SELECT sum(news_count) AS n, count(*) AS days FROM news_sentiment WHERE symbol = 'IBM'")
    assert news.n.iloc[0] == 0 and news.days.iloc[0] == 20
