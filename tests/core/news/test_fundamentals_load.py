"""load_fundamentals / load_macro / read_inputs against the loopback Alpha Vantage simulator and a real warehouse:
point-in-time dates, snapshots per recording session, bad input recorded in fundamentals_issues, all-or-nothing
writes, idempotent re-runs, the quota stop and the API key kept out of everything stored."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pandas as pd
import pytest

from ibf_core.fundamentals.load import FUNDAMENTALS_TABLES, load_fundamentals, load_macro, read_inputs, read_issues
from ibf_core.fundamentals.store import EARNINGS, FUNDAMENTALS, read_table
from ibf_core.news.alphavantage import AlphaVantageClient, MalformedResponseError, ServiceUnavailableError
from ibf_core.sim.alphavantage.server import AlphaVantageSimulator, synthetic_fundamentals
from ibf_core.settings import load_settings
from ibf_core.storage.warehouse import Warehouse

KEY = "SECRET-FUND-KEY-5d0e"
DATA = synthetic_fundamentals(("AAPL", "IBM", "MSFT", "SPY"), "2023-01-02", "2024-04-30", seed=3)
SYMBOLS = ["AAPL", "IBM", "SPY", "ZZZZ"]  # SPY: an ETF ({} overview, empty earnings); ZZZZ: not covered
MON = pd.Timestamp("2024-05-06 14:00", tz="UTC")  # 10:00 ET, before the close: Monday's session
TUE_EVENING = pd.Timestamp("2024-05-07 21:30", tz="UTC")  # after the close: Wednesday's session


@pytest.fixture(scope="module")
def sim():
    with AlphaVantageSimulator([], fundamentals=DATA) as server:
        yield server


@pytest.fixture(autouse=True)
def _reset_sim(request):
    if "sim" in request.fixturenames:
        server = request.getfixturevalue("sim")
        server.clear_faults()
        server.reset_quota()
        server.set_fundamentals(DATA)
    yield


def settings_for(home: Path, sim=None, **kw):
    base = dict(home=home, fundamentals_source="alphavantage", alphavantage_requests_per_day=1000)
    if sim is not None:
        base["alphavantage_url"] = sim.url
    return load_settings(**{**base, **kw})


def client_for(sim, **kw) -> AlphaVantageClient:
    return AlphaVantageClient(sim.url, KEY, **{"timeout": 2.0, "retries": 0, "backoff": 0.01, **kw})


def load(home: Path, sim, now=MON, symbols=SYMBOLS, **kw):
    return load_fundamentals(settings_for(home, sim), Warehouse(home), symbols, now=now, client=client_for(sim, **kw))


def lake_files(home: Path) -> dict[str, bytes]:
    names = {spec.name for spec in FUNDAMENTALS_TABLES}
    lake = home / "lake"
    return {str(p.relative_to(lake)): p.read_bytes() for p in sorted(lake.rglob("*.parquet"))
            if p.parent.name in names and not p.name.startswith("_")}  # fmt: skip


def test_load_stores_point_in_time_rows_and_records_etf_and_unknown(sim, ibf_home):
    result = load(ibf_home, sim)
    assert result.complete and result.requests == 1 + 2 * len(SYMBOLS)
    assert result.rows == {"fundamentals": 2, "earnings": len(DATA["earnings"]["AAPL"]["quarterlyEarnings"])
                           + len(DATA["earnings"]["IBM"]["quarterlyEarnings"]), "earnings_calendar": 2,
                           "fundamentals_issues": 4}  # fmt: skip
    wh = Warehouse(ibf_home)
    inputs = read_inputs(wh, ["AAPL", "IBM", "SPY"])
    assert inputs.overview["symbol"].tolist() == ["AAPL", "IBM"]
    assert (inputs.overview["date"] == pd.Timestamp("2024-05-06")).all()
    assert inputs.overview.set_index("symbol").loc["IBM", "industry"] == "COMPUTER & OFFICE EQUIPMENT"
    earnings = inputs.earnings
    for row in earnings.itertuples():
        reported = row.reported_date
        if row.report_time == "pre-market" and reported.dayofweek < 5:
            assert row.date == reported
        else:
            assert row.date > reported and (row.date - reported).days <= 4
    assert {"pre-market", "post-market"} <= set(earnings["report_time"])
    for column in ("date", "fiscal_date_ending", "reported_date"):
        assert str(earnings[column].dtype) == "datetime64[ns]"
    assert inputs.calendar["report_date"].min() > pd.Timestamp("2024-04-30")
    issues = read_issues(wh)
    assert sorted(zip(issues["subject"], issues["endpoint"])) == [
        ("SPY", "EARNINGS"), ("SPY", "OVERVIEW"), ("ZZZZ", "EARNINGS"), ("ZZZZ", "OVERVIEW")]
    assert (issues["date"] == pd.Timestamp("2024-05-06")).all()
    assert sorted(result.issues) == sorted(zip(issues["subject"], issues["endpoint"], issues["reason"]))
    metadata = result.metadata()
    assert metadata["complete"] is True and metadata["issues"] == 4 and metadata["recording_session"] == "2024-05-06"


def test_after_close_report_lands_on_next_session_pre_market_on_its_own(sim, ibf_home):
    data = copy.deepcopy(DATA)
    quarters = data["earnings"]["IBM"]["quarterlyEarnings"]
    quarters[0].update(reportedDate="2024-04-24", reportTime="post-market")  # Wednesday after the close
    quarters[1].update(reportedDate="2024-01-24", reportTime="pre-market")  # Wednesday before the open
    sim.set_fundamentals(data)
    load(ibf_home, sim, symbols=["IBM"])
    rows = read_table(Warehouse(ibf_home), EARNINGS, ["IBM"]).set_index("reported_date")["date"]
    assert rows[pd.Timestamp("2024-04-24")] == pd.Timestamp("2024-04-25")
    assert rows[pd.Timestamp("2024-01-24")] == pd.Timestamp("2024-01-24")


def test_snapshots_per_recording_session_never_back_filled(sim, ibf_home):
    load(ibf_home, sim, symbols=["IBM"])
    data = copy.deepcopy(DATA)
    data["overview"]["IBM"]["AnalystTargetPrice"] = "999.5"
    sim.set_fundamentals(data)
    load(ibf_home, sim, now=MON + pd.Timedelta(hours=1), symbols=["IBM"])  # same session: replaces its row
    rows = read_table(Warehouse(ibf_home), FUNDAMENTALS, ["IBM"])
    assert rows["date"].tolist() == [pd.Timestamp("2024-05-06")] and rows["analyst_target_price"].tolist() == [999.5]
    data["overview"]["IBM"]["AnalystTargetPrice"] = "1001"
    sim.set_fundamentals(data)
    load(ibf_home, sim, now=TUE_EVENING, symbols=["IBM"])  # after Tuesday's close: Wednesday's row
    inputs = read_inputs(Warehouse(ibf_home), ["IBM"])
    assert inputs.overview["date"].dt.strftime("%Y-%m-%d").tolist() == ["2024-05-06", "2024-05-08"]
    assert inputs.overview["analyst_target_price"].tolist() == [999.5, 1001.0]
    assert inputs.overview["date"].min() >= pd.Timestamp("2024-05-06")  # never a row before the first recording
    calendar = inputs.calendar
    assert calendar["date"].dt.strftime("%Y-%m-%d").tolist() == ["2024-05-06", "2024-05-08"]


def test_premium_endpoint_is_recorded_and_skipped(sim, ibf_home):
    sim.set_faults(premium_functions="EARNINGS,EARNINGS_CALENDAR")
    result = load(ibf_home, sim, symbols=["AAPL", "IBM"])
    assert result.complete and result.rows["fundamentals"] == 2 and result.rows["earnings"] == 0
    issues = read_issues(Warehouse(ibf_home), ["EARNINGS", "EARNINGS_CALENDAR"])
    assert sorted(zip(issues["subject"], issues["endpoint"])) == [
        ("AAPL", "EARNINGS"), ("AAPL", "EARNINGS_CALENDAR"), ("IBM", "EARNINGS"), ("IBM", "EARNINGS_CALENDAR")]
    assert issues["reason"].str.contains("premium endpoint").all()


def test_macro_missing_month_is_recorded_and_absent(sim, ibf_home):
    sim.set_faults(missing_months=1)
    result = load_macro(settings_for(ibf_home, sim), Warehouse(ibf_home), now=MON, client=client_for(sim))
    assert result.complete and result.requests == 6
    macro = read_inputs(Warehouse(ibf_home), []).macro
    assert set(macro["indicator"]) == set(pit_lags())
    for indicator, function in (("cpi", "CPI"), ("unemployment", "UNEMPLOYMENT")):
        served = [pd.Timestamp(r["date"]) for r in DATA["macro"][function]["data"]]
        missing = served[1]  # the second newest (the simulator's missing_months rule)
        periods = set(macro.loc[macro["indicator"] == indicator, "period"])
        assert missing not in periods and served[0] in periods and served[2] in periods
    issues = read_issues(Warehouse(ibf_home), ["CPI"])
    assert issues["subject"].tolist() == ["cpi"] and "not filled" in issues["reason"].iloc[0]
    cpi = macro[macro["indicator"] == "cpi"]
    assert (cpi["date"] > cpi["period"] + pd.offsets.MonthEnd(0) + pd.Timedelta(days=17)).all()
    daily = macro[macro["indicator"] == "treasury_10y"]
    assert (daily["date"] > daily["period"]).all() and len(daily) == len(DATA["macro"]["TREASURY_YIELD:10year"]["data"])
    stored = Warehouse(ibf_home).query("SELECT DISTINCT indicator, unit, release_lag_days FROM macro_indicators ORDER BY 1")
    assert stored.set_index("indicator").loc["cpi", "release_lag_days"] == 17


def pit_lags():
    from ibf_core.fundamentals.pit import RELEASE_LAG

    return RELEASE_LAG


@pytest.mark.parametrize("fault", [{"faults_after": 2, "http_500": 1}, {"faults_after": 4, "malformed_json": 1}])
def test_failure_mid_load_leaves_every_table_as_it_was(sim, ibf_home, fault):
    load(ibf_home, sim)
    load_macro(settings_for(ibf_home, sim), Warehouse(ibf_home), now=MON, client=client_for(sim))
    before = lake_files(ibf_home)
    assert len(before) >= 10
    data = copy.deepcopy(DATA)
    data["overview"]["AAPL"]["AnalystTargetPrice"] = "1.0"
    data["earnings"]["AAPL"]["quarterlyEarnings"][0]["reportedEPS"] = "-9.99"
    sim.set_fundamentals(data)
    sim.set_faults(**fault)
    with pytest.raises(ServiceUnavailableError if "http_500" in fault else MalformedResponseError) as info:
        load(ibf_home, sim, now=TUE_EVENING)
    assert lake_files(ibf_home) == before and KEY not in str(info.value)
    sim.clear_faults()
    sim.set_faults(faults_after=3, http_500=1)
    with pytest.raises(ServiceUnavailableError):
        load_macro(settings_for(ibf_home, sim), Warehouse(ibf_home), now=TUE_EVENING, client=client_for(sim))
    assert lake_files(ibf_home) == before


def test_rerun_is_idempotent(sim, ibf_home):
    load(ibf_home, sim)
    load_macro(settings_for(ibf_home, sim), Warehouse(ibf_home), now=MON, client=client_for(sim))
    first = lake_files(ibf_home)
    load(ibf_home, sim)
    load_macro(settings_for(ibf_home, sim), Warehouse(ibf_home), now=MON, client=client_for(sim))
    assert lake_files(ibf_home) == first


def test_daily_rate_limit_keeps_what_is_complete_and_names_the_rest(sim, ibf_home):
    sim.set_faults(rate_limit_after=4)  # calendar, AAPL overview + earnings, IBM overview; then the quota
    result = load(ibf_home, sim)
    assert not result.complete
    assert result.remaining == (("IBM", "EARNINGS"), ("SPY", "OVERVIEW"), ("SPY", "EARNINGS"), ("ZZZZ", "OVERVIEW"),
                                ("ZZZZ", "EARNINGS"))  # fmt: skip
    assert "IBM EARNINGS" in result.note and "quota" in result.note
    inputs = read_inputs(Warehouse(ibf_home), ["AAPL", "IBM"])
    assert inputs.overview["symbol"].tolist() == ["AAPL", "IBM"] and set(inputs.earnings["symbol"]) == {"AAPL"}
    with pytest.raises(RuntimeError, match="IBM EARNINGS"):
        result.raise_if_incomplete()
    # our own daily budget stops the same way, before a request is sent
    settings = settings_for(ibf_home, sim, alphavantage_requests_per_day=2)
    sim.reset_quota()
    sim.clear_faults()
    sent = len(sim.request_log)
    result = load_fundamentals(settings, Warehouse(ibf_home), ["AAPL"], now=MON, client=client_for(sim))
    assert not result.complete and len(sim.request_log) == sent


def test_api_key_never_stored_or_shown(sim, ibf_home, monkeypatch):
    monkeypatch.setenv("ALPHAVANTAGE_API_KEY", KEY)
    sim.set_faults(premium_functions="EARNINGS", missing_months=2, rate_limit_after=8)
    settings = settings_for(ibf_home, sim)
    result = load_fundamentals(settings, Warehouse(ibf_home), SYMBOLS, now=MON)  # the client from the settings
    macro = load_macro(settings, Warehouse(ibf_home), now=MON)
    assert not macro.complete and KEY not in macro.note
    sim.reset_quota()
    sim.set_faults(error_message=True)
    with pytest.raises(Exception) as info:
        load_macro(settings, Warehouse(ibf_home), now=MON)
    for text in (str(result.metadata()), str(macro.metadata()), str(info.value), repr(info.value)):
        assert KEY not in text
    assert all(KEY.encode() not in blob for blob in lake_files(ibf_home).values())
    issues = read_issues(Warehouse(ibf_home))
    assert len(issues) > 0 and not issues["reason"].str.contains(KEY).any()


def test_sample_source_real_classification_and_no_invented_history(ibf_home):
    settings = load_settings(home=ibf_home, fundamentals_source="sample")
    wh = Warehouse(ibf_home)
    result = load_fundamentals(settings, wh, ["AAPL", "FB", "GOOG", "IBM", "MSFT", "TSLA"], now=MON)
    macro = load_macro(settings, wh, now=MON)
    inputs = read_inputs(wh, ["AAPL", "FB", "GOOG", "IBM", "MSFT"], "2010-01-04", "2013-03-01")
    overview = inputs.overview.set_index("symbol")
    assert overview.loc["AAPL", "industry"] == "ELECTRONIC COMPUTERS" and overview.loc["IBM", "exchange"] == "NYSE"
    assert overview.loc["MSFT", "industry"] == "SERVICES-PREPACKAGED SOFTWARE"
    assert overview.loc["FB", "industry"] == overview.loc["GOOG", "industry"] == "SERVICES-COMPUTER PROGRAMMING, DATA PROCESSING, ETC."
    assert (overview["sector"] == "TECHNOLOGY").all() and (overview["asset_type"] == "Common Stock").all()
    assert all(math.isnan(v) for v in overview["shares_outstanding"])
    assert inputs.earnings.empty and inputs.calendar.empty and inputs.macro.empty
    assert any(s == "TSLA" and "not in the embedded sample" in r for s, _, r in result.issues)
    assert {r for _, _, r in macro.issues} == {"the embedded sample has no macro history"}
    assert (read_table(wh, FUNDAMENTALS)["origin"] == "sample").all()
    nothing = load_fundamentals(load_settings(home=ibf_home, fundamentals_source="none"), wh, ["AAPL"], now=MON)
    assert nothing.rows == {} and "none" in nothing.note


def test_read_inputs_window_and_tables_in_the_catalog(sim, ibf_home):
    load(ibf_home, sim)
    wh = Warehouse(ibf_home)
    full = read_inputs(wh, ["AAPL"])
    part = read_inputs(wh, ["AAPL"], "2024-03-01", "2024-04-30", lookback_days=30)
    assert part.earnings["date"].between(pd.Timestamp("2024-01-31"), pd.Timestamp("2024-04-30")).all()
    assert len(part.earnings) < len(full.earnings) and part.calendar.empty  # recorded 2024-05-06, after end
    assert len(part.overview) == len(full.overview) == 1  # the classification is never cut by the window
    from ibf_core.catalog import catalog

    names = {t.name for t in catalog().tables}
    assert {"fundamentals", "earnings", "earnings_calendar", "macro_indicators", "fundamentals_issues"} <= names
    counts = wh.query("SELECT count(*) AS n FROM earnings WHERE symbol = 'AAPL'")
    assert int(counts["n"].iloc[0]) == len(full.earnings)
