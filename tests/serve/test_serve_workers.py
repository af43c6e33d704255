"""The stored-forecast fast path (pre-rendered JSON) against the files, and `ibf serve --workers N`: one rate
limit and one set of metrics over all workers."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from ibf_core.settings import get_settings

SYMBOLS = ["AAA", "BBB", "CCC", "DDD"]
KEY = "workers-test-key"


def _auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {KEY}"}


@pytest.fixture
def world(ibf_home, monkeypatch):
    monkeypatch.setenv("IBF_UNIVERSE", ",".join(SYMBOLS))
    monkeypatch.setenv("IBF_API_KEYS", hashlib.sha256(KEY.encode()).hexdigest())
    monkeypatch.setenv("IBF_API_RATE_LIMIT", "0")
    get_settings.cache_clear()
    from ibf_serve.testing import write_stored_world

    return write_stored_world(ibf_home, SYMBOLS, "2021-01-04", "2021-03-31")


def _from_files(world, symbols, horizons, as_of=None) -> dict:
    """What the slow path (read the Parquet files, shape, encode) answers: the reference for the fast path."""
    from ibf_core.forecasts import stored_forecasts
    from ibf_serve.stored import records

    found = stored_forecasts(world["store"], symbols, horizons, as_of)
    return {"as_of": found.as_of.isoformat(), "mode": "stored", "model_version": found.model_versions[-1],
            "predictions": records(found.frame)}


def test_the_in_memory_answer_is_the_files_answer_and_follows_a_write(world):
    from ibf_core.storage.tables import PREDICTIONS
    from ibf_serve.app import create_app
    from ibf_serve.testing import running_server

    with running_server(create_app(get_settings())) as url, httpx.Client(base_url=url, timeout=30) as api:
        for symbols, horizons in ((["DDD", "AAA"], [20, 1]), (SYMBOLS, [1, 3, 5, 10, 15, 20]), (["CCC"], [5])):
            served = api.post("/predict", json={"symbols": symbols, "horizons": horizons}, headers=_auth())
            assert served.status_code == 200 and served.headers["content-type"] == "application/json"
            expected = _from_files(world, symbols, sorted(horizons))
            assert served.json() == expected and len(expected["predictions"]) == len(symbols) * len(horizons)
        ranked = api.get("/rankings", params={"horizon": 10, "top": 3}, headers=_auth()).json()
        assert [r["rank"] for r in ranked["ranking"]] == [1, 2, 3] and ranked["as_of"] == "2021-03-31"
        files = world["predictions"]
        top = files[(files["date"] == files["date"].max()) & (files["horizon"] == 10)].nsmallest(3, "rank")
        assert [r["symbol"] for r in ranked["ranking"]] == list(top["symbol"])
        # A writer swaps a new model's predictions of the newest origin in: the next answer is read from them.
        newest = files[files["date"] == files["date"].max()].assign(model_version="2", pred_return=0.5)
        world["store"].replace_slice(PREDICTIONS, newest, SYMBOLS, newest["date"].max(), newest["date"].max())
        after = api.post("/predict", json={"symbols": ["AAA"], "horizons": [1]}, headers=_auth()).json()
        assert after["model_version"] == "2" and after["predictions"][0]["pred_return"] == 0.5
        assert after == _from_files(world, ["AAA"], [1])


def test_rate_limiters_sharing_a_file_enforce_one_limit(tmp_path):
    from ibf_serve.auth import RateLimiter
    from ibf_serve.errors import ApiError

    now = [1000.0]
    first, second = (RateLimiter(4, ["k1", "k2"], tmp_path / "limit.bin", clock=lambda: now[0]) for _ in range(2))
    for limiter in (first, second, first, second):
        limiter.hit("k1")
    with pytest.raises(ApiError) as refused:
        second.hit("k1")
    assert refused.value.status == 429 and refused.value.headers == {"Retry-After": "60"}
    first.hit("k2")  # another key has its own ring
    now[0] += 60.5
    second.hit("k1")


@pytest.mark.slow
def test_serve_with_two_workers_shares_the_rate_limit_and_the_metrics(world, monkeypatch):
    from prometheus_client.parser import text_string_to_metric_families

    from ibf_serve.testing import free_port

    monkeypatch.setenv("IBF_API_RATE_LIMIT", "6")
    port = free_port()
    proc = subprocess.Popen([str(Path(sys.executable).with_name("ibf")), "serve", "--port", str(port), "--workers", "2"],
                            env=dict(os.environ), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                assert proc.poll() is None and time.monotonic() < deadline, "ibf serve --workers 2 did not start"
                time.sleep(0.3)
        statuses = []
        for _ in range(10):
            with httpx.Client(base_url=url, timeout=30) as client:  # fresh connections: spread over the workers
                statuses.append(client.post("/predict", json={"symbols": ["AAA"], "horizons": [1]}, headers=_auth()).status_code)
        assert statuses.count(200) == 6 and statuses.count(429) == 4 and statuses[:6] == [200] * 6
        text = httpx.get(f"{url}/metrics", timeout=30).text
        families = {f.name: f for f in text_string_to_metric_families(text)}
        predicted = sum(s.value for s in families["ibf_http_requests"].samples
                        if s.name == "ibf_http_requests_total" and s.labels["route"] == "/predict")
        assert predicted == 10  # counted by whichever worker answered, summed over both
        (processes,) = families["ibf_serve_processes"].samples
        assert processes.value == 3  # the server process and its two workers
        workers = {p.name.rsplit("_", 1)[-1] for p in (get_settings().home_dir / "serve" / str(port) / "metrics").glob("*.db")}
        assert len(workers) == 2, workers  # both workers answered requests
        (rss,) = families["process_resident_memory_bytes"].samples
        assert rss.value > 3 * 20e6  # three Python processes
        body = httpx.get(f"{url}/openapi.json", timeout=10).json()
        assert json.dumps(body)  # the workers serve the same app
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, proc.stderr.read().decode()[-2000:]
