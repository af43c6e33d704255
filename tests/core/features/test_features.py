"""The feature library: TA-Lib parity, no look-ahead, missing values, warm-up, scale-freeness, benchmark, news."""

import math

import numpy as np
import pandas as pd
import pytest
import talib

from helpers.bars import make_bars
from ibf_core.calendar import trading_days
from ibf_core.features import Panel
from ibf_core.features.cross_asset import percentile_rank
from ibf_core.features.pipeline import (
    FEATURES,
    NEWS_COLUMNS,
    WARMUP_SESSIONS,
    compute_features,
    compute_features_for_range,
    feature_columns,
    features_by_group,
    lookback_sessions,
    sparse_features,
)
from ibf_core.sources.sample import load_sample_bars

SPARSE = sparse_features()  # real spread, news, live: present on some sessions only


@pytest.fixture(scope="module")
def sample() -> pd.DataFrame:
    return load_sample_bars()


@pytest.fixture(scope="module")
def sample_features(sample) -> pd.DataFrame:
    return compute_features(sample)


def one(frame: pd.DataFrame, symbol: str) -> pd.DataFrame:
    return frame[frame["symbol"] == symbol].reset_index(drop=True)


def assert_frames_close(got: pd.DataFrame, want: pd.DataFrame, rtol: float = 1e-9, atol: float = 1e-9) -> None:
    """Same keys, same warm-up flags, every feature equal NaN-aware within the tolerance (named on failure)."""
    assert list(got.columns) == list(want.columns)
    assert got["symbol"].tolist() == want["symbol"].tolist()
    assert (got["date"].to_numpy() == want["date"].to_numpy()).all()
    assert (got["warmup"].to_numpy() == want["warmup"].to_numpy()).all()
    for name in feature_columns():
        np.testing.assert_allclose(got[name].to_numpy(), want[name].to_numpy(), rtol=rtol, atol=atol,
                                   equal_nan=True, err_msg=name)


# ----- schema and registry -------------------------------------------------------------------------------
def test_schema_equals_registry(sample_features):
    assert list(sample_features.columns) == ["symbol", "date", *feature_columns(), "warmup"]
    assert feature_columns() == [f.name for f in FEATURES]
    assert len(set(feature_columns())) == len(FEATURES)
    assert set(features_by_group()) == {"technical", "returns", "microstructure", "cross_asset", "calendar", "news", "fundamentals", "macro"}
    assert {f.name for f in FEATURES if f.future_known} == set(features_by_group()["calendar"])
    assert all(sample_features[c].dtype == np.float64 for c in feature_columns())
    assert sample_features["warmup"].dtype == bool
    keys = sample_features[["symbol", "date"]]
    assert keys.equals(keys.sort_values(["symbol", "date"]).reset_index(drop=True))


def test_min_history_is_where_each_feature_starts(sample_features):
    """The registry's min_history is exactly the first defined row of every symbol with enough history."""
    for feature in FEATURES:
        if feature.name in SPARSE:
            continue
        for symbol, values in sample_features.groupby("symbol")[feature.name]:
            defined = values.notna().to_numpy()
            if len(values) >= feature.min_history:
                assert defined.argmax() == feature.min_history - 1, (feature.name, symbol)
                assert defined[feature.min_history - 1:].all(), (feature.name, symbol)
            else:
                assert not defined.any(), (feature.name, symbol)


def test_lookback_covers_every_window():
    assert WARMUP_SESSIONS == max(f.min_history for f in FEATURES) == 200
    assert lookback_sessions() >= WARMUP_SESSIONS
    assert lookback_sessions() == max(max(f.lookback, f.min_history) for f in FEATURES)


def test_empty_bars_give_the_schema():
    out = compute_features(load_sample_bars().head(0))
    assert list(out.columns) == ["symbol", "date", *feature_columns(), "warmup"] and out.empty


