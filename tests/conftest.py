"""Fixtures every layer shares, and the layer markers.

Each test file sits in one layer folder, and every test in it carries that layer's marker (``pytest -m core``):
``core/`` the Dagster-free library (simulators and real clients included), ``dagster/`` the wiring (assets, sensors,
the instance, the CLI's Dagster runs), ``serve/`` the REST API, ``system/`` the whole stack and the repository (many
processes, real services, docs, deploy files, layering). What test files share that is not a fixture lives in
``helpers/`` (on pytest's ``pythonpath``); test files never import each other or this file.
"""

import os
import warnings
from pathlib import Path

import pytest

from ibf_core.settings import get_settings

warnings.filterwarnings("ignore")

LAYERS = ("core", "dagster", "serve", "system")
TESTS = Path(__file__).resolve().parent


@pytest.hookimpl(tryfirst=True)  # before -m selects on the markers
def pytest_collection_modifyitems(config, items):
    """Mark every test with its layer folder's name; a test file outside the layer folders is a usage error."""
    outside = set()
    for item in items:
        try:
            layer = item.path.resolve().relative_to(TESTS).parts[0]
        except ValueError:  # a test file outside tests/
            continue
        if layer in LAYERS:
            item.add_marker(layer)
        else:
            outside.add(str(item.path.resolve().relative_to(TESTS)))
    if outside:
        raise pytest.UsageError(f"test files outside the layer folders {', '.join(LAYERS)} of tests/: {sorted(outside)}")


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


def _live_simulator(speed: float):
    import datetime as dt

    from ibf_core.sim.ib.live import LiveClock, session_start
    from ibf_core.sim.ib.gateway import GatewaySimulator
    from ibf_core.sources.sample import load_sample_bars
    from helpers.live import DAY

    clock = LiveClock(session_start(DAY) + dt.timedelta(minutes=30), speed=speed)
    return GatewaySimulator(load_sample_bars(), live_clock=clock)


@pytest.fixture
def live_sim():
    """The gateway simulator on the sample, its live clock 30 minutes into helpers.live.DAY at SPEED x."""
    from helpers.live import SPEED

    with _live_simulator(SPEED) as sim:
        yield sim


@pytest.fixture
def slow_live_sim():
    """The same at SLOW_SPEED x, for tests of what a reconnect loses: at SPEED x, the 0.7 s a loaded CI machine
    took to reconnect is 140 s of market time, more than IB's 1000 replayed trades cover (CI of stop 33 lost 28
    trades so); at SLOW_SPEED x a reconnect of 2.6 s is covered."""
    from helpers.live import SLOW_SPEED

    with _live_simulator(SLOW_SPEED) as sim:
        yield sim


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
