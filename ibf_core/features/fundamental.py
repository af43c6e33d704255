"""Fundamental, earnings and sector features from the point-in-time frames of ``ibf_core.fundamentals.inputs``.

Point in time: a row of session d reads only values whose ``date`` (the first session that may use them: after-close
reports count for the next session) is on or before d, as-of joined per symbol (the newest such value; nothing
is interpolated and nothing published later reaches an earlier row). Snapshot fields (shares outstanding, analyst
target and ratings) exist from their first recording on and are NULL before it: they are never back-filled.

The one exception is the classification (sector, industry): it is read from the newest recording of a symbol
and applied to its whole history, as index providers' static classifications are; sector changes are rare, and
the codes carry no return information of their own (they only group symbols).

Sector features (group ``cross_asset``: they are price statistics grouped by sector) compare a symbol with the
other symbols of its sector the same date (leave-one-out), so a sector with one symbol has none.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping

import numpy as np
import pandas as pd

from ibf_core.calendar import all_sessions
from ibf_core.features import Feature, Panel, run_talib

# Heavy imports (talib) stay inside the functions that need them: importing this module loads none of them.

POST_EARNINGS_DRIFT_SESSIONS = 20  # the window after a report in which post-earnings drift is documented
SURPRISE_CLIP = 100.0  # percent: a near-zero estimate gives surprises of thousands of percent
CATEGORY_MODULUS = 32749  # codes are crc32(name) % CATEGORY_MODULUS + 1: stable across runs and machines
_DAY_NS = 86_400_000_000_000
_KEY = np.int64(1 << 32)


def _f(name: str, description: str, group: str = "fundamentals") -> Feature:
    # As-of joined (already the newest known value): no forward fill on top, no warm-up of their own.
    return Feature(name, description, group, 1, ffill=False)  # type: ignore[arg-type]


FEATURES: list[Feature] = [
    _f("sector_code", "Alpha Vantage sector as a stable category code (crc32 % 32749 + 1; NULL when unknown)"),
    _f("industry_code", "Alpha Vantage industry as a stable category code (crc32 % 32749 + 1; NULL when unknown)"),
    _f("earn_sessions_since", "Sessions since the newest earnings report usable that session (0: it lands today)"),
    _f("earn_sessions_to", "Sessions to the next announcement scheduled (EARNINGS_CALENDAR) as known that session"),
    _f("earn_surprise_pct", "Surprise % of the newest usable earnings report (clipped to +-100)"),
    _f("earn_drift_window", f"1 within {POST_EARNINGS_DRIFT_SESSIONS} sessions after a report (post-earnings drift), else 0"),
    _f("earn_drift_signal", f"Sign of the newest surprise inside the {POST_EARNINGS_DRIFT_SESSIONS}-session drift window, else 0"),
    _f("earn_eps_yoy", "Reported EPS against the same quarter a year earlier: (eps - eps_4q) / |eps_4q|"),
    _f("log_market_cap", "log(shares outstanding x close); shares from the newest recorded OVERVIEW snapshot"),
    _f("turnover_20", "20-session mean volume / shares outstanding (recorded snapshot)"),
    _f("analyst_upside", "Analyst target price / close - 1 (recorded snapshot)"),
    _f("analyst_score", "Analyst ratings (2 strong buy + buy - sell - 2 strong sell) / ratings (recorded snapshot)"),
    _f("sector_rel_ret_20", "logret_20 minus the mean of the other symbols of the sector that date", "cross_asset"),
    _f("sector_rel_hv_20", "hv_20 minus the mean hv_20 of the other symbols of the sector that date", "cross_asset"),
    _f("sector_mom_rank", "Percentile rank (0..1] of the sector's mean logret_20 among the sectors that date "
       "(sector rotation)", "cross_asset"),
    _f("beta_sector_60", "Beta of daily log returns to the leave-one-out equal-weighted sector index, 60 sessions "
       "(at least 50 with both returns)",
       "cross_asset"),
]
COLUMNS = [f.name for f in FEATURES]


def category_code(name: object) -> float:
    """The stable code of a sector or industry name (NaN for a missing or empty name)."""
    if not isinstance(name, str) or not name.strip() or name.strip().lower() in ("none", "-", "n/a"):
        return float("nan")
    return float(zlib.crc32(name.strip().upper().encode()) % CATEGORY_MODULUS + 1)


def _days(values: object) -> np.ndarray:
    """Dates as int64 days since the epoch."""
    return pd.to_datetime(pd.Series(values)).dt.normalize().to_numpy(dtype="datetime64[ns]").astype(np.int64) // _DAY_NS


def _row_days(panel: Panel) -> np.ndarray:
    return panel.dates.astype("datetime64[ns]").astype(np.int64) // _DAY_NS


def asof(panel: Panel, symbols: np.ndarray, days: np.ndarray) -> np.ndarray:
    """Per panel row, the index of the newest event of its symbol with day <= the row's day (-1: none).

    Among events of the same symbol and day the last one in input order wins.
    """
    found = np.full(panel.n, -1, dtype=np.int64)
    sym = pd.Index(panel.symbols).get_indexer(np.asarray(symbols, dtype=object))
    known = np.flatnonzero((sym >= 0) & (days > -(1 << 30)))
    if not len(known):
        return found
    keys = sym[known].astype(np.int64) * _KEY + days[known]
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    row_keys = panel.sym.astype(np.int64) * _KEY + _row_days(panel)
    at = np.searchsorted(sorted_keys, row_keys, side="right") - 1
    ok = at >= 0
    ok[ok] = sorted_keys[at[ok]] // _KEY == panel.sym[ok]
    found[ok] = known[order[at[ok]]]
    return found


def session_ordinals(days: np.ndarray) -> np.ndarray:
    """NYSE session ordinal of each day (a day that is no session: the next session's)."""
    sessions = all_sessions().to_numpy(dtype="datetime64[ns]").astype(np.int64) // _DAY_NS
    return np.searchsorted(sessions, days, side="left").astype(np.float64)


def _take(values: np.ndarray, index: np.ndarray) -> np.ndarray:
    out = np.full(len(index), np.nan)
    hit = index >= 0
    out[hit] = values[index[hit]]
    return out


def _numbers(frame: pd.DataFrame, column: str) -> np.ndarray:
    if column not in frame.columns:
        return np.full(len(frame), np.nan)
    return pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=np.float64)