# ----- TA-Lib parity ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("symbol", ["AAPL", "IBM"])
def test_indicators_equal_talib_called_directly(sample, sample_features, symbol):
    bars, got = one(sample, symbol), one(sample_features, symbol)
    high, low, close, volume = (bars[c].to_numpy() for c in ("high", "low", "close", "volume"))
    logret = np.log(bars["adj_close"]).diff().to_numpy()

    def same(name, want):
        np.testing.assert_allclose(got[name].to_numpy(), want, rtol=1e-10, atol=1e-12, equal_nan=True, err_msg=name)

    same("rsi_14", talib.RSI(close, 14))
    line, signal, hist = talib.MACD(close, 12, 26, 9)
    same("macd_line", line / close)
    same("macd_signal", signal / close)
    same("macd_hist", hist / close)
    same("natr_14", talib.NATR(high, low, close, 14))
    same("natr_14", talib.ATR(high, low, close, 14) / close * 100)  # NATR is the scale-free ATR
    same("adx_14", talib.ADX(high, low, close, 14))
    same("plus_di_14", talib.PLUS_DI(high, low, close, 14))
    same("minus_di_14", talib.MINUS_DI(high, low, close, 14))
    same("sma_ratio_50", close / talib.SMA(close, 50) - 1)
    same("ema_ratio_20", close / talib.EMA(close, 20) - 1)
    same("wma_ratio_200", close / talib.WMA(close, 200) - 1)
    same("hv_20", talib.STDDEV(logret, 20, 1.0) * math.sqrt(252))
    volume_sum = talib.SUM(volume, 20)
    obv = pd.Series(talib.OBV(close, volume))
    same("obv_flow_20", obv.diff(20).to_numpy() / volume_sum)
    ad = pd.Series(talib.AD(high, low, close, volume))
    same("cmf_20", ad.diff(20).to_numpy() / volume_sum)
    same("adosc_3_10", talib.ADOSC(high, low, close, volume, 3, 10) / (volume_sum / 20))
    upper, middle, lower = talib.BBANDS(close, 20, 2.0, 2.0, 0)
    same("bb_pctb_20", (close - lower) / (upper - lower))
    same("bb_width_20", (upper - lower) / middle)
    same("logret_5", np.log(bars["adj_close"]).diff(5).to_numpy())
    same("logret_1_lag_3", pd.Series(logret).shift(3).to_numpy())


def test_percentile_rank_matches_pandas():
    rng = np.random.default_rng(3)
    grid = rng.normal(size=(60, 40))
    grid[:5, :10] = np.nan
    grid[7, :12] = 1.5  # ties
    grid[8] = np.round(grid[8])
    grid[9, 3], grid[9, 4] = -0.0, 0.0
    grid[10] = np.nan
    want = pd.DataFrame(grid).rank(axis=1, pct=True).to_numpy()
    np.testing.assert_allclose(percentile_rank(grid), want, rtol=0, atol=1e-15, equal_nan=True)


# ----- no look-ahead ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("benchmark_symbol", [None, "MSFT"])
def test_no_look_ahead(sample, benchmark_symbol):
    """Rows <= d are identical whether or not bars after d exist (cross-sectional features included).

    The cut-offs fall before FB and GOOG exist, so the universe itself changes after some of them.
    """
    bars = sample if benchmark_symbol is None else sample.assign(
        symbol=sample["symbol"].replace({benchmark_symbol: "SPY"}))
    full = compute_features(bars, benchmark="SPY")
    for cutoff in ["2000-12-29", "2004-08-31", "2008-10-15", "2012-06-01", "2013-02-27"]:
        d = pd.Timestamp(cutoff)
        truncated = compute_features(bars[bars["date"] <= d], benchmark="SPY")
        assert_frames_close(truncated, full[full["date"] <= d].reset_index(drop=True))


def test_single_day_partition_equals_full_history(sample, sample_features):
    """Loading lookback_sessions() before a date reproduces the full-history row (recursive indicators too)."""
    for day in ["2006-06-01", "2012-12-03"]:
        history = trading_days("1999-01-01", day)
        bars = sample[sample["date"] >= history[-(lookback_sessions() + 1)]]
        got = compute_features_for_range(bars, day, day)
        want = sample_features[sample_features["date"] == pd.Timestamp(day)].reset_index(drop=True)
        assert len(got) == len(want) > 0
        assert_frames_close(got, want, rtol=1e-9, atol=1e-9)


