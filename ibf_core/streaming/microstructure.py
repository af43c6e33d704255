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
- ``volume``: shares traded in the bars; ``n_bars``, ``n_quotes``; ``coverage``: share of the regular
  session's 4,680 5-second bars that were collected (a collector started at noon gives about 0.5).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from ibf_core.calendar import session_bounds, trading_days
from ibf_core.storage.tables import Column, TableSpec
from ibf_core.streaming.tables import INTRADAY_BARS, QUOTES

# Heavy imports (duckdb) stay inside the functions that need them: importing this module loads none of them.

BAR_SECONDS = 5
SESSION_BARS = 390 * 60 // BAR_SECONDS  # 09:30-16:00 New York (half days count against the full session)
COLUMNS = [
    "symbol", "date", "quoted_spread_tw", "effective_spread", "depth_imbalance", "trade_flow_imbalance",
    "kyle_lambda", "realized_vol", "vwap_deviation", "trade_size_mean", "trade_size_p90", "volume", "n_bars",
    "n_quotes", "coverage",
]  # fmt: skip
_DESCRIPTIONS = {
    "quoted_spread_tw": "Time-weighted relative quoted spread (ask - bid) / mid of the top-of-book quotes",
    "effective_spread": "Volume-weighted effective spread 2 |wap - mid| / mid of the 5-second TRADES bars",
    "depth_imbalance": "Time-weighted (bid size - ask size) / (bid size + ask size)",
    "trade_flow_imbalance": "Signed volume / volume, bars signed by Lee-Ready (quote rule, tick test at the mid)",
    "kyle_lambda": "Kyle's lambda: 5-second log return (bps) per million shares of signed volume (least squares)",
    "realized_vol": "Square root of the sum of squared 5-second log returns of the session",
    "vwap_deviation": "log(last close / session VWAP)",
    "trade_size_mean": "Mean shares per trade (bar volume / trade count)",
    "trade_size_p90": "90th percentile of shares per trade over the bars",
    "volume": "Shares traded in the collected bars",
}
MICROSTRUCTURE_DAILY = TableSpec(
    name="microstructure_daily",
    description="The session's microstructure from the live tables (intraday_bars, quotes), per symbol and NYSE "
    "session: rows only where ibf stream collected that session.",
    columns=(
        Column("symbol", pa.string(), "Ticker symbol"),
        Column("date", pa.date32(), "NYSE session"),
        *(Column(name, pa.float64(), text) for name, text in _DESCRIPTIONS.items()),
        Column("n_bars", pa.int64(), "5-second TRADES bars collected"),
        Column("n_quotes", pa.int64(), "Top-of-book quotes collected"),
        Column("coverage", pa.float64(), "n_bars / 4,680 (the bars of a full regular session)"),
    ),
)


def _standing_quotes(bars: pd.DataFrame, quotes: pd.DataFrame) -> pd.DataFrame:
    """Each bar with the quote standing at its end (the newest quote at or before it), per symbol."""
    ends = bars.assign(end=bars["time"] + pd.Timedelta(seconds=BAR_SECONDS)).sort_values("end")
    book = quotes[["symbol", "time", "bid", "ask"]].dropna().sort_values("time")
    joined = pd.merge_asof(ends, book.rename(columns={"time": "quote_time"}), left_on="end", right_on="quote_time",
                           by="symbol", direction="backward")
    return joined.sort_values(["symbol", "time"]).reset_index(drop=True)


def _time_weights(quotes: pd.DataFrame, session_end: pd.Series) -> np.ndarray:
    """Seconds each quote stood: until the symbol's next quote, the last one until the session's last bar end.
    ``quotes`` is sorted by symbol and time (so each symbol-day is one contiguous block)."""
    if quotes.empty:
        return np.zeros(0)
    t = pd.DatetimeIndex(quotes["time"]).asi8
    key = quotes.groupby(["symbol", "date"], sort=False).ngroup().to_numpy()
    last = np.r_[key[1:] != key[:-1], True]
    ends = quotes[["symbol", "date"]].merge(session_end.rename("end").reset_index(), on=["symbol", "date"], how="left")["end"]
    nxt = np.r_[t[1:], 0]
    nxt[last] = pd.DatetimeIndex(ends).asi8[last]
    return np.clip((nxt - t) / 1e9, 0.0, None)