def compute(panel: Panel, rows: Mapping[str, np.ndarray], inputs=None) -> None:
    """Fill :data:`COLUMNS` of ``rows`` (``logret_20``, ``hv_20`` and the bars must be final); NaN without inputs."""
    for name in COLUMNS:
        rows[name][:] = np.nan
    if inputs is None:
        return
    sector = _classification(panel, inputs.overview, rows)
    _earnings(panel, inputs.earnings, rows)
    _calendar(panel, inputs.calendar, inputs.earnings, rows)
    _snapshots(panel, inputs.overview, rows)
    if sector is not None:
        _sector(panel, sector, rows)


def _classification(panel: Panel, overview: pd.DataFrame, rows: Mapping[str, np.ndarray]) -> np.ndarray | None:
    """Sector and industry codes per row from each symbol's newest recording; the sector code array, or None."""
    if overview.empty:
        return None
    newest = overview.assign(_d=pd.to_datetime(overview["date"])).sort_values(["symbol", "_d"], kind="stable")
    newest = newest.groupby("symbol", sort=False).tail(1)
    index = pd.Index(panel.symbols).get_indexer(newest["symbol"].to_numpy(dtype=object))
    for column, feature in (("sector", "sector_code"), ("industry", "industry_code")):
        per_symbol = np.full(panel.n_symbols, np.nan)
        codes = np.array([category_code(v) for v in newest.get(column, pd.Series([None] * len(newest)))])
        per_symbol[index[index >= 0]] = codes[index >= 0]
        rows[feature][:] = per_symbol[panel.sym]
    return rows["sector_code"]


