"""`news_sentiment` and `features` through Dagster: the CLI, the loopback Alpha Vantage server, the warehouse."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from ibf_core.sim.alphavantage.server import AlphaVantageSimulator, synthetic_feed
from ibf_core.storage.warehouse import Warehouse

IBF = str(Path(sys.executable).with_name("ibf"))
SECRET = "sk-test-DO-NOT-LEAK-42"


def ibf(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([IBF, *args], capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})})


def test_single_month_partition_equals_the_full_range_run(ibf_home):
    proc = ibf("backfill", "--symbols", "AAPL,GOOG,IBM,MSFT", "--start", "2010-01-04", "--end", "2012-12-31")
    assert proc.returncode == 0, proc.stderr
    wh = Warehouse(ibf_home)
    full = wh.query("SELECT * FROM features WHERE date BETWEEN '2012-06-01' AND '2012-06-30' ORDER BY symbol, date")
    proc = ibf("backfill", "--assets", "features", "--symbols", "AAPL,GOOG,IBM,MSFT", "--start", "2012-06-01", "--end", "2012-06-30")
    assert proc.returncode == 0, proc.stderr
    again = wh.query("SELECT * FROM features WHERE date BETWEEN '2012-06-01' AND '2012-06-30' ORDER BY symbol, date")
    assert len(full) == 4 * 21 and not full["warmup"].any()
    numeric = [c for c in full.columns if c not in ("symbol", "date", "warmup")]
    assert np.allclose(full[numeric].to_numpy(float), again[numeric].to_numpy(float), equal_nan=True, rtol=0, atol=1e-9)
    assert np.isfinite(full["rsi_14"]).all() and full["news_count"].isna().all()  # IBF_NEWS_SOURCE=none


def test_features_refuse_missing_upstream_bars(ibf_home):
    proc = ibf("backfill", "--assets", "features", "--symbols", "IBM", "--start", "2012-01-03", "--end", "2012-01-31")
    assert proc.returncode != 0
    assert "market_bars is not materialized for partition(s) 2012-01|IBM" in proc.stderr
    assert Warehouse(ibf_home).query("SELECT count(*) AS n FROM features").n.iloc[0] == 0


def test_alpha_vantage_news_flows_into_features_without_leaking_the_key(ibf_home):
    feed = synthetic_feed(("AAPL", "IBM"), "2012-01-03", "2012-02-28", per_day=2.0)
    with AlphaVantageSimulator(feed) as sim:
        env = {"IBF_NEWS_SOURCE": "alphavantage", "IBF_ALPHAVANTAGE_URL": sim.url, "ALPHAVANTAGE_API_KEY": SECRET}
        proc = ibf("backfill", "--symbols", "AAPL,GOOG,IBM,MSFT", "--start", "2012-01-03", "--end", "2012-02-29", env=env)
        assert proc.returncode == 0, proc.stderr
        assert sim.request_log
    wh = Warehouse(ibf_home)
    news = wh.query("SELECT symbol, sum(news_count) AS n, count(*) AS days FROM news_sentiment GROUP BY 1 ORDER BY 1")
    counts = dict(zip(news.symbol, news.n))
    assert counts["AAPL"] > 0 and counts["IBM"] > 0 and counts["GOOG"] == 0  # zero articles is data
    assert set(news.days) == {len(pd.bdate_range("2012-01-03", "2012-02-29")) - 2}  # MLK day, Presidents' day
    joined = wh.query("SELECT count(*) AS n FROM features WHERE symbol = 'AAPL' AND news_count > 0").n.iloc[0]
    assert joined > 0
    stored = b"".join(p.read_bytes() for p in ibf_home.rglob("*") if p.is_file())
    assert SECRET.encode() not in stored and SECRET not in proc.stderr


def test_exhausted_quota_stops_cleanly_and_resumes(ibf_home, tmp_path):
    feed = synthetic_feed(("AAPL", "IBM"), "2012-01-03", "2012-01-31", per_day=2.0)
    with AlphaVantageSimulator(feed, {"rate_limit_after": 1}) as sim:
        env = {"IBF_NEWS_SOURCE": "alphavantage", "IBF_ALPHAVANTAGE_URL": sim.url, "ALPHAVANTAGE_API_KEY": SECRET}
        args = ("backfill", "--assets", "news_sentiment", "--symbols", "AAPL,GOOG,IBM,MSFT", "--start", "2012-01-03", "--end", "2012-01-31")
        first = ibf(*args, env=env)
        assert first.returncode != 0 and "error:" in first.stderr
        assert Warehouse(ibf_home).query("SELECT count(*) AS n FROM news_sentiment").n.iloc[0] == 0
        sim.clear_faults()
        sim.reset_quota()
        second = ibf(*args, env=env)
        assert second.returncode == 0, second.stderr
        sim.reset_quota()
        unlimited_home = tmp_path / "unlimited"
        single = ibf(*args, env={**env, "IBF_HOME": str(unlimited_home)})
        assert single.returncode == 0, single.stderr
    sql = "SELECT * FROM news_sentiment ORDER BY symbol, date"
    resumed, reference = Warehouse(ibf_home).query(sql), Warehouse(unlimited_home).query(sql)
    pd.testing.assert_frame_equal(resumed, reference)
    assert resumed.news_count.sum() > 100
