"""The vectorized feature pipeline against a straightforward reference on a small messy panel.

The pipeline computes over the whole (symbol, date)-sorted frame at once: lags and windows by index arithmetic
with symbol boundaries, cross-sections on a (dates, symbols) grid, ranks by one sort of packed integer keys,
input flags and support states by cumulative counts. The reference below does the obvious thing instead: one
symbol at a time (its own bars, TA-Lib and pandas shifts), one date at a time for the cross-sections (pandas
``rank``), plain loops for the input flags, then the documented cleaning (inf -> NaN, forward fill within the
symbol, NULL where the feature's window holds a bar without an input it reads). The panel has what real files
have: missing sessions, NaN open/high/low/volume, zero, negative and infinite volume, filler volume runs, a close-only
stretch, a real spread column with gaps, a symbol of 6 bars, of 30, of 75, one starting late, and rows in no
particular order; two symbols with identical bars tie in every cross-sectional rank.
"""

import math

import numpy as np
import pandas as pd
import pytest
import talib

from helpers.messy_bars import messy_bars
from ibf_core.features.calendar_features import calendar_table
from ibf_core.features.cross_asset import percentile_rank
from ibf_core.features.pipeline import (
    _CROSS, _PER_SYMBOL, NO_RANGE, NO_VOLUME, WARMING_UP, compute_features, compute_features_with_support,
)  # fmt: skip

RTOL, ATOL = 1e-10, 1e-12


def messy_panel(benchmark_symbol: str | None = None) -> pd.DataFrame:
    bars = messy_bars(n_symbols=12, sessions=330, vendor_missing=4, gaps=3, seed=11)
    rng = np.random.default_rng(11)
    n = len(bars)
    bars["volume"] = bars["volume"].astype(float)
    for column, share in (("open", 0.01), ("high", 0.01), ("low", 0.01), ("volume", 0.02)):
        bars.loc[rng.random(n) < share, column] = np.nan
    bars.loc[rng.random(n) < 0.01, "volume"] = 0.0
    bars.loc[rng.random(n) < 0.003, "volume"] = -100.0
    bars.loc[rng.random(n) < 0.002, "volume"] = np.inf
    rows = {s: bars.index[bars["symbol"] == s] for s in bars["symbol"].unique()}
    bars.loc[rows["S001"][100:108], "volume"] = 5000.0  # a filler run (the same volume 8 bars in a row)
    bars.loc[rows["S002"][:3], "volume"] = 7000.0  # repeated from the first bar on
    stretch = rows["S003"][40:70]
    bars.loc[stretch, ["open", "high", "low"]] = np.repeat(bars.loc[stretch, ["close"]].to_numpy(), 3, axis=1)
    bars["spread"] = np.where(rng.random(n) < 0.2, np.nan, rng.uniform(1e-4, 3e-3, n))
    bars.loc[rows["S009"], "spread"] = np.nan
    keep = np.ones(n, dtype=bool)
    for symbol, first, last in (("S004", 0, 6), ("S005", 0, 30), ("S006", -120, None), ("S007", 0, 75)):
        keep[rows[symbol]] = False
        keep[rows[symbol][first:last]] = True
    bars = bars[keep]
    twin = bars[bars["symbol"] == "S010"].assign(symbol="S010B")  # identical bars: every rank has ties
    bars = pd.concat([bars, twin])
    if benchmark_symbol:
        bars = bars.replace({"symbol": {"S008": benchmark_symbol}})
    return bars.sample(frac=1.0, random_state=3).reset_index(drop=True)


# ----- per symbol: one symbol's own bars, TA-Lib and pandas ----------------------------------------------------
def input_flags(g: pd.DataFrame) -> dict[str, np.ndarray]:
    """Per bar: volume missing (NaN, infinite, negative, or the same value 5 bars in a row / since the first bar),
    range missing (open, high or low not a number, or high == low)."""
    volume = g["volume"].to_numpy(dtype=float)
    no_volume = np.zeros(len(g), dtype=bool)
    for i, v in enumerate(volume):
        window = volume[max(0, i - 4): i + 1]
        no_volume[i] = not (math.isfinite(v) and v >= 0) or (i > 0 and bool((window == v).all()))
    o, h, lo = (g[c].to_numpy(dtype=float) for c in ("open", "high", "low"))
    no_range = ~(np.isfinite(o) & np.isfinite(h) & np.isfinite(lo)) | (h == lo)
    return {"volume": no_volume, "range": no_range}


