import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ibf_core.calendar import trading_days
from ibf_core.settings import get_settings

warnings.filterwarnings("ignore")


@pytest.fixture(autouse=True)
def ibf_home(tmp_path, monkeypatch) -> Path:
    """Every test gets its own IBF_HOME and no config file, so nothing leaks between tests."""
    home = tmp_path / "ibf_home"
    monkeypatch.setenv("IBF_HOME", str(home))
    monkeypatch.setenv("IBF_CONFIG", str(tmp_path / "no-settings.toml"))
    for name in list(os.environ):
        if name.startswith("IBF_") and name not in ("IBF_HOME", "IBF_CONFIG"):
            monkeypatch.delenv(name)
    get_settings.cache_clear()
    yield home
    get_settings.cache_clear()


@pytest.fixture
def live_sim():
    """The gateway simulator on the sample, its live clock 30 minutes into test_gateway_live.DAY at SPEED x."""
    import datetime as dt

    from ibf_core.sim.ib.live import LiveClock, session_start
    from ibf_core.sim.ib.gateway import GatewaySimulator
    from ibf_core.sources.sample import load_sample_bars
    from test_gateway_live import DAY, SPEED

    clock = LiveClock(session_start(DAY) + dt.timedelta(minutes=30), speed=SPEED)
    with GatewaySimulator(load_sample_bars(), live_clock=clock) as sim:
        yield sim


def sensor_context(defs, instance, cursor=None):
    """A sensor evaluation context with the definitions' settings and warehouse resources (what the daemon gives)."""
    import dagster as dg

    resources = {k: v for k, v in defs.resources.items() if k in ("ibf", "warehouse")}
    return dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs, resources=resources)


def make_bars(symbols=("AAA", "BBB"), start="2021-01-04", end="2021-03-31", seed=0) -> pd.DataFrame:
    """Synthetic but valid bars on real NYSE sessions (random-walk closes, consistent OHLC)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    days = trading_days(start, end)
    frames = []
    for i, symbol in enumerate(symbols):
        close = 50 * (i + 1) * np.exp(np.cumsum(rng.normal(0, 0.01, len(days))))
        open_ = close * (1 + rng.normal(0, 0.003, len(days)))
        high = np.maximum(open_, close) * 1.01
        low = np.minimum(open_, close) * 0.99
        frames.append(
            pd.DataFrame(
                {
                    "date": days.strftime("%Y-%m-%d"),
                    "symbol": symbol,
                    "open": open_.round(4),
                    "high": high.round(4),
                    "low": low.round(4),
                    "close": close.round(4),
                    "adj_close": close.round(4),
                    "volume": rng.integers(1_000, 100_000, len(days)),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def dividend_bars(symbols=("AAPL", "IBM"), start="2020-01-02", end="2022-12-30", dividend=0.97) -> pd.DataFrame:
    """Canonical bars on NYSE sessions; adj_close = close * ``dividend`` before 2022-06-01."""
    days = trading_days(start, end)
    frames = []
    for i, symbol in enumerate(symbols):
        close = 50.0 * (i + 1) + np.sin(np.arange(len(days)) / 9.0) * 5 + np.arange(len(days)) * 0.01
        factor = np.where(days < pd.Timestamp("2022-06-01"), dividend, 1.0)
        frames.append(
            pd.DataFrame(
                {
                    "symbol": symbol,
                    "date": days,
                    "open": close * 0.995,
                    "high": close * 1.01,
                    "low": close * 0.985,
                    "close": close,
                    "adj_close": close * factor,
                    "volume": 10_000.0 + np.arange(len(days)),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


IBF_BIN = str(Path(__import__("sys").executable).with_name("ibf"))


def run_ibf(*args: str, env: dict | None = None, timeout: float = 300):
    """The ibf console script in its own process, with this test's environment (plus ``env``)."""
    import subprocess

    return subprocess.run([IBF_BIN, *args], capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})


@pytest.fixture
def instance(ibf_home, monkeypatch):
    """The persistent instance `ibf` uses (dagster.yaml from the repo: the default, local run launcher), created here
    before any ibf process opens it."""
    from ibf_core.settings import load_settings
    from ibf_dagster.instance import get_instance

    monkeypatch.setenv("DAGSTER_HOME", str(ibf_home / "dagster"))  # get_instance exports it; restored after the test
    monkeypatch.setenv("DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS", "1")
    monkeypatch.setenv("DAGSTER_EVENT_BATCH_SIZE", "1000")
    with get_instance(load_settings()) as inst:
        yield inst
