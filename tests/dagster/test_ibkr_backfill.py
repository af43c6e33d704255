"""`ibf backfill --source ibkr` end to end: the real ib_insync client inside a Dagster run, against the simulator."""

import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ibf_core.sim.ib.gateway import GatewaySimulator
from ibf_core.sources.sample import load_sample_bars
from ibf_core.storage.warehouse import Warehouse

IBF = str(Path(sys.executable).with_name("ibf"))


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ibf(env_extra: dict, *args: str) -> subprocess.CompletedProcess:
    import os

    env = {**os.environ, **env_extra}
    return subprocess.run([IBF, *args], capture_output=True, text=True, timeout=300, env=env)


@pytest.fixture
def gateway():
    with GatewaySimulator() as sim:  # serves the embedded sample bars
        yield sim


def test_ibkr_backfill_through_dagster_with_port_failover(ibf_home, gateway):
    env = {"IBF_IB_PORTS": f"{closed_port()},{gateway.port}", "IBF_IB_REQUEST_INTERVAL": "0", "IBF_IB_TIMEOUT": "10"}
    proc = run_ibf(env, "backfill", "--source", "ibkr", "--symbols", "AAPL", "--start", "2011-01-03", "--end", "2012-12-31")
    assert proc.returncode == 0, proc.stderr
    stored = Warehouse(ibf_home).query("SELECT * FROM market_bars ORDER BY date")
    sample = load_sample_bars()
    sample = sample[(sample.symbol == "AAPL") & (sample.date >= "2011-01-03") & (sample.date <= "2012-12-31")]
    assert len(stored) == len(sample) == 502  # 2011-2012 sessions (Sandy closed two days)
    assert set(stored.source) == {"ibkr"}
    assert np.allclose(stored.close.to_numpy(), sample.close.to_numpy())
    assert np.allclose(stored.adj_close.to_numpy(), sample.adj_close.to_numpy(), rtol=1e-6)
    trades = gateway.historical_requests(what_to_show="TRADES")
    assert len(trades) >= 2  # two years: at least two <= 1-year chunks
    # incremental: a second backfill of the same rectangle asks IB for nothing new
    before = len(gateway.request_log)
    assert run_ibf(env, "backfill", "--source", "ibkr", "--symbols", "AAPL", "--start", "2011-01-03", "--end", "2012-12-31").returncode == 0
    assert len(gateway.historical_requests(what_to_show="TRADES")) == len(trades)
    assert len(gateway.request_log) == before


def test_unreachable_gateway_and_unknown_symbol_leave_warehouse_unchanged(ibf_home, gateway):
    ports = f"{closed_port()},{closed_port()}"
    proc = run_ibf({"IBF_IB_PORTS": ports}, "backfill", "--source", "ibkr", "--symbols", "IBM", "--start", "2012-01-03", "--end", "2012-01-31")
    assert proc.returncode != 0
    assert "error:" in proc.stderr and all(p in proc.stderr for p in ports.split(","))
    assert Warehouse(ibf_home).symbols(__import__("ibf_core.storage.tables", fromlist=["MARKET_BARS"]).MARKET_BARS) == []
    gateway.set_faults(unknown_symbols="ZZZZ")
    proc = run_ibf({"IBF_IB_PORTS": str(gateway.port)}, "backfill", "--source", "ibkr", "--symbols", "ZZZZ", "--start", "2012-01-03", "--end", "2012-01-31")
    assert proc.returncode != 0 and "unknown symbol ZZZZ" in proc.stderr