def raw_features(g: pd.DataFrame) -> dict[str, np.ndarray]:
    """Every per-symbol feature of one symbol before cleaning, straight from the definitions."""
    close, adj = g["close"].to_numpy(dtype=float), g["adj_close"].to_numpy(dtype=float)
    raw_volume = g["volume"].to_numpy(dtype=float)
    volume = np.where(np.isfinite(raw_volume) & (raw_volume >= 0), raw_volume, 0.0)
    high, low, open_ = (np.where(np.isfinite(g[c]), g[c], close) for c in ("high", "low", "open"))
    logp = pd.Series(np.log(adj))
    logret = logp.diff().to_numpy()
    f: dict[str, np.ndarray] = {}
    for n in (5, 10, 20, 50, 200):
        f[f"sma_ratio_{n}"] = close / talib.SMA(close, n) - 1
        f[f"wma_ratio_{n}"] = close / talib.WMA(close, n) - 1
    for n in (5, 10, 20):
        f[f"ema_ratio_{n}"] = close / talib.EMA(close, n) - 1
    f["rsi_14"] = talib.RSI(close, 14)
    for name, values in zip(("macd_line", "macd_signal", "macd_hist"), talib.MACD(close, 12, 26, 9)):
        f[name] = values / close
    f["stoch_k"], f["stoch_d"] = talib.STOCH(high, low, close, 14, 3, 0, 3, 0)
    f["cci_20"] = talib.CCI(high, low, close, 20)
    f["willr_14"] = talib.WILLR(high, low, close, 14)
    upper, middle, lower = talib.BBANDS(close, 20, 2.0, 2.0, 0)
    f["bb_pctb_20"] = (close - lower) / (upper - lower)
    f["bb_width_20"] = (upper - lower) / middle
    f["natr_14"] = talib.NATR(high, low, close, 14)
    f["ret_std_5"] = talib.STDDEV(logret, 5, 1.0)
    for n in (10, 20, 60):
        f[f"hv_{n}"] = talib.STDDEV(logret, n, 1.0) * math.sqrt(252)
    volume_sum = talib.SUM(volume, 20)
    f["obv_flow_20"] = pd.Series(talib.OBV(close, volume)).diff(20).to_numpy() / volume_sum
    f["cmf_20"] = pd.Series(talib.AD(high, low, close, volume)).diff(20).to_numpy() / volume_sum
    f["adosc_3_10"] = talib.ADOSC(high, low, close, volume, 3, 10) / volume_sum * 20
    f["vwap_ratio_20"] = close * volume_sum / talib.SUM((high + low + close) * volume / 3.0, 20) - 1
    f["roc_10"] = talib.ROC(close, 10)
    f["vroc_10"] = talib.ROC(volume, 10)
    f["vroc_10"][10:][volume[:-10] <= 0] = np.nan  # a change from zero volume is undefined
    f["adx_14"] = talib.ADX(high, low, close, 14)
    f["plus_di_14"] = talib.PLUS_DI(high, low, close, 14)
    f["minus_di_14"] = talib.MINUS_DI(high, low, close, 14)
    for k in (1, 2, 3, 5, 10, 20):
        f[f"logret_{k}"] = logp.diff(k).to_numpy()
    for k in (1, 2, 3, 5):
        f[f"logret_1_lag_{k}"] = pd.Series(logret).shift(k).to_numpy()

    # Corwin-Schultz, overnight-adjusted, from days t-1 and t
    prev_close = pd.Series(close).shift().to_numpy()
    adjust = np.maximum(prev_close - high, 0.0) - np.maximum(low - prev_close, 0.0)
    high_t, low_t = high + adjust, low + adjust
    high_1, low_1 = pd.Series(high).shift().to_numpy(), pd.Series(low).shift().to_numpy()
    beta = np.log(high_1 / low_1) ** 2 + np.log(high_t / low_t) ** 2
    gamma = np.log(np.maximum(high_1, high_t) / np.minimum(low_1, low_t)) ** 2
    k = 3.0 - 2.0 * math.sqrt(2.0)
    alpha = np.sqrt(beta) * ((math.sqrt(2.0) - 1.0) / k) - np.sqrt(gamma / k)
    e = np.exp(alpha)
    f["cs_spread_20"] = talib.SMA(np.maximum(2.0 * (e - 1.0) / (e + 1.0), 0.0), 20)
    # Roll: 2 sqrt(-cov) of successive log close changes, signed
    change = pd.Series(np.log(close)).diff()
    lagged = change.shift().to_numpy()
    change = change.to_numpy()
    cov = (talib.SUM(change * lagged, 20) - talib.SUM(change, 20) * talib.SUM(lagged, 20) / 20) / 19
    f["roll_spread_20"] = -2.0 * np.copysign(np.sqrt(np.abs(cov)), cov)
    # Amihud over the sessions with a value
    illiquidity = np.abs(logret) / (close * volume) * 1e6
    valid = np.isfinite(illiquidity)
    count = talib.SUM(valid.astype(float), 20)
    mean = talib.SUM(np.where(valid, illiquidity, 0.0), 20) / count
    f["amihud_20"] = np.log(np.where(count >= 15, mean, np.nan))
    mean, std = talib.SMA(volume, 20), talib.STDDEV(volume, 20, 1.0)
    f["volume_z_20"] = (volume - mean) / np.where(std <= 1e-9 * mean, np.nan, std)
    f["turnover_proxy_20"] = np.log(mean / talib.SMA(volume, 200))
    f["gap_overnight"] = open_ / prev_close - 1
    f["intraday_ret"] = np.log(close / open_)
    f["hl_range"] = np.log(high / low)
    spread = g["spread"].to_numpy(dtype=float)
    spread = np.where(spread >= 0, spread, np.nan)
    known = np.isfinite(spread)
    count = talib.SUM(known.astype(float), 20)
    f["spread_quoted"] = spread
    f["spread_quoted_mean_20"] = np.where(count >= 10, talib.SUM(np.where(known, spread, 0.0), 20) / count, np.nan)
    return f


