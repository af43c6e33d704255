"""Fundamentals layer without a warehouse: parsing each Alpha Vantage body, the point-in-time dates, and the client
against the loopback simulator's new functions."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from ibf_core.fundamentals import pit
from ibf_core.fundamentals.alphavantage import parse_calendar, parse_earnings, parse_macro, parse_overview
from ibf_core.fundamentals.inputs import CALENDAR_COLUMNS, EARNINGS_COLUMNS, MACRO_COLUMNS
from ibf_core.news.alphavantage import (
    AlphaVantageClient,
    BadRequestError,
    MalformedResponseError,
    NotEntitledError,
    RateLimitedError,
)
from ibf_core.sim.alphavantage.server import AlphaVantageSimulator, parse_faults, synthetic_fundamentals
from ibf_core.sim.alphavantage.content import load_fundamentals_file

KEY = "SECRET-FUND-KEY-91b2"

OVERVIEW_IBM = {
    "Symbol": "IBM", "AssetType": "Common Stock", "Name": "International Business Machines", "Exchange": "NYSE",
    "Sector": "TECHNOLOGY", "Industry": "COMPUTER & OFFICE EQUIPMENT", "SharesOutstanding": "921860000",
    "AnalystTargetPrice": "253.5", "AnalystRatingStrongBuy": "2", "AnalystRatingBuy": "7", "AnalystRatingHold": "8",
    "AnalystRatingSell": "-", "AnalystRatingStrongSell": "None", "PERatio": "36.2",
}  # fmt: skip
EARNINGS_IBM = {
    "symbol": "IBM",
    "annualEarnings": [{"fiscalDateEnding": "2023-12-31", "reportedEPS": "9.61"}],
    "quarterlyEarnings": [
        {"fiscalDateEnding": "2024-03-31", "reportedDate": "2024-04-24", "reportedEPS": "1.68", "estimatedEPS": "1.6",
         "surprise": "0.08", "surprisePercentage": "5", "reportTime": "post-market"},
        {"fiscalDateEnding": "2023-12-31", "reportedDate": "2024-01-24", "reportedEPS": "3.87", "estimatedEPS": "None",
         "surprise": "None", "surprisePercentage": "None", "reportTime": "pre-market"},
        {"fiscalDateEnding": "2023-09-30", "reportedDate": "2023-10-2x", "reportedEPS": "2.2", "estimatedEPS": "2.13",
         "surprise": "0.07", "surprisePercentage": "3.28", "reportTime": "post-market"},
        {"fiscalDateEnding": "2023-06-30", "reportedDate": "2023-07-19", "reportedEPS": "2.18", "estimatedEPS": "2.01",
         "surprise": "0.17", "surprisePercentage": "8.45"},
    ],
}  # fmt: skip
CPI = {
    "name": "Consumer Price Index for all Urban Consumers", "interval": "monthly", "unit": "index 1982-1984=100",
    "data": [{"date": "2024-04-01", "value": "313.548"}, {"date": "2024-03-01", "value": "."},
             {"date": "2024-02-01", "value": "310.326"}],
}  # fmt: skip
DAY = pd.Timestamp("2024-05-01")


# ----- parsing ---------------------------------------------------------------------------------------------------
def test_overview_numbers_missing_values_and_empty_body():
    row, issues = parse_overview(OVERVIEW_IBM, "IBM")
    assert issues == []
    assert row["sector"] == "TECHNOLOGY" and row["industry"] == "COMPUTER & OFFICE EQUIPMENT" and row["exchange"] == "NYSE"
    assert row["shares_outstanding"] == 921860000.0 and row["analyst_target_price"] == 253.5 and row["analyst_buy"] == 7
    assert math.isnan(row["analyst_sell"]) and math.isnan(row["analyst_strong_sell"])  # "-" and "None"
    row, issues = parse_overview({**OVERVIEW_IBM, "SharesOutstanding": "lots"}, "IBM")
    assert math.isnan(row["shares_outstanding"]) and "SharesOutstanding 'lots' is not a number" in issues[0].reason
    row, issues = parse_overview({}, "SPY")
    assert row is None and issues[0].endpoint == "OVERVIEW" and "ETF" in issues[0].reason
    with pytest.raises(MalformedResponseError, match="'Symbol' is 'IBM'"):
        parse_overview(OVERVIEW_IBM, "AAPL")
    with pytest.raises(MalformedResponseError, match="not an object"):
        parse_overview([OVERVIEW_IBM], "IBM")


def test_earnings_none_is_nan_bad_date_is_skipped_and_recorded():
    frame, issues = parse_earnings(EARNINGS_IBM, "IBM")
    assert list(frame.columns) == list(EARNINGS_COLUMNS)
    assert frame["fiscal_date_ending"].dt.strftime("%Y-%m-%d").tolist() == ["2024-03-31", "2023-12-31", "2023-06-30"]
    assert [i.reason for i in issues] == ["quarterlyEarnings[2] reportedDate '2023-10-2x' is not a date: row skipped"]
    assert issues[0].date == pd.Timestamp("2023-09-30")
    q4 = frame.iloc[1]
    assert q4["reported_eps"] == 3.87 and math.isnan(q4["estimated_eps"]) and math.isnan(q4["surprise_pct"])
    # 2024-04-24 post-market (a Wednesday) -> Thursday; 2024-01-24 pre-market -> that session; no time -> next session
    assert frame["date"].dt.strftime("%Y-%m-%d").tolist() == ["2024-04-25", "2024-01-24", "2023-07-20"]
    assert frame["report_time"].tolist() == ["post-market", "pre-market", ""]
    empty, issues = parse_earnings({"symbol": "SPY", "annualEarnings": [], "quarterlyEarnings": []}, "SPY")
    assert empty.empty and "no quarterly earnings" in issues[0].reason
    with pytest.raises(MalformedResponseError, match="quarterlyEarnings"):
        parse_earnings({"symbol": "IBM", "annualEarnings": []}, "IBM")


def test_calendar_csv_rows_of_the_symbols_and_a_bad_row():
    text = ("symbol,name,reportDate,fiscalDateEnding,estimate,currency\r\n"
            "IBM,International Business Machines,2024-07-24,2024-06-30,2.16,USD\r\n"
            "AAPL,Apple Inc,2024-08-0?,2024-06-30,1.34,USD\r\n"
            "MSFT,Microsoft Corporation,2024-07-30,2024-06-30,,USD\r\n")  # fmt: skip
    frame, issues = parse_calendar(text, ["IBM", "AAPL"], DAY)
    assert list(frame.columns) == list(CALENDAR_COLUMNS) and frame["symbol"].tolist() == ["IBM"]
    assert frame["date"].iloc[0] == DAY and frame["report_date"].iloc[0] == pd.Timestamp("2024-07-24")
    assert issues[0].subject == "AAPL" and "reportDate '2024-08-0?' is not a date" in issues[0].reason
    frame, _ = parse_calendar(text, ["MSFT"], DAY)
    assert math.isnan(frame["estimate"].iloc[0])
    with pytest.raises(MalformedResponseError, match="lacks column"):
        parse_calendar("symbol,name\r\nIBM,x\r\n", ["IBM"], DAY)


def test_macro_missing_value_is_recorded_and_absent_never_filled():
    frame, unit, issues = parse_macro(CPI, "cpi")
    assert list(frame.columns) == list(MACRO_COLUMNS) and unit == "index 1982-1984=100"
    assert frame["period"].dt.strftime("%Y-%m").tolist() == ["2024-04", "2024-02"]  # March absent, not filled
    assert len(issues) == 1 and issues[0].date == pd.Timestamp("2024-03-01") and "left out, not filled" in issues[0].reason
    # April 2024 ends 04-30; + 17 days = 05-17 (a Friday); first session strictly after: Monday 05-20
    assert frame["date"].iloc[0] == pd.Timestamp("2024-05-20")
    with pytest.raises(MalformedResponseError, match="'data' is missing"):
        parse_macro({"name": "x"}, "cpi")


# ----- point in time -----------------------------------------------------------------------------------------------
def test_earnings_session_rule():
    dates = pit.earnings_dates(
        ["2024-05-02", "2024-05-02", "2024-05-02", "2024-05-04", "2024-05-27"],
        ["post-market", "pre-market", "", "pre-market", "pre-market"],
    )
    # after the close -> Fri; before the open -> Thu itself; unknown -> Fri; Saturday -> Mon; Memorial Day -> Tue
    assert [d.strftime("%Y-%m-%d") for d in dates] == ["2024-05-03", "2024-05-02", "2024-05-03", "2024-05-06", "2024-05-28"]


@pytest.mark.parametrize(
    "now, session",
    [
        ("2024-05-02 12:00", "2024-05-02"),  # 08:00 ET, before the open: today
        ("2024-05-02 19:59", "2024-05-02"),  # 15:59 ET
        ("2024-05-02 20:00", "2024-05-03"),  # the close: next session
        ("2024-05-04 15:00", "2024-05-06"),  # Saturday
        ("2024-11-29 18:30", "2024-12-02"),  # 13:30 ET after the early close of Black Friday
    ],
)
def test_recording_session(now, session):
    assert pit.recording_session(pd.Timestamp(now, tz="UTC")) == pd.Timestamp(session)


def test_macro_release_lags():
    assert pit.macro_dates("treasury_10y", ["2024-05-03"])[0] == pd.Timestamp("2024-05-06")  # Fri -> Mon
    assert pit.macro_dates("fed_funds", ["2024-05-01"])[0] == pd.Timestamp("2024-05-02")
    # December 2024 unemployment: released 2025-01-10; month end + 9 = 01-09 -> first session after: 01-10
    assert pit.macro_dates("unemployment", ["2024-12-01"])[0] == pd.Timestamp("2025-01-10")
    assert set(pit.RELEASE_LAG) == set(pit.INTERVAL) and pit.INTERVAL["unemployment"] == "monthly"


# ----- the client against the simulator ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sim():
    with AlphaVantageSimulator([], fundamentals=synthetic_fundamentals()) as server:
        yield server


@pytest.fixture(autouse=True)
def _reset_sim(request):
    if "sim" in request.fixturenames:
        server = request.getfixturevalue("sim")
        server.clear_faults()
        server.reset_quota()
    yield


def client_for(sim, **kw) -> AlphaVantageClient:
    return AlphaVantageClient(sim.url, KEY, **{"timeout": 2.0, "retries": 0, "backoff": 0.01, **kw})


def test_sim_serves_every_function_in_av_shapes(sim):
    with client_for(sim) as client:
        overview = client.get_json("OVERVIEW", symbol="IBM")
        assert overview["Symbol"] == "IBM" and overview["Industry"] == "COMPUTER & OFFICE EQUIPMENT"
        assert client.get_json("OVERVIEW", symbol="SPY") == {} and client.get_json("OVERVIEW", symbol="NOPE") == {}
        earnings = client.get_json("EARNINGS", symbol="MSFT")
        quarters = earnings["quarterlyEarnings"]
        assert quarters[0]["fiscalDateEnding"] > quarters[-1]["fiscalDateEnding"]  # newest first, like AV
        gaps = [(pd.Timestamp(q["reportedDate"]) - pd.Timestamp(q["fiscalDateEnding"])).days for q in quarters]
        assert all(25 <= g <= 42 for g in gaps) and {q["reportTime"] for q in quarters} <= {"pre-market", "post-market"}
        assert client.get_json("EARNINGS", symbol="QQQ") == {}  # not in the data
        text = client.get_csv("EARNINGS_CALENDAR", {"horizon": "3month"})
        assert text.splitlines()[0] == "symbol,name,reportDate,fiscalDateEnding,estimate,currency"
        assert client.get_csv("EARNINGS_CALENDAR", {"horizon": "3month"}, symbol="IBM").count("\n") == 2
        for function, params in (("TREASURY_YIELD", {"interval": "daily", "maturity": "2year"}),
                                 ("FEDERAL_FUNDS_RATE", {"interval": "daily"}), ("CPI", {"interval": "monthly"}),
                                 ("UNEMPLOYMENT", {})):  # fmt: skip
            body = client.get_json(function, params)
            assert set(body) == {"name", "interval", "unit", "data"} and body["data"][0]["date"] > body["data"][1]["date"]
    assert [r.params.get("apikey") for r in sim.request_log[-3:]] == ["***"] * 3


def test_sim_faults_for_the_new_functions(sim):
    client = client_for(sim)
    sim.set_faults(premium_functions="earnings,cpi", unknown_symbols="IBM", missing_months=2)
    with pytest.raises(NotEntitledError):
        client.get_json("EARNINGS", symbol="AAPL")
    with pytest.raises(NotEntitledError):
        client.get_json("CPI", {"interval": "monthly"})
    assert client.get_json("OVERVIEW", symbol="IBM") == {}
    values = [r["value"] for r in client.get_json("UNEMPLOYMENT")["data"]]
    assert values[1] == values[3] == "." and "." not in values[:1] + values[4:]
    assert "." not in {r["value"] for r in client.get_json("FEDERAL_FUNDS_RATE", {"interval": "daily"})["data"]}
    faults = parse_faults(["malformed_json=1", "premium_functions=OVERVIEW"])
    assert faults.premium_functions == frozenset({"OVERVIEW"})
    sim.set_faults(faults)
    with pytest.raises(MalformedResponseError):
        client.get_csv("EARNINGS_CALENDAR")
    sim.clear_faults()
    sim.set_faults(error_message=True)
    with pytest.raises(BadRequestError):
        client.get_json("OVERVIEW", symbol="AAPL")
    sim.clear_faults()
    sim.set_faults(rate_limit_after=0, rate_limit_key="Note")
    with pytest.raises(RateLimitedError) as info:
        client.get_csv("EARNINGS_CALENDAR")
    assert info.value.daily and KEY not in str(info.value)


def test_fundamentals_file_for_the_cli(tmp_path):
    path = tmp_path / "fundamentals.json"
    path.write_text(json.dumps({"overview": {"ibm": OVERVIEW_IBM}, "earnings": {"IBM": EARNINGS_IBM},
                                "macro": {"CPI": CPI}}))  # fmt: skip
    data = load_fundamentals_file(str(path))
    assert set(data["overview"]) == {"IBM"} and data["calendar"] == [] and data["macro"]["CPI"]["unit"]
    with AlphaVantageSimulator([], fundamentals=data) as server, client_for(server) as client:
        assert client.get_json("CPI", {"interval": "monthly"})["data"][1]["value"] == "."
        with pytest.raises(BadRequestError):
            client.get_json("UNEMPLOYMENT")  # not in the file
    path.write_text(json.dumps({"overview": [], "extra": {}}))
    with pytest.raises(Exception, match="unknown fundamentals part"):
        load_fundamentals_file(str(path))
