"""What the live tables say about the stream: the newest session's rows, stream lag, gaps in the 5-second bar
sequence during market hours, crossed quotes. Pure functions over frames (the Dagster checks call them)."""

from __future__ import annotations

import pandas as pd

from ibf_core.calendar import market_is_open, session_bounds
from ibf_core.market.quality import MAX_EXAMPLES, QualityResult
from ibf_core.storage.interface import TableStore
from ibf_core.storage.tables import TableSpec

BAR_SECONDS = 5


def newest_session(store: TableStore, spec: TableSpec) -> tuple[str | None, pd.DataFrame]:
    """(the newest session date stored in the live table ``spec``, its rows); (None, empty) before any."""
    names = store.partitions(spec) if store.exists() else []
    if not names:
        return None, pd.DataFrame(columns=spec.column_names)
    day = max(name.split(".", 1)[0] for name in names)
    rows = store.read_partitions(spec, [n for n in names if n.startswith(f"{day}.")]).to_pandas()
    return day, rows


def stream_lag(bars: pd.DataFrame, now: pd.Timestamp) -> pd.Series:
    """Seconds from each symbol's newest bar end to ``now`` (how far the stored stream trails the market)."""
    if bars.empty:
        return pd.Series(dtype=float)
    ends = pd.to_datetime(bars["time"], utc=True) + pd.Timedelta(seconds=BAR_SECONDS)
    return (now - ends.groupby(bars["symbol"]).max()).dt.total_seconds().sort_values(ascending=False)


def check_stream_lag(bars: pd.DataFrame, now: pd.Timestamp, max_lag_s: float) -> QualityResult:
    """During market hours every streamed symbol's newest bar ended at most ``max_lag_s`` ago; closed: passes."""
    now = pd.Timestamp(now).tz_convert("UTC")
    if not market_is_open(now):
        return QualityResult("stream_lag", True, f"market closed at {now:%Y-%m-%d %H:%M} UTC: lag not judged", {})
    lags = stream_lag(bars, now)
    if lags.empty:
        return QualityResult("stream_lag", False, "market open and no bar of this session is stored (is ibf stream running?)", {})
    late = lags[lags > max_lag_s]
    return QualityResult(
        "stream_lag",
        late.empty,
        f"{len(late)} of {len(lags)} symbols' newest bar is more than {max_lag_s:g} s old (worst {lags.iloc[0]:.0f} s)",
        {"lag_seconds_p50": float(lags.median()), "lag_seconds_max": float(lags.iloc[0]),
         "late_symbols": {s: round(float(v), 1) for s, v in late.head(MAX_EXAMPLES).items()}},
    )


def bar_gaps(bars: pd.DataFrame, now: pd.Timestamp | None = None) -> pd.DataFrame:
    """Per symbol and bar type: 5-second bars missing between the first stored bar and the last one (or, while
    ``now`` is inside that session, the bars due by now), inside the regular session. Columns ``symbol, what, expected, stored, missing``."""
    out = []
    if bars.empty:
        return pd.DataFrame(columns=["symbol", "what", "expected", "stored", "missing", "first_missing"])
    frame = bars.assign(time=pd.to_datetime(bars["time"], utc=True))
    for (symbol, what, date), group in frame.groupby(["symbol", "what", "date"], sort=True):
        bounds = session_bounds(pd.Timestamp(date).date())
        if bounds is None:
            continue
        open_, close = bounds
        times = group["time"][(group["time"] >= open_) & (group["time"] < close)].drop_duplicates().sort_values()
        if times.empty:
            continue
        last = times.iloc[-1]
        now_utc = None if now is None else pd.Timestamp(now).tz_convert("UTC")
        if now_utc is not None and open_ <= now_utc < close:  # a live session: bars due by now (one in delivery)
            last = max(last, now_utc - pd.Timedelta(seconds=2 * BAR_SECONDS))
        grid = pd.date_range(times.iloc[0], last, freq=f"{BAR_SECONDS}s")
        missing = grid.difference(pd.DatetimeIndex(times))
        out.append({"symbol": symbol, "what": what, "expected": len(grid), "stored": len(times), "missing": len(missing),
                    "first_missing": missing[0].isoformat() if len(missing) else None})
    return pd.DataFrame(out, columns=["symbol", "what", "expected", "stored", "missing", "first_missing"])


def check_bar_gaps(bars: pd.DataFrame, now: pd.Timestamp | None = None) -> QualityResult:
    """No 5-second bar missing inside the stored stretch of the session (a reconnect that lost bars shows here)."""
    gaps = bar_gaps(bars, now)
    if gaps.empty:
        return QualityResult("no_gaps_in_session", True, "no bar of a regular session stored", {})
    bad = gaps[gaps["missing"] > 0].sort_values("missing", ascending=False)
    return QualityResult(
        "no_gaps_in_session",
        bad.empty,
        f"{len(bad)} of {len(gaps)} streams miss bars: {int(gaps['missing'].sum())} of {int(gaps['expected'].sum())} 5-second bars",
        {"gaps": {f"{r.symbol} {r.what}": {"missing": int(r.missing), "first_missing": r.first_missing}
                  for r in bad.head(MAX_EXAMPLES).itertuples()}},
    )


def check_crossed_quotes(quotes: pd.DataFrame) -> QualityResult:
    """No stored quote with bid above ask (a locked book, bid = ask, is allowed)."""
    both = quotes.dropna(subset=["bid", "ask"])
    crossed = both[both["bid"] > both["ask"]]
    examples = [f"{r.symbol} {pd.Timestamp(r.time).isoformat()} bid {r.bid} > ask {r.ask}" for r in crossed.head(MAX_EXAMPLES).itertuples()]
    return QualityResult(
        "no_crossed_quotes",
        crossed.empty,
        f"{len(crossed)} of {len(both)} quotes crossed (bid > ask)",
        {"examples": examples, "symbols": sorted(crossed["symbol"].unique().tolist())},
    )


def check_unique_keys(rows: pd.DataFrame, key: list[str]) -> QualityResult:
    """No duplicated key among ``rows``."""
    dup = rows[rows.duplicated(key, keep=False)]
    examples = [" ".join(str(v) for v in r) for r in dup[key].head(MAX_EXAMPLES).itertuples(index=False)]
    return QualityResult("unique_keys", dup.empty, f"{len(dup)} of {len(rows)} rows share a key", {"examples": examples})