# ----- missing values -----------------------------------------------------------------------------------------
def degenerate_bars() -> pd.DataFrame:
    """Bars with zero-volume days, a flat stretch (high = low = close for 30 days) and a real spread column."""
    bars = make_bars(("AAA", "BBB", "CCC"), start="2020-01-02", end="2021-12-31", seed=4)
    bars["volume"] = bars["volume"].astype(float)
    aaa = bars.index[bars["symbol"] == "AAA"]
    bars.loc[aaa[[0, 120, 121]], "volume"] = 0.0
    flat = aaa[300:330]
    bars.loc[flat, ["open", "high", "low", "close", "adj_close"]] = 42.0
    bars["spread"] = 0.001
    bars.loc[aaa[:30], "spread"] = np.nan  # leading gap: unknown
    bars.loc[aaa[200:205], "spread"] = np.nan  # interior gap: filled from the past
    return bars


def test_no_infinities_and_nothing_zero_filled():
    out = compute_features(degenerate_bars())
    values = out[feature_columns()].to_numpy()
    assert not np.isinf(values).any()
    aaa = one(out, "AAA")
    assert aaa["spread_quoted"].iloc[:30].isna().all()  # unknown spread stays unknown, never 0
    assert not (aaa["spread_quoted"] == 0).any()


def test_forward_fill_only_from_the_past():
    bars = degenerate_bars()
    aaa = one(compute_features(bars), "AAA")
    # Interior gap: the spread is carried forward from the last known day.
    assert (aaa.loc[200:204, "spread_quoted"] == aaa.loc[199, "spread_quoted"]).all()
    # Volume ROC from a zero-volume day is undefined -> NaN -> filled from the previous session...
    assert aaa.loc[130, "vroc_10"] == aaa.loc[129, "vroc_10"] and aaa.loc[131, "vroc_10"] == aaa.loc[129, "vroc_10"]
    # ...but a leading gap (zero volume on the first bar) is never filled backward.
    assert aaa.loc[:10, "vroc_10"].isna().all() and np.isfinite(aaa.loc[11, "vroc_10"])
    # Filling never crosses symbols: BBB's leading rows stay NaN although AAA's last rows are defined.
    bbb = one(compute_features(bars), "BBB")
    assert bbb.loc[:13, "rsi_14"].isna().all() and bbb.loc[:198, "sma_ratio_200"].isna().all()
    # The flat stretch: Bollinger %b is 0/0 there; every row is filled from before the stretch.
    assert aaa.loc[320:329, "bb_pctb_20"].notna().all()
    assert (aaa.loc[320:329, "bb_pctb_20"] == aaa.loc[319, "bb_pctb_20"]).all()


def test_warmup_flag():
    # CCC keeps AAA company: with a single symbol there is no universe to compare with (beta etc. NaN).
    bars = make_bars(("AAA", "BBB", "CCC"), start="2020-01-02", end="2021-06-30")
    bars = bars[~((bars["symbol"] == "BBB") & (bars["date"] < "2021-01-01"))]  # BBB: under 200 bars
    out = compute_features(bars)
    aaa, bbb = one(out, "AAA"), one(out, "BBB")
    assert aaa["warmup"].iloc[: WARMUP_SESSIONS - 1].all() and not aaa["warmup"].iloc[WARMUP_SESSIONS - 1:].any()
    assert bbb["warmup"].all() and len(bbb) < WARMUP_SESSIONS
    ready = aaa[~aaa["warmup"]]
    dense = [c for c in feature_columns() if c not in SPARSE]
    assert ready[dense].notna().all().all()  # past the warm-up every non-sparse feature is defined


def test_unsorted_input_and_text_dates_give_the_same_result():
    bars = make_bars(("AAA", "BBB", "CCC"), start="2020-01-02", end="2020-12-31", seed=1)
    want = compute_features(bars)
    shuffled = bars.sample(frac=1.0, random_state=0).reset_index(drop=True)
    assert_frames_close(compute_features(shuffled), want, rtol=0, atol=0)


# ----- scale-free ---------------------------------------------------------------------------------------------
def test_features_are_scale_free(sample, sample_features):
    """Prices x 10 and volume x 0.1 for one symbol (a reverse split in effect) change no feature anywhere.

    No feature is intentionally level-dependent: Amihud uses dollar volume, which the transform preserves.
    """
    scaled = sample.copy()
    ibm = scaled["symbol"] == "IBM"
    scaled.loc[ibm, ["open", "high", "low", "close", "adj_close"]] *= 10.0
    scaled.loc[ibm, "volume"] *= 0.1
    assert_frames_close(compute_features(scaled), sample_features, rtol=1e-7, atol=1e-9)