def _earnings(panel: Panel, earnings: pd.DataFrame, rows: Mapping[str, np.ndarray]) -> None:
    if earnings.empty:
        return
    frame = earnings.assign(_fiscal=pd.to_datetime(earnings["fiscal_date_ending"]), _day=_days(earnings["date"]))
    frame = frame.sort_values(["symbol", "_day", "_fiscal"], kind="stable").reset_index(drop=True)
    hit = asof(panel, frame["symbol"].to_numpy(dtype=object), frame["_day"].to_numpy())
    since = session_ordinals(_row_days(panel)) - _take(session_ordinals(frame["_day"].to_numpy()), hit)
    rows["earn_sessions_since"][:] = since
    surprise = np.clip(_take(_numbers(frame, "surprise_pct"), hit), -SURPRISE_CLIP, SURPRISE_CLIP)
    rows["earn_surprise_pct"][:] = surprise
    window = np.where(np.isfinite(since), (since < POST_EARNINGS_DRIFT_SESSIONS).astype(np.float64), np.nan)
    rows["earn_drift_window"][:] = window
    rows["earn_drift_signal"][:] = np.where(window == 1.0, np.sign(np.nan_to_num(surprise)), window * 0.0)
    rows["earn_eps_yoy"][:] = _take(_eps_yoy(frame), hit)


