"""The live side in Dagster and in forecasts: stream checks, microstructure_daily, live features, live prices."""

from __future__ import annotations

import datetime as dt
import io

import numpy as np
import pandas as pd
import pytest

from ibf_core.sim.intraday import DailyBar, five_second_bars, quotes
from ibf_core.settings import get_settings

DAY = dt.date(2012, 12, 11)  # a Tuesday session inside the embedded sample (2000-03 .. 2013-03)
OPEN_NOW = pd.Timestamp("2012-12-11 15:00", tz="UTC")  # 10:00 New York
CLOSED_NOW = pd.Timestamp("2012-12-11 22:00", tz="UTC")  # 17:00 New York


def live_rows(symbol: str, day: dt.date = DAY, bars: int | None = None, close: float = 100.0):
    """(intraday_bars rows, quotes rows) of the simulator's deterministic session, the first ``bars`` 5-second bars."""
    daily = DailyBar(symbol, day, close * 0.99, close * 1.02, close * 0.98, close, 2_000_000.0)
    trades = five_second_bars(daily)
    book = quotes(daily, trades)
    if bars is not None:
        trades, book = trades.head(bars), book.head(bars)
    now = pd.Timestamp.now(tz="UTC")
    bar_rows = trades.assign(symbol=symbol, date=pd.Timestamp(day), what="TRADES", received_at=now)
    quote_rows = book.assign(symbol=symbol, date=pd.Timestamp(day), volume=trades["volume"].cumsum().to_numpy(),
                             delayed=False, received_at=now)
    return bar_rows, quote_rows


def store_live(store, symbol: str, **kwargs) -> tuple[pd.DataFrame, pd.DataFrame]:
    from ibf_core.streaming.store import append_rows
    from ibf_core.streaming.tables import INTRADAY_BARS, QUOTES

    bars, book = live_rows(symbol, **kwargs)
    append_rows(store, INTRADAY_BARS, bars)
    append_rows(store, QUOTES, book)
    return bars, book


# ----- stream checks --------------------------------------------------------------------------------------------
def test_gap_lag_and_crossed_quote_checks_name_what_is_wrong():
    from ibf_core.streaming.monitor import check_bar_gaps, check_crossed_quotes, check_stream_lag

    bars, book = live_rows("AAA", bars=120)
    assert check_bar_gaps(bars).passed
    holed = bars.drop(index=range(50, 53))
    gaps = check_bar_gaps(holed)
    assert not gaps.passed and gaps.details["gaps"]["AAA TRADES"]["missing"] == 3
    assert gaps.details["gaps"]["AAA TRADES"]["first_missing"] == bars["time"].iloc[50].isoformat()
    # during the session the stretch runs to "now" (less one bar in delivery): a stream that stopped shows as
    # missing bars: 5 minutes after the last bar started, the 58 bars that started 5..290 s after it
    assert check_bar_gaps(bars, bars["time"].iloc[-1] + pd.Timedelta(minutes=5)).details["gaps"]["AAA TRADES"]["missing"] == 58

    last_end = bars["time"].iloc[-1] + pd.Timedelta(seconds=5)
    assert check_stream_lag(bars, last_end + pd.Timedelta(seconds=30), 60).passed
    late = check_stream_lag(bars, last_end + pd.Timedelta(seconds=90), 60)
    assert not late.passed and late.details["late_symbols"] == {"AAA": 90.0}
    assert check_stream_lag(bars, CLOSED_NOW, 60).passed and "market closed" in check_stream_lag(bars, CLOSED_NOW, 60).summary
    assert not check_stream_lag(bars.head(0), OPEN_NOW, 60).passed

    assert check_crossed_quotes(book).passed
    crossed = book.copy()
    crossed.loc[7, "bid"] = crossed.loc[7, "ask"] + 0.01
    result = check_crossed_quotes(crossed)
    assert not result.passed and result.details["symbols"] == ["AAA"] and "1 of 120" in result.summary