def lacks(flags: np.ndarray, window: int) -> np.ndarray:
    """Rows whose last ``window`` bars (the row included) hold a flagged bar."""
    return np.array([flags[max(0, i - window + 1): i + 1].any() for i in range(len(flags))], dtype=bool)


def cleaned(values: np.ndarray, feature, flags: dict[str, np.ndarray]) -> np.ndarray:
    """inf -> NaN, forward fill within the symbol, then NULL where the window lacks an input the feature reads."""
    values = pd.Series(np.where(np.isfinite(values), values, np.nan))
    values = (values.ffill() if feature.ffill else values).to_numpy()
    for name in feature.inputs:
        values[lacks(flags[name], feature.min_history)] = np.nan
    return values


def support(feature, flags: dict[str, np.ndarray]) -> np.ndarray:
    state = (np.arange(len(flags["volume"])) + 1 < feature.min_history) * WARMING_UP
    for name, bit in (("volume", NO_VOLUME), ("range", NO_RANGE)):
        if name in feature.inputs:
            state = state | lacks(flags[name], feature.min_history) * bit
    return state.astype(np.int8)


@np.errstate(divide="ignore", invalid="ignore")
def reference(bars: pd.DataFrame, benchmark: str | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per-symbol + cross-asset features, their support states), rows sorted by symbol and date."""
    bars = bars.assign(date=pd.to_datetime(bars["date"])).sort_values(["symbol", "date"]).reset_index(drop=True)
    out = bars[["symbol", "date"]].copy()
    state = bars[["symbol", "date"]].copy()
    flags_of = {}
    columns: dict[str, list[np.ndarray]] = {f.name: [] for f in (*_PER_SYMBOL, *_CROSS)}
    for symbol, g in bars.groupby("symbol", sort=True):
        flags_of[symbol] = flags = input_flags(g)
        raw = raw_features(g)
        for feature in _PER_SYMBOL:
            columns[feature.name].append(cleaned(raw[feature.name], feature, flags))
        for feature in (*_PER_SYMBOL, *_CROSS):
            state.loc[g.index, feature.name] = support(feature, flags)
    for feature in _PER_SYMBOL:
        out[feature.name] = np.concatenate(columns[feature.name])

    # Benchmark return per date: the benchmark symbol's, else the mean of the other symbols' (leave one out).
    returns = np.log(bars["adj_close"]).groupby(bars["symbol"]).diff()
    by_date = pd.DataFrame({"date": bars["date"], "symbol": bars["symbol"], "r": returns})
    if benchmark in set(bars["symbol"]):
        spy = by_date[by_date["symbol"] == benchmark].set_index("date")["r"]
        bench = by_date["date"].map(spy).to_numpy()
    else:
        total = by_date.groupby("date")["r"].transform(lambda r: r.sum(min_count=1))
        count = by_date.groupby("date")["r"].transform("count")
        own = returns.notna()
        bench = ((total.fillna(0.0) - returns.fillna(0.0)) / (count - own)).where(count - own > 0).to_numpy()
    cross = {name: np.full(len(bars), np.nan) for name in ("beta_60", "corr_60")}
    for _, g in bars.groupby("symbol", sort=True):
        for row in g.index[59:]:  # 60 bars of the symbol, pairs where both returns exist, at least 50 of them
            x, y = returns[row - 59: row + 1].to_numpy(), bench[row - 59: row + 1]
            pair = np.isfinite(x) & np.isfinite(y)
            if pair.sum() < 50:
                continue
            x, y = x[pair], y[pair]
            sxy, sxx, syy = ((x - x.mean()) * (y - y.mean())).sum(), ((x - x.mean()) ** 2).sum(), ((y - y.mean()) ** 2).sum()
            if syy > 1e-12 * (y * y).sum():  # a flat benchmark has no beta
                cross["beta_60"][row] = sxy / syy
                cross["corr_60"][row] = sxy / math.sqrt(sxx * syy)
    for k in (5, 20):
        r = out[f"logret_{k}"]
        mean = r.groupby(out["date"]).transform(lambda v: v.mean() if v.count() >= 2 else np.nan)
        cross[f"rel_strength_{k}"] = (r - mean).to_numpy()
    for name, rank in (("logret_20", "rank_ret_20"), ("rsi_14", "rank_rsi_14"), ("hv_20", "rank_hv_20"),
                       ("volume_z_20", "rank_volume_z_20"), ("amihud_20", "rank_amihud_20")):
        cross[rank] = out.groupby("date")[name].rank(pct=True).to_numpy()
    for feature in _CROSS:
        values = cross[feature.name]
        out[feature.name] = np.concatenate([
            cleaned(values[g.index], feature, flags_of[symbol]) for symbol, g in bars.groupby("symbol", sort=True)
        ])
    return out, state


@pytest.mark.parametrize("benchmark", [None, "SPY"])
def test_pipeline_equals_the_per_symbol_reference(benchmark):
    bars = messy_panel(benchmark)
    got, got_state = compute_features_with_support(bars, benchmark=benchmark)
    want, want_state = reference(bars, benchmark)
    assert got["symbol"].tolist() == want["symbol"].tolist()
    assert (got["date"].to_numpy() == want["date"].to_numpy()).all()
    for feature in (*_PER_SYMBOL, *_CROSS):
        a, b = got[feature.name].to_numpy(), want[feature.name].to_numpy()
        assert np.array_equal(np.isnan(a), np.isnan(b)), feature.name
        np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL, equal_nan=True, err_msg=feature.name)
        np.testing.assert_array_equal(got_state[feature.name].to_numpy(), want_state[feature.name].to_numpy(),
                                      err_msg=feature.name)
    # calendar values are the date's, whatever the symbol (one table per distinct date, broadcast)
    days = pd.DatetimeIndex(np.unique(got["date"]))
    index = days.get_indexer(got["date"])
    for name, values in calendar_table(days).items():
        np.testing.assert_array_equal(got[name].to_numpy(), values[index], err_msg=name)
    # the frame compute_features returns is the same, and the caller's bars are left as they were
    before = bars.copy()
    pd.testing.assert_frame_equal(compute_features(bars, benchmark=benchmark), got)
    pd.testing.assert_frame_equal(bars, before)


def test_the_messy_panel_has_what_the_reference_must_cope_with():
    bars = messy_panel()
    counts = bars.groupby("symbol").size()
    assert counts["S004"] == 6 and counts["S005"] == 30 and counts["S007"] == 75
    assert bars[["open", "high", "low", "volume", "spread"]].isna().any().all()
    assert (bars["volume"] < 0).any() and (bars["volume"] == 0).any() and np.isinf(bars["volume"]).any()
    sessions = bars.groupby("symbol")["date"].apply(lambda d: pd.to_datetime(d).nunique())
    assert (sessions < bars["date"].nunique()).all()  # every symbol misses sessions


def test_percentile_rank_ties_at_the_ends_of_adjacent_rows_stay_apart():
    """A run of ties closing one row and a run opening the next are two runs (their flat indices are adjacent)."""
    grid = np.array([[1.0, 2, 3, 3], [0, 0, 5, 6], [7, 7, 7, 7], [np.nan, 1, 1, np.nan], [2, 2, np.nan, 2]])
    want = pd.DataFrame(grid).rank(axis=1, pct=True).to_numpy()
    np.testing.assert_allclose(percentile_rank(grid), want, rtol=0, atol=1e-15, equal_nan=True)