def microstructure_daily(bars: pd.DataFrame, quotes: pd.DataFrame) -> pd.DataFrame:
    """The measures above per (symbol, date) present in ``bars`` (TRADES rows) and ``quotes``."""
    bars = bars[bars.get("what", "TRADES") == "TRADES"].copy() if "what" in bars else bars.copy()
    if bars.empty:
        return pd.DataFrame(columns=COLUMNS)
    for frame in (bars, quotes):
        # Parquet gives microseconds, frames built in memory nanoseconds: merge_asof needs one unit.
        frame["time"] = pd.to_datetime(frame["time"], utc=True).astype("datetime64[ns, UTC]")
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
    finite = np.isfinite(b["ret"].to_numpy())
    kx, ky = np.where(finite, b["signed"].to_numpy() / 1e6, 0.0), np.where(finite, b["ret"].to_numpy(), 0.0)
    b = b.assign(ret_sq=(ky / 1e4) ** 2, k_n=finite.astype(float), k_x=kx, k_y=ky, k_xx=kx * kx, k_xy=kx * ky)
    g = b.groupby(keys)
    out = pd.DataFrame({
        "effective_spread": g["eff"].sum() / g["eff_v"].sum().where(g["eff_v"].sum() > 0),
        "trade_flow_imbalance": g["signed"].sum() / g["volume"].sum().where(g["volume"].sum() > 0),
        "realized_vol": np.sqrt(g["ret_sq"].sum()),
        "vwap_deviation": np.log(g["close"].last() / (g["pv"].sum() / g["volume"].sum().where(g["volume"].sum() > 0))),
        "trade_size_mean": g["size"].mean(),
        "trade_size_p90": g["size"].quantile(0.9),
        "volume": g["volume"].sum(),
        "n_bars": g.size(),
    })

    # Least-squares slope per group from sums (the same as centring each group, without a Python loop).
    n, sx, sy = g["k_n"].sum(), g["k_x"].sum(), g["k_y"].sum()
    sxx, sxy = g["k_xx"].sum(), g["k_xy"].sum()
    var = sxx - sx * sx / n.where(n > 0)
    flat = var <= 1e-12 * sxx.where(sxx > 0, 1.0)
    out["kyle_lambda"] = ((sxy - sx * sy / n.where(n > 0)) / var).where((n >= 3) & ~flat)
    out = out.join(per_quote, how="left")
    out["quoted_spread_tw"] = out["ws"] / out["w"].where(out["w"] > 0)
    out["depth_imbalance"] = out["wd"] / out["w"].where(out["w"] > 0)
    out["n_quotes"] = out["n_quotes"].fillna(0).astype(np.int64)
    out["coverage"] = out["n_bars"] / SESSION_BARS
    return out.reset_index()[COLUMNS]


def sessions_from_store(
    store: object, symbols: list[str], start: object, end: object, now: pd.Timestamp | None = None
) -> tuple[pd.DataFrame, list[str]]:
    """(``microstructure_daily`` rows of ``symbols`` x the sessions in [start, end] the live tables hold, the
    sessions skipped because their close has not passed at ``now``): a session is measured only once it is over."""
    from ibf_core.streaming.store import partition_name

    now = pd.Timestamp.now(tz="UTC") if now is None else pd.Timestamp(now).tz_convert("UTC")
    closed, open_days = [], []
    for day in trading_days(start, end):
        bounds = session_bounds(day.date())
        (closed if bounds is not None and bounds[1] <= now else open_days).append(day)
    stored = set(store.partitions(INTRADAY_BARS))  # listed once: a 10-year backfill asks for millions of names
    names = [n for n in (partition_name(d, s) for d in closed for s in symbols) if n in stored]
    if not names:
        return pd.DataFrame(columns=COLUMNS), [f"{d:%Y-%m-%d}" for d in open_days]
    bars = store.read_partitions(INTRADAY_BARS, names).to_pandas()
    book = store.read_partitions(QUOTES, names).to_pandas()
    if book.empty:
        book = pd.DataFrame(columns=QUOTES.column_names)
    return microstructure_daily(bars, book), [f"{d:%Y-%m-%d}" for d in open_days]


def check_measures(frame: pd.DataFrame) -> object:
    """Every measure finite or NULL, spreads >= 0, imbalances in [-1, 1], coverage in [0, 1]."""
    from ibf_core.market.quality import MAX_EXAMPLES, QualityResult

    measures = [c for c in _DESCRIPTIONS if c in frame]
    values = frame[measures].apply(pd.to_numeric, errors="coerce") if len(frame) else frame[measures]
    bad = pd.Series(False, index=frame.index)
    reasons: dict[str, int] = {}
    rules = {
        "infinite": np.isinf(values.to_numpy(dtype=float)).any(axis=1) if len(frame) else bad.to_numpy(),
        "negative spread": ((values["quoted_spread_tw"] < 0) | (values["effective_spread"] < 0)).to_numpy(),
        "imbalance outside [-1, 1]": ((values["depth_imbalance"].abs() > 1 + 1e-12)
                                      | (values["trade_flow_imbalance"].abs() > 1 + 1e-12)).to_numpy(),
        "coverage outside [0, 1]": ((frame["coverage"] < 0) | (frame["coverage"] > 1 + 1e-12)).to_numpy(),
    }
    for name, mask in rules.items():
        if mask.any():
            reasons[name] = int(mask.sum())
            bad |= mask
    examples = [f"{r.symbol} {pd.Timestamp(r.date).date()}" for r in frame[bad.to_numpy()].head(MAX_EXAMPLES).itertuples()]
    return QualityResult(
        "measures_finite", not bad.any(), f"{int(bad.sum())} of {len(frame)} session rows out of range",
        {"violations": reasons, "examples": examples},
    )