# ----- features with and without live data ---------------------------------------------------------------------
def test_live_features_are_joined_per_session_and_null_without_live_data():
    from helpers.bars import make_bars

    from ibf_core.features.live import COLUMNS, MIN_COVERAGE
    from ibf_core.features.pipeline import compute_features
    from ibf_core.streaming.microstructure import microstructure_daily

    bars = make_bars(("AAA", "BBB"), "2012-06-01", "2012-12-31")
    full_bars, full_book = live_rows("AAA")
    part_bars, part_book = live_rows("BBB", bars=int(4680 * MIN_COVERAGE) - 10)
    daily = microstructure_daily(pd.concat([full_bars, part_bars]), pd.concat([full_book, part_book]))
    without = compute_features(bars)
    with_live = compute_features(bars, microstructure_daily=daily)
    # every other column is unchanged; without live data the live columns are all NULL
    others = [c for c in without.columns if c not in COLUMNS]
    pd.testing.assert_frame_equal(with_live[others], without[others])
    assert without[COLUMNS].isna().all().all()
    row = with_live[(with_live["symbol"] == "AAA") & (with_live["date"] == pd.Timestamp(DAY))].iloc[0]
    measured = daily[daily["symbol"] == "AAA"].iloc[0]
    assert row["live_quoted_spread"] == pytest.approx(measured["quoted_spread_tw"])
    assert row["live_trade_flow_imbalance"] == pytest.approx(measured["trade_flow_imbalance"])
    assert row["live_kyle_lambda"] == pytest.approx(measured["kyle_lambda"] * measured["volume"] * 0.01 / 1e6)
    assert row["live_trade_size_dispersion"] == pytest.approx(np.log(measured["trade_size_p90"] / measured["trade_size_mean"]))
    # one session only: never carried to the next day, and a session covered below MIN_COVERAGE stays NULL
    assert with_live.loc[with_live["symbol"] == "AAA", COLUMNS].notna().any(axis=1).sum() == 1
    assert with_live.loc[with_live["symbol"] == "BBB", COLUMNS].isna().all().all()


def test_a_model_trained_without_live_data_leaves_the_live_columns_out():
    from helpers.bars import make_bars

    from ibf_core.features.live import COLUMNS
    from ibf_core.features.pipeline import compute_features, feature_columns
    from ibf_core.models.dataset import select_features

    bars = make_bars(("AAA", "BBB"), "2012-01-03", "2012-12-31")
    kept, reasons = select_features(compute_features(bars), feature_columns())
    assert not set(COLUMNS) & set(kept)
    assert all(reasons[c] == "all NaN in the training window" for c in COLUMNS)


# ----- microstructure_daily through Dagster --------------------------------------------------------------------
@pytest.fixture
def sample_warehouse(ibf_home, monkeypatch):
    monkeypatch.setenv("IBF_UNIVERSE", "AAPL,MSFT")
    get_settings.cache_clear()
    from ibf_dagster.runner import backfill

    settings = get_settings()
    summaries = backfill(settings, ["AAPL", "MSFT"], "2012-01-03", "2012-12-31", assets="market_bars")
    assert all(s.success for s in summaries)
    from ibf_core.storage.backends import open_warehouse

    return settings, open_warehouse(settings)


def test_microstructure_daily_and_features_through_dagster(sample_warehouse):
    from ibf_core.storage.tables import MARKET_BARS
    from ibf_core.streaming.microstructure import MICROSTRUCTURE_DAILY, microstructure_daily
    from ibf_dagster.runner import backfill

    settings, store = sample_warehouse
    stored_bars = store.read(MARKET_BARS, ["AAPL"], DAY, DAY)
    close = float(stored_bars["close"].iloc[0])
    aapl = store_live(store, "AAPL", close=close)
    store_live(store, "MSFT", bars=600)  # a collector started late: coverage 0.13

    summaries = backfill(settings, ["AAPL", "MSFT"], "2012-12-01", "2012-12-31", assets="microstructure_daily")
    assert all(s.success for s in summaries), [s.error for s in summaries]
    stored = store.read(MICROSTRUCTURE_DAILY)
    assert sorted(stored["symbol"]) == ["AAPL", "MSFT"] and set(stored["date"]) == {pd.Timestamp(DAY)}
    want = microstructure_daily(*aapl).iloc[0]
    got = stored.set_index("symbol").loc["AAPL"]
    for column in ("quoted_spread_tw", "effective_spread", "kyle_lambda", "realized_vol", "vwap_deviation", "coverage"):
        assert got[column] == pytest.approx(want[column]), column
    assert stored.set_index("symbol").loc["MSFT", "coverage"] == pytest.approx(600 / 4680)

    summaries = backfill(settings, ["AAPL", "MSFT"], "2012-12-01", "2012-12-31", assets="features")
    assert all(s.success for s in summaries), [s.error for s in summaries]
    features = store.query("SELECT symbol, date, live_quoted_spread, cs_spread_20 FROM features WHERE date >= '2012-12-01'")
    on_day = features[pd.to_datetime(features["date"]) == pd.Timestamp(DAY)].set_index("symbol")
    assert on_day.loc["AAPL", "live_quoted_spread"] == pytest.approx(want["quoted_spread_tw"])
    assert np.isnan(on_day.loc["MSFT", "live_quoted_spread"])  # too little of the session
    assert features["live_quoted_spread"].notna().sum() == 1 and features["cs_spread_20"].notna().all()


