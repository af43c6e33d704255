"""Daily microstructure measures from the live tables (one row per symbol and session), vectorized over symbols.

From ``quotes`` (top-of-book snapshots) and ``intraday_bars`` (5-second TRADES bars):

- ``quoted_spread_tw``: time-weighted relative quoted spread, (ask - bid) / mid, each quote weighted by how long
  it stood (until the next quote of the symbol; the last one until the last bar's end).
- ``effective_spread``: volume-weighted 2 |wap - mid| / mid of the bars, mid = the quote standing at the bar's end.
- ``depth_imbalance``: time-weighted (bid_size - ask_size) / (bid_size + ask_size).
- ``trade_flow_imbalance``: signed volume / volume, a bar signed by Lee-Ready: above the standing mid buy, below
  sell, at the mid the tick test (sign of the change of close).
- ``kyle_lambda``: slope of the 5-second log return (bps) on signed volume (per million shares), least squares.
- ``realized_vol``: square root of the sum of squared 5-second log returns of the closes (the session's).
- ``vwap_deviation``: log(close of the session's last bar / session VWAP).
- ``trade_size_mean``, ``trade_size_p90``: shares per trade of the bars (volume / count), mean and 90th percentile.
- ``n_bars``, ``n_quotes``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

BAR_SECONDS = 5
COLUMNS = [
    "symbol", "date", "quoted_spread_tw", "effective_spread", "depth_imbalance", "trade_flow_imbalance",
    "kyle_lambda", "realized_vol", "vwap_deviation", "trade_size_mean", "trade_size_p90", "n_bars", "n_quotes",
]  # fmt: skip


def _standing_quotes(bars: pd.DataFrame, quotes: pd.DataFrame) -> pd.DataFrame:
    """Each bar with the quote standing at its end (the newest quote at or before it), per symbol."""
    ends = bars.assign(end=bars["time"] + pd.Timedelta(seconds=BAR_SECONDS)).sort_values("end")
    book = quotes[["symbol", "time", "bid", "ask"]].dropna().sort_values("time")
    joined = pd.merge_asof(ends, book.rename(columns={"time": "quote_time"}), left_on="end", right_on="quote_time",
                           by="symbol", direction="backward")
    return joined.sort_values(["symbol", "time"]).reset_index(drop=True)


def _time_weights(quotes: pd.DataFrame, session_end: pd.Series) -> np.ndarray:
    """Seconds each quote stood: until the symbol's next quote, the last one until the session's last bar end."""
    nxt = quotes.groupby(["symbol", "date"])["time"].shift(-1)
    nxt = nxt.fillna(quotes.set_index(["symbol", "date"]).index.map(session_end).to_series(index=quotes.index))
    return np.clip((nxt - quotes["time"]).dt.total_seconds().to_numpy(dtype=float), 0.0, None)


def microstructure_daily(bars: pd.DataFrame, quotes: pd.DataFrame) -> pd.DataFrame:
    """The measures above per (symbol, date) present in ``bars`` (TRADES rows) and ``quotes``."""
    bars = bars[bars.get("what", "TRADES") == "TRADES"].copy() if "what" in bars else bars.copy()
    if bars.empty:
        return pd.DataFrame(columns=COLUMNS)
    for frame in (bars, quotes):
        frame["time"] = pd.to_datetime(frame["time"], utc=True)
        frame["date"] = pd.to_datetime(frame["date"]).dt.normalize()
    bars = bars.sort_values(["symbol", "time"]).reset_index(drop=True)
    keys = ["symbol", "date"]
    session_end = bars.groupby(keys)["time"].max() + pd.Timedelta(seconds=BAR_SECONDS)

    q = quotes.dropna(subset=["bid", "ask"]).sort_values(["symbol", "time"]).reset_index(drop=True)
    q = q[q["ask"] >= q["bid"]]
    mid_q = (q["ask"] + q["bid"]) / 2
    w = _time_weights(q, session_end)
    depth = q["bid_size"] + q["ask_size"]
    q = q.assign(w=w, ws=w * (q["ask"] - q["bid"]) / mid_q,
                 wd=w * np.where(depth > 0, (q["bid_size"] - q["ask_size"]) / depth.where(depth > 0, 1), 0.0))
    per_quote = q.groupby(keys).agg(w=("w", "sum"), ws=("ws", "sum"), wd=("wd", "sum"), n_quotes=("time", "size"))

    b = _standing_quotes(bars, q)
    mid = (b["bid"] + b["ask"]) / 2
    tick = np.sign(b.groupby(keys)["close"].diff().fillna(0.0))
    sign = np.where(b["close"] > mid, 1.0, np.where(b["close"] < mid, -1.0, tick))
    sign = np.where(mid.isna(), tick, sign)
    ret_bps = 1e4 * np.log(b["close"]).groupby([b["symbol"], b["date"]]).diff()
    b = b.assign(sign=sign, signed=sign * b["volume"], eff=2 * (b["wap"] - mid).abs() / mid * b["volume"],
                 eff_v=np.where(mid.notna(), b["volume"], 0.0), ret=ret_bps, pv=b["wap"] * b["volume"],
                 size=b["volume"] / b["count"].where(b["count"] > 0))
    g = b.groupby(keys)
    out = pd.DataFrame({
        "effective_spread": g["eff"].sum() / g["eff_v"].sum().where(g["eff_v"].sum() > 0),
        "trade_flow_imbalance": g["signed"].sum() / g["volume"].sum().where(g["volume"].sum() > 0),
        "realized_vol": np.sqrt((g["ret"].apply(lambda r: ((r.dropna() / 1e4) ** 2).sum()))),
        "vwap_deviation": np.log(g["close"].last() / (g["pv"].sum() / g["volume"].sum().where(g["volume"].sum() > 0))),
        "trade_size_mean": g["size"].mean(),
        "trade_size_p90": g["size"].quantile(0.9),
        "n_bars": g.size(),
    })

    def kyle(frame: pd.DataFrame) -> float:
        x, y = frame["signed"].to_numpy() / 1e6, frame["ret"].to_numpy()
        ok = np.isfinite(y)
        x, y = x[ok], y[ok]
        if len(x) < 3 or np.allclose(x, x.mean()):
            return np.nan
        x = x - x.mean()
        return float((x * (y - y.mean())).sum() / (x * x).sum())

    out["kyle_lambda"] = g[["signed", "ret"]].apply(kyle)
    out = out.join(per_quote, how="left")
    out["quoted_spread_tw"] = out["ws"] / out["w"].where(out["w"] > 0)
    out["depth_imbalance"] = out["wd"] / out["w"].where(out["w"] > 0)
    out["n_quotes"] = out["n_quotes"].fillna(0).astype(np.int64)
    return out.reset_index()[COLUMNS]