def _eps_yoy(frame: pd.DataFrame) -> np.ndarray:
    """Per report: EPS growth against the report of the fiscal quarter a year earlier (same symbol, both known)."""
    eps = _numbers(frame, "reported_eps")
    key = pd.MultiIndex.from_arrays([frame["symbol"].to_numpy(dtype=object), frame["_fiscal"].dt.to_period("Q")])
    by_quarter = pd.Series(eps, index=key)
    by_quarter = by_quarter[~by_quarter.index.duplicated(keep="last")]
    earlier = pd.MultiIndex.from_arrays([frame["symbol"].to_numpy(dtype=object), frame["_fiscal"].dt.to_period("Q") - 4])
    before = by_quarter.reindex(earlier).to_numpy(dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        growth = (eps - before) / np.abs(before)
    growth[~np.isfinite(growth)] = np.nan
    return growth


def _calendar(panel: Panel, calendar: pd.DataFrame, earnings: pd.DataFrame, rows: Mapping[str, np.ndarray]) -> None:
    """Sessions to the nearest scheduled report on or after the row's session, from the newest recording."""
    if calendar.empty:
        return
    frame = calendar.assign(_day=_days(calendar["date"]), _report=_days(calendar["report_date"]))
    today = _row_days(panel)
    # Per recording, each scheduled date is a candidate; the newest recording wins, within it the nearest date
    # still ahead of the row. Sorting reports descending within a recording makes the as-of pick the nearest.
    frame = frame.sort_values(["symbol", "_day", "_report"], ascending=[True, True, False], kind="stable").reset_index(drop=True)
    hit = asof(panel, frame["symbol"].to_numpy(dtype=object), frame["_day"].to_numpy())
    report = _take(frame["_report"].to_numpy(dtype=np.float64), hit)
    ahead = np.isfinite(report) & (report >= today)
    to = np.full(panel.n, np.nan)
    to[ahead] = session_ordinals(report[ahead].astype(np.int64)) - session_ordinals(today[ahead])
    rows["earn_sessions_to"][:] = to


def _snapshots(panel: Panel, overview: pd.DataFrame, rows: Mapping[str, np.ndarray]) -> None:
    if overview.empty:
        return
    frame = overview.assign(_day=_days(overview["date"])).sort_values(["symbol", "_day"], kind="stable").reset_index(drop=True)
    hit = asof(panel, frame["symbol"].to_numpy(dtype=object), frame["_day"].to_numpy())
    shares = _take(_numbers(frame, "shares_outstanding"), hit)
    shares[~(shares > 0)] = np.nan
    close = panel.close
    with np.errstate(divide="ignore", invalid="ignore"):
        rows["log_market_cap"][:] = np.log(shares * close)
        volume = np.where(panel.input_missing()["volume"], np.nan, panel.raw_volume)
        rows["turnover_20"][:] = _trailing_mean(panel, volume, 20) / shares
        target = _take(_numbers(frame, "analyst_target_price"), hit)
        target[~(target > 0)] = np.nan
        rows["analyst_upside"][:] = target / close - 1.0
        counts = {k: _take(_numbers(frame, f"analyst_{k}"), hit) for k in ("strong_buy", "buy", "hold", "sell", "strong_sell")}
        total = sum(counts.values())
        score = (2 * counts["strong_buy"] + counts["buy"] - counts["sell"] - 2 * counts["strong_sell"]) / total
        score[~(total > 0)] = np.nan
        rows["analyst_score"][:] = score


def _trailing_mean(panel: Panel, values: np.ndarray, k: int) -> np.ndarray:
    """Mean of the symbol's last ``k`` values (NaN until k exist or when one of them is NaN)."""
    total = np.cumsum(np.nan_to_num(values))
    window = total - panel.lag(total, k)
    first = panel.pos == k - 1  # the lag is undefined there: the window is the symbol's first k values
    base = panel.starts[panel.sym[first]]
    window[first] = total[first] - np.where(base > 0, total[np.maximum(base - 1, 0)], 0.0)
    out = window / k
    out[(panel.pos < k - 1) | (panel.window_count(~np.isfinite(values), k) > 0)] = np.nan
    return out


def _sector(panel: Panel, sector: np.ndarray, rows: Mapping[str, np.ndarray]) -> None:
    """Leave-one-out sector statistics per date (symbols without a sector get NaN)."""
    from ibf_core.features.cross_asset import _SUMS, TALIB_CALLS, _beta_corr, percentile_rank, talib_inputs
    from ibf_core.features.technical import log_returns

    known = np.isfinite(sector)
    if not known.any():
        return
    codes, group = np.unique(sector[known], return_inverse=True)
    g = np.full(panel.n, -1, dtype=np.int64)
    g[known] = group
    n_groups = len(codes)
    cell = panel.day.astype(np.int64) * n_groups + np.maximum(g, 0)

    size = len(panel.days) * n_groups

    def sector_sums(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(per date x sector sum, count of the finite values of symbols with a sector, which rows those are)."""
        valid = known & np.isfinite(values)
        total = np.bincount(cell[valid], weights=values[valid], minlength=size)
        return total, np.bincount(cell[valid], minlength=size).astype(np.float64), valid

    def loo_mean(values: np.ndarray) -> np.ndarray:
        total, count, valid = sector_sums(values)
        with np.errstate(divide="ignore", invalid="ignore"):
            mean = (total[cell] - np.where(valid, values, 0.0)) / (count[cell] - valid)
        mean[~known | ~np.isfinite(mean)] = np.nan
        return mean

    rows["sector_rel_ret_20"][:] = rows["logret_20"] - loo_mean(rows["logret_20"])
    rows["sector_rel_hv_20"][:] = rows["hv_20"] - loo_mean(rows["hv_20"])
    # Sector momentum: each sector's mean logret_20 that date, ranked among the sectors with a value.
    total, count, _ = sector_sums(rows["logret_20"])
    with np.errstate(divide="ignore", invalid="ignore"):
        grid = (total / count).reshape(len(panel.days), n_groups)
    ranked = percentile_rank(grid)
    ranked[np.isfinite(grid).sum(axis=1) < 2] = np.nan
    rank = ranked.reshape(-1)[cell]
    rank[~known] = np.nan
    rows["sector_mom_rank"][:] = rank
    bench = loo_mean(log_returns(panel))
    block = panel.scratch(2 * len(_SUMS) + 1)
    inputs = talib_inputs(panel, bench, block[: len(_SUMS)])
    sums = dict(zip(_SUMS, block[len(_SUMS): 2 * len(_SUMS)]))
    run_talib(TALIB_CALLS, inputs, panel.starts, panel.counts, {f"_sum_{k}": v for k, v in sums.items()})
    _beta_corr(sums, rows["beta_sector_60"], block[-1])