def test_the_watch_job_observes_the_live_tables_and_flags_a_crossed_quote(sample_warehouse):
    from ibf_core.streaming.store import append_rows
    from ibf_core.streaming.tables import QUOTES
    from ibf_dagster.definitions import build_definitions
    from ibf_dagster.instance import get_instance

    settings, store = sample_warehouse
    _, book = store_live(store, "AAPL", bars=200)
    bad = book.tail(1).assign(time=book["time"].iloc[-1] + pd.Timedelta(seconds=1), bid=book["ask"].iloc[-1] + 0.05)
    append_rows(store, QUOTES, bad)
    defs = build_definitions(settings)
    result = defs.resolve_job_def("live_stream_watch").execute_in_process(instance=get_instance(settings), raise_on_error=False)
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert not checks["no_crossed_quotes"].passed and checks["unique_keys"].passed
    assert checks["no_gaps_in_session"].passed  # 200 contiguous bars
    # judged against the wall clock: with the market open now, a newest session of 2012 means nothing is streaming
    from ibf_core.calendar import market_is_open

    assert checks["stream_lag"].passed == (not market_is_open())
    observed = [e for e in result.all_events if e.event_type_value == "ASSET_OBSERVATION"]
    by_key = {e.asset_key.to_user_string(): e.event_specific_data.asset_observation.metadata for e in observed}
    assert by_key["quotes"]["newest_session"].value == "2012-12-11" and by_key["quotes"]["dagster/row_count"].value == 201
    assert by_key["intraday_bars"]["symbols"].value == 1


def test_the_after_close_sensor_requests_one_run_per_symbol_block_once_the_session_closed(sample_warehouse):
    from ibf_dagster.assets.live import after_close_requests
    from ibf_dagster.instance import get_instance

    settings, store = sample_warehouse
    store_live(store, "AAPL", bars=50)
    store_live(store, "MSFT", bars=50)
    instance = get_instance(settings)
    before_close = after_close_requests(instance, store, settings, now=pd.Timestamp("2012-12-11 20:00", tz="UTC"))
    assert "nothing streamed on 2012-12-10" in before_close.skip_message  # 15:00 New York: the 11th is not over
    result = after_close_requests(instance, store, settings, now=CLOSED_NOW)
    [request] = result.run_requests
    assert request.run_key == "microstructure-2012-12-11-AAPL-MSFT"
    assert request.tags["dagster/asset_partition_range_start"] == "2012-12|AAPL"
    assert request.tags["dagster/asset_partition_range_end"] == "2012-12|MSFT"


def test_a_session_is_measured_only_after_its_close(sample_warehouse):
    from ibf_core.streaming.microstructure import sessions_from_store

    _, store = sample_warehouse
    store_live(store, "AAPL", bars=100)
    frame, still_open = sessions_from_store(store, ["AAPL"], DAY, DAY, now=OPEN_NOW)
    assert frame.empty and still_open == ["2012-12-11"]
    frame, still_open = sessions_from_store(store, ["AAPL"], DAY, DAY, now=CLOSED_NOW)
    assert len(frame) == 1 and still_open == []


