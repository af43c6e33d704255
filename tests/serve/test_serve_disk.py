"""Free space under IBF_HOME in the REST service: the ``ibf_disk_free_bytes`` gauge and its floor on /metrics, and
/ready answering 503 with a reason naming the free space when it is below IBF_MIN_FREE_MIB."""

from __future__ import annotations

import shutil

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ibf_core.settings import get_settings

SYMBOLS = ["AAA", "BBB"]
HUGE_MIB = 10**9  # about a petabyte: more than any test machine has free


@pytest.fixture
def serve(ibf_home, monkeypatch):
    """Start the service over a stored world with IBF_MIN_FREE_MIB set to the given value; yields a client."""
    monkeypatch.setenv("IBF_UNIVERSE", ",".join(SYMBOLS))
    monkeypatch.setenv("IBF_API_METRICS_PUBLIC", "true")
    from ibf_serve.app import create_app
    from ibf_serve.testing import running_server, write_stored_world

    write_stored_world(ibf_home, SYMBOLS, "2021-01-04", "2021-03-31")

    def start(min_free_mib: int):
        monkeypatch.setenv("IBF_MIN_FREE_MIB", str(min_free_mib))
        get_settings.cache_clear()
        return running_server(create_app(get_settings()))

    return start


def gauges(client: httpx.Client) -> dict[str, float]:
    families = text_string_to_metric_families(client.get("/metrics").text)
    return {f.name: f.samples[0].value for f in families if f.name.startswith("ibf_disk_")}


def test_ready_is_503_naming_the_free_space_below_the_floor_and_the_gauges_report_it(serve, ibf_home):
    with serve(HUGE_MIB) as url, httpx.Client(base_url=url, timeout=30) as client:
        ready = client.get("/ready")
        figures = gauges(client)
    assert ready.status_code == 503
    body = ready.json()
    assert "disk" in body["failing"] and body["checks"]["disk"]["ok"] is False
    reason = body["checks"]["disk"]["message"]
    assert "free under IBF_HOME" in reason and "below the floor" in reason and str(ibf_home) not in reason
    assert f"disk: {reason}" in body["error"]["message"]
    assert body["checks"]["disk"]["floor_bytes"] == HUGE_MIB * 2**20
    free_now = shutil.disk_usage(ibf_home).free
    assert figures["ibf_disk_free_floor_bytes"] == HUGE_MIB * 2**20
    assert abs(figures["ibf_disk_free_bytes"] - free_now) < 2**30  # the same filesystem, give or take other writers


def test_enough_free_space_keeps_the_disk_part_ready(serve, ibf_home):
    with serve(1) as url, httpx.Client(base_url=url, timeout=30) as client:
        body = client.get("/ready").json()
        figures = gauges(client)
    assert body["checks"]["disk"]["ok"] is True and "disk" not in body["failing"]
    assert body["checks"]["disk"]["free_bytes"] > 2**20 and "message" not in body["checks"]["disk"]
    assert figures["ibf_disk_free_floor_bytes"] == 2**20 and figures["ibf_disk_free_bytes"] > 2**20
