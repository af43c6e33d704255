"""`fundamentals` and `macro_indicators` through Dagster (ibf backfill) against the loopback Alpha Vantage server,
flowing point in time into `features`; bad input is recorded, never a crash, and the key never leaks."""

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

from ibf_core.features.fundamental import category_code
from ibf_core.sim.alphavantage.server import AlphaVantageSimulator, synthetic_fundamentals
from ibf_core.storage.warehouse import Warehouse

IBF = str(Path(sys.executable).with_name("ibf"))
SECRET = "sk-test-FUNDAMENTALS-DO-NOT-LEAK"
ARGS = ("backfill", "--symbols", "AAPL,GOOG,IBM,MSFT", "--start", "2012-01-03", "--end", "2012-06-29")


def ibf(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([IBF, *args], capture_output=True, text=True, timeout=600, env={**os.environ, **(env or {})})


def test_fundamentals_and_macro_flow_into_features_point_in_time(ibf_home):
    data = synthetic_fundamentals(("AAPL", "GOOG", "IBM", "MSFT"), "2010-01-04", "2012-06-29")
    with AlphaVantageSimulator(fundamentals=data, faults={"unknown_symbols": "GOOG", "premium_functions": "UNEMPLOYMENT"}) as sim:
        env = {"IBF_FUNDAMENTALS_SOURCE": "alphavantage", "IBF_ALPHAVANTAGE_URL": sim.url, "ALPHAVANTAGE_API_KEY": SECRET,
               "IBF_ALPHAVANTAGE_REQUESTS_PER_DAY": "500"}
        proc = ibf(*ARGS, env=env)
        assert proc.returncode == 0, proc.stderr
    wh = Warehouse(ibf_home)
    earnings = wh.query("SELECT * FROM earnings ORDER BY symbol, fiscal_date_ending")
    assert set(earnings["symbol"]) == {"AAPL", "IBM", "MSFT"}
    issues = wh.query("SELECT subject, endpoint, reason FROM fundamentals_issues")
    assert {("GOOG", "OVERVIEW"), ("unemployment", "UNEMPLOYMENT")} <= set(zip(issues.subject, issues.endpoint))
    features = wh.query("SELECT * FROM features ORDER BY symbol, date")
    goog = features[features["symbol"] == "GOOG"]
    assert goog["sector_code"].isna().all() and goog["earn_surprise_pct"].isna().all()  # not covered: NULL
    assert features["macro_unemployment_chg_3m"].isna().all()  # premium endpoint: skipped, NULL
    assert features["macro_curve_10y_2y"].notna().mean() > 0.9
    # Each row sees the newest report usable by its session, never a later one.
    for row in features[features["symbol"] == "IBM"].dropna(subset=["earn_surprise_pct"]).itertuples():
        known = earnings[(earnings["symbol"] == "IBM") & (pd.to_datetime(earnings["date"]) <= row.date)]
        newest = known.sort_values(["date", "fiscal_date_ending"]).iloc[-1]
        assert row.earn_surprise_pct == min(max(newest["surprise_pct"], -100), 100)
    overview = wh.query("SELECT symbol, sector FROM fundamentals")
    aapl = features[features["symbol"] == "AAPL"]["sector_code"].iloc[0]
    assert aapl == category_code(overview.set_index("symbol").loc["AAPL", "sector"])
    stored = b"".join(p.read_bytes() for p in ibf_home.rglob("*") if p.is_file())
    assert SECRET.encode() not in stored and SECRET not in proc.stderr + proc.stdout


def test_the_embedded_sample_records_real_classifications_and_names_what_it_lacks(ibf_home):
    proc = ibf("backfill", "--assets", "fundamentals,macro_indicators", "--symbols", "AAPL,IBM", "--start", "2012-01-03", "--end", "2012-01-31")
    assert proc.returncode == 0, proc.stderr
    wh = Warehouse(ibf_home)
    overview = wh.query("SELECT symbol, sector, industry, origin FROM fundamentals ORDER BY symbol")
    assert overview.values.tolist() == [["AAPL", "TECHNOLOGY", "ELECTRONIC COMPUTERS", "sample"],
                                        ["IBM", "TECHNOLOGY", "COMPUTER & OFFICE EQUIPMENT", "sample"]]
    assert wh.query("SELECT count(*) AS n FROM earnings").n.iloc[0] == 0
    reasons = set(wh.query("SELECT reason FROM fundamentals_issues").reason)
    assert any("no earnings" in r for r in reasons) and any("no macro" in r for r in reasons)


def test_a_spent_quota_fails_the_run_with_what_remains_and_the_next_run_completes(ibf_home):
    data = synthetic_fundamentals(("AAPL", "IBM"), "2011-01-03", "2012-01-31")
    args = ("backfill", "--assets", "fundamentals", "--symbols", "AAPL,IBM", "--start", "2012-01-03", "--end", "2012-01-31")
    with AlphaVantageSimulator(fundamentals=data, faults={"rate_limit_after": 2}) as sim:
        env = {"IBF_FUNDAMENTALS_SOURCE": "alphavantage", "IBF_ALPHAVANTAGE_URL": sim.url, "ALPHAVANTAGE_API_KEY": SECRET,
               "IBF_ALPHAVANTAGE_REQUESTS_PER_DAY": "500"}
        first = ibf(*args, env=env)
        assert first.returncode != 0
        assert "error:" in first.stderr and "IBM" in first.stderr, first.stderr
        wh = Warehouse(ibf_home)
        assert set(wh.query("SELECT DISTINCT symbol FROM earnings").symbol) <= {"AAPL"}  # completed work is kept
        sim.clear_faults()
        sim.reset_quota()
        second = ibf(*args, env=env)
        assert second.returncode == 0, second.stderr
    assert set(Warehouse(ibf_home).query("SELECT DISTINCT symbol FROM earnings").symbol) == {"AAPL", "IBM"}