# ----- live prices ----------------------------------------------------------------------------------------------
def test_forecasts_against_the_live_price_say_which_price_and_how_old(ibf_home):
    from ibf_core.storage.warehouse import Warehouse
    from ibf_core.streaming.live_prices import against_live_prices, newest_live_prices

    store = Warehouse(ibf_home)
    bars, book = store_live(store, "AAA", bars=720)  # the first hour: 09:30-10:30 New York
    now = bars["time"].iloc[-1] + pd.Timedelta(seconds=20)
    prices = newest_live_prices(store, ["AAA", "BBB"], now=now)
    assert prices["symbol"].tolist() == ["AAA"]
    assert prices["price"].iloc[0] == pytest.approx(book["last"].iloc[-1])
    forecasts = pd.DataFrame({"symbol": ["AAA", "BBB"], "close": [90.0, 50.0], "pred_return": [0.01, -0.02],
                              "lower_80": [-0.01, -0.04], "upper_80": [0.03, 0.0], "lower_95": [-0.02, -0.05],
                              "upper_95": [0.04, 0.01]})
    out = against_live_prices(forecasts, prices, now=now, max_age_s=300).set_index("symbol")
    live = book["last"].iloc[-1]
    assert out.loc["AAA", "price_basis"] == "live" and out.loc["AAA", "basis_price"] == pytest.approx(live)
    assert out.loc["AAA", "pred_price"] == pytest.approx(live * np.exp(0.01))
    assert out.loc["AAA", "price_upper_95"] == pytest.approx(live * np.exp(0.04))
    # the newest of the quote (bar start + 4 s) and the bar close (bar end = start + 5 s): the bar
    assert out.loc["AAA", "basis_age_seconds"] == pytest.approx(15.0)
    assert out.loc["AAA", "basis_source"] == "5-second bar close"
    assert out.loc["BBB", "price_basis"] == "close" and out.loc["BBB", "pred_price"] == pytest.approx(50 * np.exp(-0.02))
    assert out.loc["BBB", "basis_note"] == "nothing streamed this session: origin close"
    stale = against_live_prices(forecasts, prices, now=now + pd.Timedelta(minutes=10), max_age_s=300).set_index("symbol")
    assert stale.loc["AAA", "price_basis"] == "close" and "older than 300 s" in stale.loc["AAA", "basis_note"]
    closed = against_live_prices(forecasts, prices, now=CLOSED_NOW, max_age_s=1e9).set_index("symbol")
    assert closed.loc["AAA", "basis_note"] == "market closed: origin close"


def test_ibf_forecasts_prints_the_newest_origin_and_names_its_price_basis(ibf_home, monkeypatch):
    from helpers.cli import run_ibf

    from ibf_core.storage.warehouse import Warehouse
    from ibf_serve.testing import write_stored_world

    monkeypatch.setenv("IBF_UNIVERSE", "AAA,BBB")
    get_settings.cache_clear()
    world = write_stored_world(ibf_home, ["AAA", "BBB"], "2021-01-04", "2021-03-31")
    now = pd.Timestamp.now(tz="UTC")
    store_live(Warehouse(ibf_home), "AAA", day=now.tz_convert("America/New_York").date(), bars=5)  # today's session
    done = run_ibf("forecasts", "--symbols", "AAA,BBB", "--horizons", "1,5", "--live", "--format", "json")
    assert done.returncode == 0, done.stderr
    rows = pd.read_json(io.StringIO(done.stdout))
    assert len(rows) == 4 and set(rows["origin"].astype(str).str[:10]) == {"2021-03-31"}
    stored = world["predictions"].set_index(["symbol", "horizon"]).loc[lambda f: f["date"] == pd.Timestamp("2021-03-31")]
    for r in rows.itertuples():
        assert r.pred_return == pytest.approx(stored.loc[(r.symbol, r.horizon), "pred_return"])
        assert r.pred_price == pytest.approx(r.basis_price * np.exp(r.pred_return))
    # the stream rows written are of 09:30-09:30:25 today: live only while the market is open and they are fresh
    assert set(rows.loc[rows["symbol"] == "BBB", "price_basis"]) == {"close"}
    assert "nothing streamed this session: origin close: BBB" in done.stderr or "market closed: origin close" in done.stderr
    for args, code, needle in ((["--horizons", "seven"], 2, "seven"), (["--horizons", "7"], 2, "7 not a forecast horizon"),
                               (["--symbols", "zzz"], 1, "no stored predictions for ZZZ (stored: AAA, BBB)")):
        bad = run_ibf("forecasts", *args)
        assert bad.returncode == code and bad.stderr.count("error:") == 1 and needle in bad.stderr, bad.stderr