# ----- benchmark ---------------------------------------------------------------------------------------------
def _rolling_beta_corr(returns: pd.Series, bench: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    cov = returns.rolling(60, min_periods=50).cov(bench)
    beta = cov / bench.rolling(60, min_periods=50).var()
    corr = returns.rolling(60, min_periods=50).corr(bench)
    return beta.to_numpy(), corr.to_numpy()


def test_benchmark_is_equal_weighted_universe_without_spy(sample, sample_features):
    returns = sample.assign(r=np.log(sample["adj_close"]).groupby(sample["symbol"]).diff())
    wide = returns.pivot(index="date", columns="symbol", values="r")
    others = wide.drop(columns="IBM")
    leave_one_out = others.sum(axis=1, min_count=1) / others.notna().sum(axis=1)
    ibm = one(returns, "IBM")
    beta, corr = _rolling_beta_corr(ibm["r"], ibm["date"].map(leave_one_out))
    got = one(sample_features, "IBM")
    rows = slice(60, None)
    np.testing.assert_allclose(got["beta_60"].to_numpy()[rows], beta[rows], rtol=1e-7)
    np.testing.assert_allclose(got["corr_60"].to_numpy()[rows], corr[rows], rtol=1e-7)
    # Relative strength: the 20-day return minus that date's universe mean (the symbol included).
    r20 = sample.assign(r=np.log(sample["adj_close"]).groupby(sample["symbol"]).diff(20))
    mean = r20.groupby("date")["r"].mean()
    want = one(r20, "IBM")["r"].to_numpy() - one(r20, "IBM")["date"].map(mean).to_numpy()
    np.testing.assert_allclose(got["rel_strength_20"].to_numpy(), want, rtol=1e-9, atol=1e-12, equal_nan=True)


def test_benchmark_is_spy_when_present(sample):
    bars = sample.assign(symbol=sample["symbol"].replace({"MSFT": "SPY"}))
    out = compute_features(bars, benchmark="SPY")
    r = np.log(bars["adj_close"]).groupby(bars["symbol"]).diff()
    spy = pd.Series(r[bars["symbol"] == "SPY"].to_numpy(), index=bars.loc[bars["symbol"] == "SPY", "date"])
    ibm = bars[bars["symbol"] == "IBM"]
    beta, corr = _rolling_beta_corr(pd.Series(r[ibm.index].to_numpy()), ibm["date"].map(spy).reset_index(drop=True))
    got = one(out, "IBM")
    np.testing.assert_allclose(got["beta_60"].to_numpy()[60:], beta[60:], rtol=1e-7)
    np.testing.assert_allclose(got["corr_60"].to_numpy()[60:], corr[60:], rtol=1e-7)
    spy_rows = one(out, "SPY").iloc[60:]
    np.testing.assert_allclose(spy_rows[["beta_60", "corr_60"]].to_numpy(), 1.0, rtol=1e-9)
    # Asking for a benchmark the frame lacks falls back to the equal-weighted universe.
    fallback = compute_features(bars, benchmark="QQQ")
    assert_frames_close(fallback, compute_features(bars, benchmark=None), rtol=0, atol=0)


def test_cross_sectional_ranks_use_the_same_date_only(sample_features):
    day = sample_features[sample_features["date"] == pd.Timestamp("2010-06-01")]
    want = day["hv_20"].rank(pct=True).to_numpy()
    np.testing.assert_allclose(day["rank_hv_20"].to_numpy(), want)
    assert day["rank_ret_20"].max() == 1.0


# ----- calendar -----------------------------------------------------------------------------------------------
def test_calendar_features_are_future_known_nyse_facts():
    bars = make_bars(("AAA",), start="2012-10-22", end="2013-04-05")
    out = one(compute_features(bars), "AAA").set_index("date")

    def at(day: str, name: str) -> float:
        return out.loc[pd.Timestamp(day), name]

    assert at("2012-11-21", "is_pre_holiday") == 1 and at("2012-11-21", "sessions_to_holiday") == 0  # Thanksgiving
    assert at("2012-11-20", "sessions_to_holiday") == 1 and at("2012-11-23", "is_post_holiday") == 1
    # Hurricane Sandy closed NYSE on 2012-10-29/30 without notice: not a known holiday on the 26th.
    assert at("2012-10-26", "is_pre_holiday") == 0 and at("2012-10-31", "is_post_holiday") == 0
    assert at("2012-10-31", "is_month_end") == 1 and at("2012-11-01", "is_month_start") == 1
    assert at("2012-12-31", "is_quarter_end") == 1 and at("2012-12-31", "sessions_to_month_end") == 0
    # Good Friday 2013-03-29: the Thursday is the last session of March and of Q1, before a holiday.
    assert at("2013-03-28", "is_month_end") == 1 and at("2013-03-28", "is_quarter_end") == 1
    assert at("2013-03-28", "is_pre_holiday") == 1 and at("2013-03-27", "sessions_to_month_end") == 1
    assert at("2013-01-02", "day_of_week") == 2 and at("2013-01-02", "month") == 1


# ----- news ---------------------------------------------------------------------------------------------------
def test_news_is_left_joined_as_is():
    bars = make_bars(("AAA", "BBB"), start="2021-01-04", end="2021-02-26")
    news = pd.DataFrame({
        "symbol": ["AAA", "AAA", "BBB", "ZZZ"],
        "date": pd.to_datetime(["2021-01-05", "2021-01-06", "2021-01-05", "2021-01-05"]),
        "news_count": [3, 0, 1, 9],
        "news_sentiment_mean": [0.4, np.nan, -0.2, 1.0],
        "news_sentiment_weighted": [0.5, np.nan, -0.1, 1.0],
        "news_bullish_share": [2 / 3, np.nan, 0.0, 1.0],
        "news_bearish_share": [0.0, np.nan, 1.0, 0.0],
        "news_volume_z": [2.1, -0.5, 0.3, 4.0],
    })
    out = compute_features(bars, news=news).set_index(["symbol", "date"])
    assert out.loc[("AAA", pd.Timestamp("2021-01-05")), "news_count"] == 3
    assert out.loc[("AAA", pd.Timestamp("2021-01-05")), "news_sentiment_mean"] == pytest.approx(0.4)
    assert out.loc[("AAA", pd.Timestamp("2021-01-06")), "news_count"] == 0
    assert np.isnan(out.loc[("AAA", pd.Timestamp("2021-01-06")), "news_sentiment_mean"])  # not forward-filled
    assert out.loc[("BBB", pd.Timestamp("2021-01-05")), "news_bearish_share"] == 1.0
    assert np.isnan(out.loc[("AAA", pd.Timestamp("2021-01-07")), "news_count"])  # no news row: NaN, as is
    assert out[list(NEWS_COLUMNS)].notna().any(axis=1).sum() == 3  # ZZZ has no bars: ignored
    without = compute_features(bars)
    assert without[list(NEWS_COLUMNS)].isna().all().all()
    other = [c for c in feature_columns() if c not in NEWS_COLUMNS]
    np.testing.assert_array_equal(out[other].to_numpy(), without[other].to_numpy())
    with pytest.raises(ValueError, match="duplicate"):
        compute_features(bars, news=pd.concat([news, news.head(1)]))


def test_panel_lags_never_cross_symbols():
    bars = make_bars(("AAA", "BBB"), start="2021-01-04", end="2021-01-29")
    panel, _ = Panel.from_bars(bars)
    lagged = panel.lag(panel.close, 2)
    assert np.isnan(lagged[panel.starts[1]:panel.starts[1] + 2]).all()
    assert lagged[panel.starts[1] + 2] == panel.close[panel.starts[1]]


def test_history_shorter_than_the_longest_window_is_all_warmup_not_an_error():
    """Regression: 19-20 bars (no room for the 20-bar flow difference) used to raise a numpy broadcast error."""
    from ibf_core.features.pipeline import compute_features
    from ibf_core.sources.sample import load_sample_bars

    bars = load_sample_bars()
    short = bars[(bars.symbol == "IBM") & (bars.date >= "2013-02-01")]
    out = compute_features(short)
    assert len(out) == len(short) == 20 and out["warmup"].all()
    assert out["obv_flow_20"].isna().all() and out["logret_1"].notna().sum() == 19
