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
