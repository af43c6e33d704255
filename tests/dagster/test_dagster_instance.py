"""The Dagster side as a user meets it: workspace loads, the universe sensor, `dagster dev` serving the graph."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import duckdb
import httpx
import pytest

from ibf_core.processes import free_port

from ibf_core.settings import load_settings
from ibf_dagster.definitions import build_definitions
from ibf_dagster.instance import prepare_dagster_home
from helpers.paths import ROOT
from helpers.sensors import sensor_context

BIN = Path(sys.executable).parent


def test_workspace_validates_with_the_repo_instance_config(ibf_home):
    prepare_dagster_home(load_settings())
    proc = subprocess.run([str(BIN / "dagster"), "definitions", "validate", "-w", str(ROOT / "workspace.yaml")],
                          capture_output=True, text=True, cwd=ROOT, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    instance_yaml = (ibf_home / "dagster" / "dagster.yaml").read_text()
    assert "default_limit: 1" in instance_yaml and "max_concurrent_runs" in instance_yaml


def test_universe_sync_sensor_adds_configured_symbols(monkeypatch):
    monkeypatch.setenv("IBF_UNIVERSE", "IBM,MSFT")
    defs = build_definitions(load_settings())
    sensor = defs.resolve_sensor_def("universe_sync")
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("symbol", ["AAPL"])  # added by `ibf universe add`: kept
        result = sensor(sensor_context(defs, instance))
        (request,) = result.dynamic_partitions_requests
        assert request.partitions_def_name == "symbol" and list(request.partition_keys) == ["IBM", "MSFT"]
        instance.add_dynamic_partitions("symbol", ["IBM", "MSFT"])
        assert isinstance(sensor(sensor_context(defs, instance)), dg.SkipReason)


def test_open_analyst_session_does_not_block_a_backfill(ibf_home):
    ibf = str(BIN / "ibf")
    first = subprocess.run([ibf, "backfill", "--symbols", "IBM", "--start", "2012-01-03", "--end", "2012-01-31"],
                           capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    with duckdb.connect(str(ibf_home / "warehouse.duckdb"), read_only=True) as analyst:
        assert analyst.execute("SELECT count(*) FROM market_bars").fetchone()[0] == 20
        second = subprocess.run([ibf, "backfill", "--symbols", "IBM", "--start", "2012-02-01", "--end", "2012-02-29"],
                                capture_output=True, text=True, timeout=300)
        assert second.returncode == 0, second.stderr
        assert analyst.execute("SELECT count(*) FROM market_bars").fetchone()[0] == 40  # sees the new rows




@pytest.mark.slow
def test_make_ui_serves_the_asset_graph_on_loopback(ibf_home):
    port = free_port()
    env = {**os.environ, "IBF_HOME": str(ibf_home)}
    proc = subprocess.Popen([str(BIN / "ibf"), "ui", "--port", str(port)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline, body = time.time() + 150, None
        query = "{ assetNodes { assetKey { path } isPartitioned } }"
        while time.time() < deadline:
            try:
                response = httpx.post(f"http://127.0.0.1:{port}/graphql", json={"query": query}, timeout=10)
                body = response.json()
                if body.get("data", {}).get("assetNodes"):
                    break
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(2)
        assert body, "dagster dev did not answer"
        nodes = {tuple(n["assetKey"]["path"]): n["isPartitioned"] for n in body["data"]["assetNodes"]}
        assert nodes == {
            ("market_bars",): True,
            ("news_sentiment",): True,
            ("features",): True,
            ("trained_models",): True,
            ("predictions",): True,
            ("drift_scores",): True,
            ("microstructure_daily",): True,
            ("fundamentals",): True,  # by symbol
            ("macro_indicators",): True,  # by date
            ("portfolio_weights",): True,  # by date, after predictions
            ("portfolio_returns",): True,
            # the live tables ibf stream writes: observable source assets, not partitioned
            ("intraday_bars",): False,
            ("quotes",): False,
            ("trades",): False,
            ("depth",): False,
        }
        with socket.socket() as s:  # bound to loopback only
            assert s.connect_ex(("127.0.0.1", port)) == 0
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def test_weekly_training_launches_nothing_on_an_empty_warehouse():
    """A fresh instance: the features table is empty (max(date) is NULL) and no run may be requested."""
    from ibf_core.storage.warehouse import Warehouse

    settings = load_settings()
    Warehouse(settings.home_dir).ensure_all_tables()
    defs = build_definitions(settings)
    sensor = defs.resolve_sensor_def("weekly_training")
    with dg.instance_for_test() as instance:
        result = sensor(sensor_context(defs, instance))
    assert isinstance(result, dg.SkipReason) and "no features stored" in result.skip_message
