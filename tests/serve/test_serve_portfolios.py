"""GET /portfolios and /portfolios/{name}, and the portfolio gauges of /metrics, on a real server over a warehouse
holding the default portfolio's stored backtest."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from ibf_core.settings import get_settings

SYMBOLS = ["AAA", "BBB", "CCC", "DDD"]
KEY = "portfolio-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
CONFIGURED = {"topk": {"strategy": "topk", "k": 0.1, "k_min": 2}, "later": {"strategy": "long_short", "k": 1}}


@pytest.fixture
def world(ibf_home, monkeypatch):
    monkeypatch.setenv("IBF_UNIVERSE", ",".join(SYMBOLS))
    monkeypatch.setenv("IBF_API_KEYS", hashlib.sha256(KEY.encode()).hexdigest())
    monkeypatch.setenv("IBF_API_RATE_LIMIT", "0")
    monkeypatch.setenv("IBF_API_METRICS_CACHE_SECONDS", "0")
    monkeypatch.setenv("IBF_PORTFOLIOS", json.dumps(CONFIGURED))  # "later" is configured, not materialized yet
    get_settings.cache_clear()
    from ibf_serve.testing import write_stored_world

    return write_stored_world(ibf_home, SYMBOLS, "2021-01-04", "2021-03-31")


def _stored(world):
    return world["store"].query("SELECT * FROM portfolio_returns WHERE portfolio = 'topk' ORDER BY date")


def test_list_names_strategy_latest_date_and_nav(api, world):
    assert api.get("/portfolios").status_code == 401
    body = api.get("/portfolios", headers=AUTH).json()
    stored = _stored(world)
    by_name = {p["name"]: p for p in body["portfolios"]}
    assert list(by_name) == ["later", "topk"]
    assert by_name["topk"]["latest_date"] == "2021-03-31" == str(stored["date"].iloc[-1].date())
    assert by_name["topk"]["nav"] == pytest.approx(stored["nav"].iloc[-1], rel=1e-12)
    assert by_name["topk"]["strategy"]["strategy"] == "topk" and by_name["topk"]["strategy"]["leverage"] == 1.0
    assert by_name["later"] == {"name": "later", "strategy": by_name["later"]["strategy"], "latest_date": None, "nav": None}
    assert by_name["later"]["strategy"]["strategy"] == "long_short"


def test_one_portfolio_nav_series_weights_and_metrics(api, world):
    body = api.get("/portfolios/topk", headers=AUTH).json()
    stored = _stored(world)
    nav = np.array([p["nav"] for p in body["series"]])
    assert len(body["series"]) == len(stored) and body["series"][0]["date"] == str(stored["date"].iloc[0].date())
    np.testing.assert_allclose(nav, stored["nav"], rtol=1e-12)
    peak = np.maximum(np.maximum.accumulate(nav), 1.0)
    np.testing.assert_allclose([p["drawdown"] for p in body["series"]], nav / peak - 1.0, atol=1e-12)
    weights = body["weights"]
    assert len(weights) == 2 and sum(w["weight"] for w in weights) == pytest.approx(stored["exposure"].iloc[-1], abs=1e-9)
    assert [w["weight"] for w in weights] == sorted((w["weight"] for w in weights), reverse=True)
    assert {w["symbol"] for w in weights} <= set(SYMBOLS) and all(w["reason"] in ("hold", "rebalance") for w in weights)
    metrics = body["metrics"]
    assert metrics["sessions"] == len(stored)
    assert metrics["total_return"] == pytest.approx(stored["nav"].iloc[-1] - 1.0, rel=1e-9)
    assert {"sharpe", "max_drawdown", "var_95", "es_99", "universe_excess_annual_return", "hit_rate"} <= set(metrics)
    assert metrics["benchmark_excess_annual_return"] is None  # SPY is not in this warehouse

    later = api.get("/portfolios/later", headers=AUTH).json()
    assert later["latest_date"] is None and later["series"] == [] and later["weights"] == []


def test_unknown_or_malformed_names_answer_in_the_error_shape(api):
    missing = api.get("/portfolios/nope", headers=AUTH)
    assert missing.status_code == 404
    assert missing.json() == {"error": {"code": "not_found", "message": "portfolio 'nope' is not configured (IBF_PORTFOLIOS: later, topk)"}}
    bad = api.get("/portfolios/Not%20A%20Name", headers=AUTH)
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_request"
    assert "name" in bad.json()["error"]["message"]


def test_metrics_carry_nav_drawdown_and_turnover_per_portfolio(api, world):
    from prometheus_client.parser import text_string_to_metric_families

    families = {f.name: f for f in text_string_to_metric_families(api.get("/metrics", headers=AUTH).text)}
    stored = _stored(world)
    nav = stored["nav"].to_numpy()
    expected = {
        "ibf_portfolio_nav": nav[-1],
        "ibf_portfolio_drawdown_ratio": nav[-1] / max(nav.max(), 1.0) - 1.0,
        "ibf_portfolio_turnover_ratio": stored["turnover"].iloc[-1],
    }
    for name, value in expected.items():
        samples = {s.labels["portfolio"]: s.value for s in families[name].samples}
        assert samples == {"topk": pytest.approx(value, rel=1e-9, abs=1e-12)}, name
