"""The REST API on a real uvicorn server (loopback, free port) over a warehouse of stored predictions."""

from __future__ import annotations

import hashlib
import threading

import httpx
import numpy as np
import pandas as pd
import pytest

from ibf_core.settings import get_settings

SYMBOLS = ["AAA", "BBB", "CCC"]
KEY, OTHER = "test-key-one", "test-key-two"


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _auth(key: str = KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def world(ibf_home, monkeypatch):
    monkeypatch.setenv("IBF_UNIVERSE", ",".join(SYMBOLS))
    monkeypatch.setenv("IBF_API_KEYS", f"{_digest(KEY)},{_digest(OTHER)}")
    monkeypatch.setenv("IBF_API_RATE_LIMIT", "0")
    monkeypatch.setenv("IBF_API_MAX_SYMBOLS", "3")
    get_settings.cache_clear()
    from ibf_serve.testing import write_stored_world

    return write_stored_world(ibf_home, SYMBOLS, "2021-01-04", "2021-03-31")


def _error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    return body["error"]["message"]


def test_health_docs_and_ready_names_the_failing_part(api):
    assert api.get("/health").json() == {"status": "ok"}
    assert api.get("/docs").status_code == 200
    paths = api.get("/openapi.json").json()["paths"]
    for path in ("/predict", "/rankings", "/forecasts/{symbol}", "/models", "/models/{version}", "/retrain",
                 "/runs/{run_id}", "/drift", "/alerts", "/performance", "/metrics", "/health", "/ready"):
        assert path in paths, path
    ready = api.get("/ready")
    assert ready.status_code == 503
    body = ready.json()
    assert body["failing"] == ["model"] and body["checks"]["model"]["message"] == "no model registered"
    assert body["error"] == {"code": "not_ready", "message": "not ready: model: no model registered"}
    assert body["checks"]["warehouse"]["ok"] and body["checks"]["dagster"]["ok"]
    assert body["checks"]["bars"]["newest_bar_age_sessions"] > 0 and body["checks"]["bars"]["stale"]


def test_auth_401_403_and_open_endpoints(api):
    assert "Bearer" in _error(api.get("/models"), 401)
    assert "Bearer" in _error(api.get("/rankings", headers={"Authorization": "Basic abc"}), 401)
    assert _error(api.get("/models", headers=_auth("wrong-key")), 403) == "API key not accepted"
    assert api.get("/models", headers=_auth()).status_code == 200
    assert api.get("/models", headers=_auth(OTHER)).status_code == 200
    assert api.get("/health").status_code == 200 and api.get("/metrics").status_code == 200
    for method, path in (("POST", "/predict"), ("GET", "/drift"), ("GET", "/alerts"), ("GET", "/performance"),
                         ("GET", "/forecasts/AAA"), ("POST", "/retrain"), ("GET", "/models/1"), ("GET", "/runs/x")):
        assert api.request(method, path, json={}).status_code == 401, path


def test_metrics_need_a_key_when_not_public(world, monkeypatch):
    from ibf_serve.app import create_app
    from ibf_serve.testing import running_server

    monkeypatch.setenv("IBF_API_METRICS_PUBLIC", "false")
    get_settings.cache_clear()
    with running_server(create_app(get_settings())) as url:
        assert httpx.get(f"{url}/metrics", timeout=60).status_code == 401
        assert httpx.get(f"{url}/metrics", headers=_auth(), timeout=60).status_code == 200


def test_rate_limit_per_key_with_retry_after(world, monkeypatch):
    from ibf_serve.app import create_app
    from ibf_serve.testing import running_server

    monkeypatch.setenv("IBF_API_RATE_LIMIT", "3")
    get_settings.cache_clear()
    with running_server(create_app(get_settings())) as url, httpx.Client(base_url=url, timeout=60) as client:
        assert [client.get("/models", headers=_auth()).status_code for _ in range(3)] == [200, 200, 200]
        limited = client.get("/models", headers=_auth())
        assert "3 requests per minute" in _error(limited, 429)
        assert 1 <= int(limited.headers["Retry-After"]) <= 60
        assert client.get("/models", headers=_auth(OTHER)).status_code == 200  # per key
        assert client.get("/health").status_code == 200  # liveness is never limited


def test_predict_stored_newest_origin_and_as_of(api, world):
    body = api.post("/predict", json={"symbols": ["aaa", "CCC"], "horizons": [1, 5]}, headers=_auth()).json()
    assert body["as_of"] == "2021-03-31" and body["mode"] == "stored" and body["model_version"] == "1"
    rows = body["predictions"]
    assert len(rows) == 4 and {r["symbol"] for r in rows} == {"AAA", "CCC"} and {r["horizon"] for r in rows} == {1, 5}
    fields = ["symbol", "horizon", "origin", "target_date", "close", "pred_return", "pred_price", "lower_80", "upper_80",
              "lower_95", "upper_95", "price_lower_80", "price_upper_80", "price_lower_95", "price_upper_95", "rank", "model_version"]
    assert all(list(r) == fields for r in rows)
    stored = world["predictions"].set_index(["symbol", "date", "horizon"])
    for r in rows:
        expected = stored.loc[(r["symbol"], pd.Timestamp(r["origin"]), r["horizon"])]
        assert r["pred_return"] == pytest.approx(expected["pred_return"]) and r["rank"] == expected["rank"]  # universe rank
        assert r["lower_95"] <= r["lower_80"] <= r["pred_return"] <= r["upper_80"] <= r["upper_95"]
    assert rows[0]["target_date"] == "2021-04-01"  # origin + 1 session (Good Friday 2021-04-02 is no session)
    old = api.post("/predict", json={"symbols": ["BBB"], "horizons": [20], "as_of": "2021-02-01"}, headers=_auth()).json()
    assert old["as_of"] == "2021-02-01" and old["predictions"][0]["origin"] == "2021-02-01"
    assert "2021-02-06" in _error(api.post("/predict", json={"symbols": ["BBB"], "as_of": "2021-02-06"}, headers=_auth()), 404)


@pytest.mark.parametrize(
    "payload,needle",
    [
        ({"symbols": ["AAA", "BAD|SYM"]}, "'BAD|SYM' is not a valid symbol"),
        ({"symbols": [" AAA"]}, "' AAA' is not a valid symbol"),  # exactly the document's pattern: no stripping
        ({"symbols": ["ß"]}, "'ß' is not a valid symbol"),  # upper-cases to SS, but is not [A-Za-z0-9]
        ({"symbols": ["AAA"], "as_of": 0}, "body.as_of"),  # a date YYYY-MM-DD, never a Unix time
        ({"symbols": ["AAA"], "as_of": "20210104"}, "body.as_of"),
        ({"symbols": ["AAA"], "horizons": [7]}, "horizons: 7 is not a forecast horizon"),
        ({"symbols": ["AAA", "BBB", "CCC", "DDD"]}, "4 symbols asked, at most 3"),
        ({"symbols": []}, "body.symbols"),
        ({"symbols": "AAA"}, "body.symbols: Input should be a valid list"),
        ({"symbols": ["AAA"], "as_of": "yesterday"}, "body.as_of"),
        ({"symbols": ["AAA"], "colour": "red"}, "body.colour"),
    ],
)
def test_predict_rejects_bad_requests_naming_the_value(api, payload, needle):
    assert needle in _error(api.post("/predict", json=payload, headers=_auth()), 422)


def test_a_well_formed_unknown_symbol_is_not_found(api):
    """The document allows any symbol of the pattern: one that is not served is a 404 (declared), not a 422."""
    assert "unknown symbol(s) ZZZ" in _error(api.post("/predict", json={"symbols": ["ZZZ"]}, headers=_auth()), 404)


def test_fresh_without_a_model_is_503(api):
    assert "no model is registered" in _error(api.post("/predict", json={"symbols": ["AAA"], "fresh": True}, headers=_auth()), 503)


def test_rankings_and_forecast_history(api, world):
    body = api.get("/rankings", params={"horizon": 5, "top": 2}, headers=_auth()).json()
    assert body["as_of"] == "2021-03-31" and [r["rank"] for r in body["ranking"]] == [1, 2]
    p = world["predictions"]
    day = p[(p["date"] == "2021-03-31") & (p["horizon"] == 5)].sort_values("rank")
    assert [r["symbol"] for r in body["ranking"]] == list(day["symbol"][:2])
    assert api.get("/rankings", params={"horizon": 1, "as_of": "2021-02-01"}, headers=_auth()).json()["as_of"] == "2021-02-01"
    assert "not a forecast horizon" in _error(api.get("/rankings", params={"horizon": 2}, headers=_auth()), 422)
    assert "top" in _error(api.get("/rankings", params={"top": 0}, headers=_auth()), 422)

    history = api.get("/forecasts/BBB", params={"start": "2021-03-01", "end": "2021-03-31"}, headers=_auth()).json()
    rows = pd.DataFrame(history["forecasts"])
    assert set(rows["origin"]) == {d.date().isoformat() for d in world["days"] if d >= pd.Timestamp("2021-03-01")}
    matured = rows[rows["realized_price"].notna()]
    unmatured = rows[rows["realized_price"].isna()]
    assert (pd.to_datetime(matured["target_date"]) <= "2021-03-31").all()
    assert (pd.to_datetime(unmatured["target_date"]) > "2021-03-31").all() and len(unmatured) > 0
    bars = world["bars"].set_index(["symbol", "date"])["close"]
    for r in matured.head(5).to_dict("records"):
        assert r["realized_price"] == pytest.approx(bars.loc[("BBB", pd.Timestamp(r["target_date"]))])
    assert "unknown symbol" in _error(api.get("/forecasts/ZZZ", headers=_auth()), 404)
    empty = api.get("/forecasts/BBB", params={"start": "2021-03-05", "end": "2021-03-01"}, headers=_auth())
    assert empty.status_code == 200 and empty.json()["forecasts"] == []  # an empty window, not an error
    assert "start" in _error(api.get("/forecasts/BBB", params={"start": "0"}, headers=_auth()), 422)


def test_performance_drift_and_alerts(api, world):
    from ibf_core.monitoring.alerts import Alert, record_alerts
    from ibf_core.monitoring.outcomes import POOLED, rolling_performance

    perf = api.get("/performance", headers=_auth()).json()
    assert perf["window_sessions"] == 30 and [h["horizon"] for h in perf["horizons"]] == [1, 3, 5, 10, 15, 20]
    outcomes = world["store"].query("SELECT * FROM forecast_outcomes")
    expected = rolling_performance(outcomes, pd.Timestamp(perf["as_of"]), 30, 5)
    expected = expected[expected["symbol"] == POOLED].iloc[0]
    got = perf["horizons"][2]
    for key in ("n", "mase", "da", "rank_ic", "coverage_80", "coverage_95"):
        assert got[key] == pytest.approx(expected[key]), key

    drift = api.get("/drift", headers=_auth()).json()
    assert drift["as_of"] == "2021-03-31" and drift["breached"] == {"AAA": ["ks"]} and drift["retrain"] is False

    assert api.get("/alerts", headers=_auth()).json() == {"alerts": []}
    import datetime as dt

    alerts = [Alert("market_bars", "fresh", "2021-03|AAA", "WARN", "stale", {}, "run-1", f"e{i}",
                    raised_at=dt.datetime(2021, 3, 1 + i, tzinfo=dt.timezone.utc)) for i in range(3)]
    record_alerts(world["store"], alerts, None)
    listed = api.get("/alerts", headers=_auth()).json()["alerts"]
    assert [a["raised_at"][:10] for a in listed] == ["2021-03-03", "2021-03-02", "2021-03-01"]
    since = api.get("/alerts", params={"since": "2021-03-02T00:00:00Z"}, headers=_auth()).json()["alerts"]
    assert len(since) == 2 and since[0]["check_name"] == "fresh"
    assert "since" in _error(api.get("/alerts", params={"since": "soon"}, headers=_auth()), 422)
    assert "since" in _error(api.get("/alerts", params={"since": "0.5"}, headers=_auth()), 422)  # not a Unix time
    assert "since" in _error(api.get("/alerts", params={"since": "2021-03-02T00:00:00"}, headers=_auth()), 422)  # no offset
    assert len(api.get("/alerts", params={"since": "2021-03-02"}, headers=_auth()).json()["alerts"]) == 2  # midnight UTC


def test_unknown_routes_versions_and_runs_are_404_in_the_error_shape(api):
    assert _error(api.get("/nowhere"), 404) == "Not Found"
    assert _error(api.delete("/health"), 405)
    assert "not registered" in _error(api.get("/models/99", headers=_auth()), 404)
    assert "not found" in _error(api.get("/runs/not-a-run", headers=_auth()), 404)
    assert "not found" in _error(api.get("/runs/00000000-0000-0000-0000-000000000000", headers=_auth()), 404)


def test_retrain_refuses_bad_cutoffs_and_needs_the_webserver(api):
    assert "2021-03-06 is not an NYSE session" in _error(api.post("/retrain", json={"cutoff": "2021-03-06"}, headers=_auth()), 404)
    assert "2021-03-05 has no stored features" in _error(api.post("/retrain", json={"cutoff": "2021-03-05"}, headers=_auth()), 404)


def test_error_bodies_never_show_tracebacks_paths_or_secrets(api, world, monkeypatch):
    import ibf_core.forecasts as forecasts

    secret_path = str(world["store"].home)

    def explode(*args, **kwargs):
        raise RuntimeError(f"Traceback (most recent call last): {secret_path}/lake/x.parquet {KEY}")

    monkeypatch.setattr(forecasts, "ranking", explode)
    monkeypatch.setattr(forecasts, "stored_forecasts", explode)
    from ibf_serve.stored import StoredIndex

    monkeypatch.setattr(StoredIndex, "top", explode)  # the in-memory path of the newest origin
    monkeypatch.setattr(StoredIndex, "select", explode)
    for response in (api.get("/rankings", headers=_auth()), api.post("/predict", json={"symbols": ["AAA"]}, headers=_auth())):
        assert _error(response, 500) == "internal error"
    for response in (api.get("/models", headers=_auth("x" * 30)), api.get("/ready"), api.post("/predict", json={"symbols": [KEY]}, headers=_auth())):
        text = response.text
        assert "Traceback" not in text and secret_path not in text and "/tmp" not in text and KEY not in text
        assert _digest(KEY) not in text


def test_metrics_exposition_has_bounded_labels(api, world):
    from prometheus_client.parser import text_string_to_metric_families

    api.post("/predict", json={"symbols": ["AAA"]}, headers=_auth())
    api.get("/forecasts/AAA", headers=_auth())
    api.get("/nowhere/at/all")
    text = api.get("/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    routes = {s.labels["route"] for s in families["ibf_http_requests"].samples}
    assert {"/predict", "/forecasts/{symbol}", "<unmatched>"} <= routes and "/forecasts/AAA" not in routes
    assert all(s.name.endswith("_total") or s.name.endswith("_created") for s in families["ibf_http_requests"].samples)
    stored = [s for s in families["ibf_predictions"].samples if s.name == "ibf_predictions_total" and s.labels["mode"] == "stored"]
    assert stored[0].value == 6
    assert "ibf_prediction_duration_seconds_bucket" in text and "process_resident_memory_bytes" in text
    mase = {s.labels["horizon"]: s.value for s in families["ibf_rolling_mase"].samples}
    assert set(mase) == {"1", "3", "5", "10", "15", "20"} and all(np.isfinite(list(mase.values())))
    cov = {(s.labels["horizon"], s.labels["level"]) for s in families["ibf_rolling_coverage_ratio"].samples}
    assert ("5", "80") in cov and ("20", "95") in cov
    assert {s.labels["detector"]: s.value for s in families["ibf_drift_breaches"].samples} == {"ks": 1.0, "perf_mase": 0.0}
    assert families["ibf_data_newest_bar_age_sessions"].samples[0].value > 0
    assert "ibf_model_version" not in families  # no model registered: absent, not zero
    for family in families.values():
        for sample in family.samples:
            assert not set(sample.labels.values()) & set(SYMBOLS), (family.name, sample.labels)
    import shutil

    if shutil.which("nvidia-smi") is None:
        assert "ibf_gpu_" not in text


def test_reads_keep_answering_while_predictions_are_rewritten(api, world):
    """A writer swapping every symbol's predictions file in a loop never makes a read fail."""
    from ibf_core.storage.tables import PREDICTIONS

    store, frame, stop = world["store"], world["predictions"], threading.Event()
    march = frame[frame["date"] >= "2021-03-01"]
    writes = []

    def writer():
        while not stop.is_set():
            store.replace_slice(PREDICTIONS, march, SYMBOLS, "2021-03-01", "2021-03-31")
            writes.append(1)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        statuses = []
        for i in range(60):
            if i % 2:
                statuses.append(api.post("/predict", json={"symbols": SYMBOLS}, headers=_auth()).status_code)
            else:
                statuses.append(api.get("/rankings", params={"horizon": 1}, headers=_auth()).status_code)
    finally:
        stop.set()
        thread.join()
    assert len(writes) >= 3 and statuses == [200] * 60


def test_api_keys_file_and_cli_key(ibf_home, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from ibf_dagster.cli import app
    from ibf_serve.auth import load_digests

    result = CliRunner().invoke(app, ["api-key", "new"])
    assert result.exit_code == 0
    key = next(line.split()[1] for line in result.stdout.splitlines() if line.startswith("key:"))
    digest = next(line.split()[1] for line in result.stdout.splitlines() if line.startswith("digest:"))
    assert hashlib.sha256(key.encode()).hexdigest() == digest and len(key) > 40
    keys_file = tmp_path / "keys.txt"
    keys_file.write_text(f"# ops\n{digest}\n")
    assert load_digests([], keys_file) == [digest]
    keys_file.write_text("nothex\n")
    with pytest.raises(ValueError, match="line 1"):
        load_digests([], keys_file)
    monkeypatch.setenv("IBF_API_KEYS", "abc")
    from ibf_core.settings import SettingsError, load_settings

    with pytest.raises(SettingsError, match="IBF_API_KEYS"):
        load_settings()


def test_cors_is_off_unless_configured(world, monkeypatch):
    from ibf_serve.app import create_app
    from ibf_serve.testing import running_server

    preflight = {"Origin": "http://dash.example", "Access-Control-Request-Method": "GET"}
    with running_server(create_app(get_settings())) as url:
        assert "access-control-allow-origin" not in httpx.get(f"{url}/health", headers={"Origin": "http://dash.example"}).headers
        assert "access-control-allow-origin" not in httpx.options(f"{url}/models", headers=preflight).headers
    monkeypatch.setenv("IBF_API_CORS_ORIGINS", "http://dash.example")
    get_settings.cache_clear()
    with running_server(create_app(get_settings())) as url:
        answer = httpx.options(f"{url}/models", headers=preflight)
        assert answer.status_code == 200 and answer.headers["access-control-allow-origin"] == "http://dash.example"
        other = httpx.options(f"{url}/models", headers={**preflight, "Origin": "http://evil.example"})
        assert "access-control-allow-origin" not in other.headers


def test_a_webserver_that_is_not_running_is_named_unreachable_not_a_refused_run():
    """The real dagster-graphql client against a closed loopback port: it wraps the refused connection in
    DagsterGraphQLClientError, which the API used to report as 'the Dagster webserver refused the run'."""
    from dagster_graphql import DagsterGraphQLClient, DagsterGraphQLClientError

    from ibf_serve.retrain import unreachable
    from ibf_serve.testing import free_port

    client = DagsterGraphQLClient("127.0.0.1", port_number=free_port(), timeout=5)
    with pytest.raises(DagsterGraphQLClientError) as refused:
        client.submit_job_execution("__ASSET_JOB", asset_selection=["trained_models"])
    assert unreachable(refused.value)
    assert not unreachable(DagsterGraphQLClientError("PipelineNotFoundError", "no such job"))


def test_predict_on_live_prices_names_the_basis_of_every_row(api, world, ibf_home):
    """live_price: rows keep the stored returns; pred_price = basis x exp(r) with the basis named and dated."""
    from ibf_core.calendar import market_is_open
    from ibf_core.sim.intraday import DailyBar, five_second_bars, quotes
    from ibf_core.storage.warehouse import Warehouse
    from ibf_core.streaming.store import append_rows
    from ibf_core.streaming.tables import QUOTES

    now = pd.Timestamp.now(tz="UTC")
    day = now.tz_convert("America/New_York").date()
    book = quotes(DailyBar("AAA", day, 10, 11, 9, 10.5, 1e6), five_second_bars(DailyBar("AAA", day, 10, 11, 9, 10.5, 1e6))).head(1)
    book = book.assign(time=now - pd.Timedelta(seconds=3), symbol="AAA", date=pd.Timestamp(day), volume=1e4, delayed=False,
                       received_at=now)
    append_rows(Warehouse(ibf_home), QUOTES, book)
    body = api.post("/predict", json={"symbols": ["AAA", "BBB"], "horizons": [5], "live_price": True}, headers=_auth()).json()
    rows = {r["symbol"]: r for r in body["predictions"]}
    stored = api.post("/predict", json={"symbols": ["AAA", "BBB"], "horizons": [5]}, headers=_auth()).json()
    for r in stored["predictions"]:
        assert rows[r["symbol"]]["pred_return"] == r["pred_return"] and "price_basis" not in r
    for r in rows.values():
        assert r["pred_price"] == pytest.approx(r["basis_price"] * np.exp(r["pred_return"]))
        assert r["price_lower_95"] == pytest.approx(r["basis_price"] * np.exp(r["lower_95"]))
    assert rows["BBB"]["price_basis"] == "close" and rows["BBB"]["basis_price"] == rows["BBB"]["close"]
    if market_is_open():
        assert rows["AAA"]["price_basis"] == "live" and rows["AAA"]["basis_price"] == pytest.approx(book["last"].iloc[0])
        assert 0 <= rows["AAA"]["basis_age_seconds"] < 60 and rows["AAA"]["basis_source"] == "last trade (quotes)"
    else:
        assert rows["AAA"]["price_basis"] == "close" and rows["AAA"]["basis_note"] == "market closed: origin close"
