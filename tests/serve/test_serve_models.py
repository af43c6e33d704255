"""The API over a really trained model: fresh predictions (the asset's code), /models, a new version served,
a tampered bundle (fresh 503, stored still 200) and the platform metrics from the Dagster instance."""

from __future__ import annotations

import hashlib
import time

import httpx
import pytest

from ibf_core.settings import get_settings

KEY = "models-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
ENV = {
    "IBF_UNIVERSE": "AAPL,GOOG,IBM,MSFT",
    "IBF_HISTORY_START": "2009-01-01",
    "IBF_DATE_PARTITIONS": "year",
    "IBF_MODEL_MEMBERS": "gbdt",
    "IBF_ACCELERATOR": "cpu",
    "IBF_API_KEYS": hashlib.sha256(KEY.encode()).hexdigest(),
    "IBF_API_RATE_LIMIT": "0",
    "IBF_API_METRICS_CACHE_SECONDS": "0",
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Sample bars and features 2009..2013-03-01, one GBDT model (cut-off 2012-12-31), stored 2013 predictions."""
    from ibf_dagster.runner import backfill, train

    home = tmp_path_factory.mktemp("served") / "ibf_home"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("IBF_HOME", str(home))
        mp.setenv("IBF_CONFIG", str(home / "none.toml"))
        for name, value in ENV.items():
            mp.setenv(name, value)
        get_settings.cache_clear()
        settings = get_settings()
        runs = backfill(settings, None, None, "2013-03-01", "*", "sample", None)
        assert all(r.success for r in runs), [r.error for r in runs]
        assert train(settings, "2012-12-31").success
        runs = backfill(settings, None, "2013-01-02", "2013-03-01", "predictions", "sample", None)
        assert runs[0].success, runs[0].error
        get_settings.cache_clear()
    return settings


@pytest.fixture
def api(trained, monkeypatch):
    from ibf_serve.app import create_app
    from ibf_serve.testing import running_server

    monkeypatch.setenv("IBF_HOME", str(trained.home))  # the instance helper exports DAGSTER_HOME from it
    with running_server(create_app(trained)) as url, httpx.Client(base_url=url, timeout=120) as client:
        yield client


@pytest.mark.slow
def test_fresh_equals_stored_and_models_are_described(api, trained):
    ready = api.get("/ready")
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"]["model"] == {"ok": True, "versions": 1, "newest": "1"}

    symbols = ["AAPL", "IBM"]
    stored = api.post("/predict", json={"symbols": symbols, "as_of": "2013-02-28"}, headers=AUTH).json()
    fresh = api.post("/predict", json={"symbols": symbols, "as_of": "2013-02-28", "fresh": True}, headers=AUTH).json()
    assert fresh["mode"] == "fresh" and fresh["as_of"] == "2013-02-28" and fresh["model_version"] == "1"
    assert len(fresh["predictions"]) == len(stored["predictions"]) == 12
    for a, b in zip(stored["predictions"], fresh["predictions"]):
        assert (a["symbol"], a["horizon"], a["rank"]) == (b["symbol"], b["horizon"], b["rank"])  # universe-wide ranks
        for key in ("pred_return", "pred_price", "lower_80", "upper_95", "price_lower_95"):
            assert b[key] == pytest.approx(a[key], rel=1e-9, abs=1e-12), key
    newest = api.post("/predict", json={"symbols": ["MSFT"], "horizons": [5], "fresh": True}, headers=AUTH).json()
    assert newest["as_of"] == "2013-03-01" and len(newest["predictions"]) == 1  # newest stored features

    models = api.get("/models", headers=AUTH).json()
    assert [v["version"] for v in models["versions"]] == ["1"] and models["versions"][0]["cutoff"] == "2012-12-31"
    one = api.get("/models/1", headers=AUTH).json()
    assert one["cutoff"] == "2012-12-31" and one["members"] == ["gbdt"] and one["device"].startswith("cpu")
    assert len(one["manifest_sha256"]) == 64 and one["mlflow_run"].endswith(one["run_id"])
    assert set(one["validation"]) == {"1", "3", "5", "10", "15", "20"}
    assert {"gbdt", "naive", "ensemble"} <= set(one["validation"]["5"])
    assert one["validation"]["5"]["gbdt"]["mae"] > 0 and set(one["ensemble"]) == set(one["validation"])
    importance = one["importance"]  # feature importance by group on the validation window
    assert set(importance["permutation"]) == {"gbdt", "ensemble"} and set(importance["permutation"]["gbdt"]) == set(one["validation"])
    assert {"technical", "returns", "calendar"} <= set(importance["permutation"]["gbdt"]["5"])
    assert sum(importance["gain"]["gbdt"]["5"].values()) == pytest.approx(1.0)

    from prometheus_client.parser import text_string_to_metric_families

    families = {f.name: f for f in text_string_to_metric_families(api.get("/metrics").text)}
    assert families["ibf_model_version"].samples[0].value == 1
    assert families["ibf_model_age_sessions"].samples[0].value > 0
    ages = {s.labels["asset"]: s.value for s in families["ibf_asset_seconds_since_materialization"].samples}
    assert {"market_bars", "features", "trained_models", "predictions"} <= set(ages) and all(a >= 0 for a in ages.values())
    rows = {s.labels["asset"]: s.value for s in families["ibf_asset_last_run_rows"].samples}
    assert rows["predictions"] > 0
    retrains = {s.labels["trigger"]: s.value for s in families["ibf_retrains"].samples if s.name.endswith("_total")}
    assert retrains == {"cli": 1.0}
    ingest = {(s.labels["source"], s.labels["status"]): s.value for s in families["ibf_ingestion_runs"].samples if s.name.endswith("_total")}
    assert ingest[("sample", "success")] >= 1
    fresh_count = [s.value for s in families["ibf_predictions"].samples if s.name.endswith("_total") and s.labels["mode"] == "fresh"]
    assert fresh_count == [13.0]


@pytest.mark.slow
def test_the_api_answers_during_a_concurrent_ibf_backfill(api, trained):
    """`ibf backfill` (its own process, a Dagster run) rewrites features and predictions while clients read."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, **ENV, "IBF_HOME": str(trained.home), "IBF_CONFIG": str(Path(trained.home) / "none.toml")}
    before = api.post("/predict", json={"symbols": ["AAPL"], "horizons": [5]}, headers=AUTH).json()
    proc = subprocess.Popen([str(Path(sys.executable).with_name("ibf")), "backfill", "--start", "2013-02-01", "--end", "2013-03-01",
                             "--assets", "features,predictions"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    statuses = []
    try:
        while proc.poll() is None:
            statuses.append(api.post("/predict", json={"symbols": ["AAPL", "MSFT"]}, headers=AUTH).status_code)
            statuses.append(api.get("/rankings", params={"horizon": 5, "top": 4}, headers=AUTH).status_code)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err[-2000:]
    assert len(statuses) >= 20 and set(statuses) == {200}, statuses
    after = api.post("/predict", json={"symbols": ["AAPL"], "horizons": [5]}, headers=AUTH).json()
    assert after == before  # the same model over the same features: the rewritten files hold the same forecasts


@pytest.mark.slow
@pytest.mark.slow
def test_after_a_features_write_the_first_fresh_call_reads_only_from_memory(trained):
    from ibf_core.features.table import features_spec
    from ibf_core.forecasts import fresh_forecasts
    from ibf_core.models import HORIZONS
    from ibf_core.storage.backends import open_warehouse
    from ibf_serve.services import Services

    services = Services(trained)
    universe = list(trained.universe)
    warmer = services.warmer
    warmer.interval_s = 0.05

    def fresh():
        return fresh_forecasts(services.fresh_reads, services.versions(), services.load_bundle, universe, universe, HORIZONS)

    def warmed(count: int) -> None:
        deadline = time.monotonic() + 60
        while warmer.warmups < count:
            assert time.monotonic() < deadline and warmer.last_error is None, warmer.last_error
            time.sleep(0.05)

    warmer.start()
    try:
        warmed(1)  # at start: the tables settled
        misses = services.fresh_reads.misses
        first = fresh()
        assert services.fresh_reads.misses == misses  # bars, features and the origin's keys came from memory
        spec = features_spec()
        writer = open_warehouse(trained)
        rows = writer.read(spec, ["IBM"], "2013-03-01", "2013-03-01")
        writer.replace_slice(spec, rows, ["IBM"], "2013-03-01", "2013-03-01")  # a daily cycle's features write
        warmed(2)
        misses = services.fresh_reads.misses
        again = fresh()
        assert services.fresh_reads.misses == misses
        assert again.frame.reset_index(drop=True).equals(first.frame.reset_index(drop=True))
    finally:
        warmer.stop()


def test_new_version_is_served_and_a_tampered_bundle_only_stops_fresh(api, trained):
    from ibf_dagster.runner import train

    assert api.post("/predict", json={"symbols": ["GOOG"], "fresh": True, "as_of": "2013-02-28"}, headers=AUTH).status_code == 200
    assert train(trained, "2013-01-31").success  # a run writes while the API serves
    deadline = time.monotonic() + 10
    while [v["version"] for v in api.get("/models", headers=AUTH).json()["versions"]] != ["1", "2"]:
        assert time.monotonic() < deadline, "version 2 not served"
        time.sleep(0.5)
    fresh = api.post("/predict", json={"symbols": ["GOOG"], "fresh": True, "as_of": "2013-02-28"}, headers=AUTH).json()
    assert fresh["model_version"] == "2"  # the newest version with a cut-off before the origin

    bundle = trained.model_cache_dir / trained.model_name / "2"
    victim = sorted(p for p in bundle.rglob("*.txt"))[0]  # a LightGBM model file
    victim.write_text(victim.read_text() + "\n# tampered\n")
    broken = api.post("/predict", json={"symbols": ["GOOG"], "fresh": True, "as_of": "2013-02-28"}, headers=AUTH)
    assert broken.status_code == 503, broken.text
    message = broken.json()["error"]["message"]
    assert "checksum mismatch" in message and str(trained.home_dir) not in message and "/" not in message.split("(")[0]
    stored = api.post("/predict", json={"symbols": ["GOOG"], "as_of": "2013-02-28"}, headers=AUTH)
    assert stored.status_code == 200 and stored.json()["model_version"] == "1"
    assert api.get("/rankings", params={"horizon": 1}, headers=AUTH).status_code == 200


@pytest.mark.slow
def test_retrain_submits_a_queued_gpu_tagged_run_that_the_daemon_executes(trained, monkeypatch):
    """POST /retrain through a real `dagster dev` (webserver + daemon) on the same instance."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    from helpers.paths import ROOT as root
    from ibf_serve.app import create_app
    from ibf_serve.testing import free_port, running_server

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("IBF_")}
    env.update(ENV, IBF_HOME=str(trained.home), IBF_CONFIG=str(trained.home / "none.toml"),
               DAGSTER_HOME=str(trained.dagster_home), PYTHONPATH=str(root))
    log = open(trained.home / "dagster-dev.log", "wb")
    proc = subprocess.Popen([str(Path(sys.executable).with_name("dagster")), "dev", "-h", "127.0.0.1", "-p", str(port),
                             "-w", str(root / "workspace.yaml")], cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    monkeypatch.setenv("IBF_HOME", str(trained.home))
    settings = trained.replace(dagster_url=f"http://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/server_info", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "dagster dev did not start"
            time.sleep(1)
        with running_server(create_app(settings)) as url, httpx.Client(base_url=url, timeout=120) as client:
            assert "not an NYSE session" in client.post("/retrain", json={"cutoff": "2013-02-23"}, headers=AUTH).json()["error"]["message"]
            answer = client.post("/retrain", json={"cutoff": "2013-02-28"}, headers=AUTH)
            assert answer.status_code == 202, answer.text
            run_id = answer.json()["run_id"]
            assert answer.json()["url"] == f"/runs/{run_id}"
            seen = []
            deadline = time.monotonic() + 300
            while True:
                run = client.get(f"/runs/{run_id}", headers=AUTH).json()
                seen.append(run["status"])
                if run["status"] in ("SUCCESS", "FAILURE", "CANCELED"):
                    break
                assert time.monotonic() < deadline, seen
                time.sleep(2)
            assert run["status"] == "SUCCESS", (run, (trained.home / "dagster-dev.log").read_text()[-3000:])
            assert run["assets"] == ["trained_models"] and run["partition"] == "2013-02-28"
            assert run["tags"]["ibf/accelerator"] == "gpu" and run["tags"]["ibf/launched_by"] == "ibf api"
            assert seen[0] in ("QUEUED", "NOT_STARTED", "STARTING", "STARTED")  # launched through the queue, not in-process
            record = get_instance_run(trained, run_id)
            assert "nvidia.com/gpu" in record.tags["dagster-k8s/config"]
            deadline = time.monotonic() + 10
            while "2013-02-28" not in [v["cutoff"] for v in client.get("/models", headers=AUTH).json()["versions"]]:
                assert time.monotonic() < deadline
                time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:  # dagster dev can ignore SIGTERM for a long time
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=20)
        log.close()


def get_instance_run(settings, run_id):
    from ibf_dagster.instance import get_instance

    return get_instance(settings).get_run_by_id(run_id)


def _ensure_prometheus() -> str:
    """The prometheus binary; installed from Debian (apt-get) where missing, as CI on a fresh machine needs."""
    import shutil
    import subprocess

    if shutil.which("prometheus") is None:
        if subprocess.run(["apt-get", "install", "-y", "-q", "prometheus"], capture_output=True).returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], capture_output=True, check=True)
            subprocess.run(["apt-get", "install", "-y", "-q", "prometheus"], capture_output=True, check=True)
    return shutil.which("prometheus")


@pytest.mark.slow
def test_real_prometheus_scrapes_the_api_and_every_dashboard_panel_returns_data(trained, monkeypatch, tmp_path):
    import datetime as dt
    import json
    import os
    import shutil
    import signal
    import subprocess
    import threading
    from pathlib import Path

    import yaml

    from helpers.paths import ROOT as root
    from ibf_core.monitoring.alerts import Alert, record_alerts
    from ibf_core.storage.warehouse import Warehouse
    from ibf_dagster.runner import backfill
    from ibf_serve.app import create_app
    from ibf_serve.testing import free_port, running_server

    prometheus = _ensure_prometheus()
    for args in (["check", "config", str(root / "deploy/prometheus/prometheus.yml")],
                 ["check", "rules", str(root / "deploy/prometheus/alerts.yml")],
                 ["test", "rules", str(root / "deploy/prometheus/alerts_test.yml")]):
        done = subprocess.run([str(Path(prometheus).with_name("promtool")), *args], capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr

    monkeypatch.setenv("IBF_HOME", str(trained.home))
    drift = backfill(trained, None, "2013-01-02", "2013-03-01", "drift_scores", "sample", None)
    assert drift[0].success, drift[0].error
    portfolios = backfill(trained, None, "2013-03-01", "2013-03-01", "portfolio_returns", "sample", None)  # their panels
    assert portfolios[0].success, portfolios[0].error
    record_alerts(Warehouse(trained.home_dir), [Alert("market_bars", "fresh", "2013|AAPL", "WARN", "stale bars", {}, "r", "e1",
                                                      raised_at=dt.datetime(2013, 3, 4, tzinfo=dt.timezone.utc))], None)

    dashboard = json.loads((root / "deploy/grafana/dashboards/ibf.json").read_text())
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len(panels) >= 20 and all(p["datasource"]["uid"] == "ibf-prometheus" for p in panels)
    gpu = shutil.which("nvidia-smi") is not None

    # Scrape-time figures cached for 30 s (the default is 10): on a loaded 2-core machine computing them takes
    # longer than a 2 s scrape timeout, and a cached scrape answers in milliseconds.
    with running_server(create_app(trained.replace(api_metrics_cache_seconds=30))) as url:
        config = yaml.safe_load((root / "deploy/prometheus/prometheus.yml").read_text())
        config["global"] = {"scrape_interval": "2s", "scrape_timeout": "2s", "evaluation_interval": "2s"}
        config["rule_files"] = [str(root / "deploy/prometheus/alerts.yml")]
        config["scrape_configs"][0]["static_configs"] = [{"targets": [url.removeprefix("http://")]}]
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        port = free_port()
        proc = subprocess.Popen([prometheus, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                 f"--web.listen-address=127.0.0.1:{port}"], stdout=subprocess.DEVNULL, stderr=open(tmp_path / "prom.log", "wb"),
                                start_new_session=True)
        stop = threading.Event()

        def traffic():
            with httpx.Client(base_url=url, timeout=60) as client:
                while not stop.is_set():
                    client.post("/predict", json={"symbols": ["AAPL", "MSFT"]}, headers=AUTH)
                    client.post("/predict", json={"symbols": ["IBM"], "horizons": [1], "fresh": True, "as_of": "2013-02-28"}, headers=AUTH)
                    client.get("/rankings", headers=AUTH)
                    client.get("/nowhere")
                    time.sleep(0.2)

        thread = threading.Thread(target=traffic)
        thread.start()
        prom = f"http://127.0.0.1:{port}/api/v1"
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    targets = httpx.get(f"{prom}/targets", timeout=2).json()["data"]["activeTargets"]
                    if targets and targets[0]["health"] == "up":
                        break
                except (httpx.HTTPError, KeyError, ValueError):
                    pass
                assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "prom.log").read_text()[-2000:]
                time.sleep(0.5)
            deadline = time.monotonic() + 90
            while not httpx.get(f"{prom}/query", params={"query": "ibf_rolling_mase"}, timeout=10).json()["data"]["result"]:
                assert time.monotonic() < deadline, "no scrape carried the platform figures"
                time.sleep(1)
            time.sleep(10)  # several more scrapes, so rate() and histogram_quantile() have points to work on
            empty = []
            for panel in panels:
                expr = panel["targets"][0]["expr"]
                answer = httpx.get(f"{prom}/query", params={"query": expr}, timeout=10).json()
                assert answer["status"] == "success", (panel["title"], answer)
                result = answer["data"]["result"]
                if panel["title"].startswith("GPU") and not gpu:
                    assert result == [], panel["title"]  # absent, not zero, without a GPU
                elif not result:
                    empty.append(panel["title"])
            if "Directional accuracy by horizon" in empty:
                # direction is undefined for a zero forecast: the panel is empty exactly when the ensemble served the
                # random walk (shrinkage 0) on every stored prediction, which a 4-symbol GBDT model's evidence gives
                served = Warehouse(trained.home_dir).query("SELECT count(*) AS n, count(*) FILTER (WHERE pred_return <> 0) AS moved FROM predictions")
                assert served["n"].iloc[0] > 0 and served["moved"].iloc[0] == 0, served
                empty.remove("Directional accuracy by horizon")
            assert empty == []
            rules = httpx.get(f"{prom}/rules", timeout=10).json()["data"]["groups"][0]["rules"]
            assert {r["name"] for r in rules} == {"IbfApiDown", "IbfApiErrorRate", "IbfModelStale", "IbfDataStale", "IbfDriftRetrainFired"}
            assert all(r["health"] == "ok" for r in rules), [(r["name"], r.get("lastError")) for r in rules]
            # The sample ends in 2013: the data-stale rule is pending (for: 1h), the API-down rule is not.
            states = {r["name"]: r["state"] for r in rules}
            assert states["IbfDataStale"] == "pending" and states["IbfApiDown"] == "inactive"
        finally:
            stop.set()
            thread.join()
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=20)
