"""``bar_issues``: what a load of market bars repaired, dropped, filled or reported, and every NYSE session missing
inside a symbol's stored range -- written with the bars of the same load, queryable as the DuckDB view ``bar_issues``.

Layout: ``lake/bar_issues/<SYMBOL>.parquet``, one file per symbol like ``market_bars``. A load of symbols x
[start, end] replaces, per symbol, the issues dated inside [start, end] (so loading a slice twice records it once)
and recomputes the symbol's ``missing_session`` rows over its whole stored range, so they always describe the
stored bars (a missing session outside the slice keeps the row that first recorded it).

Writing: one ``TableStore.write`` over the ``market_bars`` and ``bar_issues`` partitions of the symbols (every
market_bars load goes through here, so loads of the same symbol are serialized): the issues and the bars slice are
one transaction. On the lake every file is staged before the first swap (a failure while preparing changes
neither table; the swaps are renames only, and re-running the load repairs the one window a crash between them
could leave); on DuckLake it is one commit.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa

from ibf_core.calendar import trading_days
from ibf_core.market.checks import DROPPED, FILLED, REPAIRED, REPORTED, BarSlice
from ibf_core.storage.interface import TableStore, Transaction, WriteResult
from ibf_core.storage.tables import MARKET_BARS, Column, TableSpec

MISSING_SESSION = "missing_session"

BAR_ISSUES = TableSpec(
    name="bar_issues",
    description=(
        "Every bar a load repaired, dropped or filled, each format fact it reported (no volume, close-only), and "
        "every NYSE session missing inside a symbol's stored range."
    ),
    key=("symbol", "date", "rule", "detail"),
    columns=(
        Column("symbol", pa.string(), "Ticker symbol"),
        Column("date", pa.date32(), "Date of the row concerned; for a per-symbol issue the first row of the slice it covers"),
        Column(
            "rule",
            pa.string(),
            "What was wrong: open_outside_range, close_outside_range, high_below_low, duplicate_date, not_a_session, "
            "missing_close, nonpositive_price, infinite_value, negative_volume, missing_open/high/low/adj_close/volume, "
            "constant_volume, close_only, missing_session",
        ),
        Column("action", pa.string(), "repaired, dropped, filled or reported"),
        Column("detail", pa.string(), "Where (file and row) and what: the values before and after, or why"),
        Column("source", pa.string(), "Source of the load that recorded it: csv, sample or ibkr"),
        Column("recorded_at", pa.timestamp("us", tz="UTC"), "When that load wrote it, UTC"),
    ),
)
_COLUMNS = [c.name for c in BAR_ISSUES.columns]


@dataclass(frozen=True)
class IssueSummary:
    """What a load recorded, counted (what the CLI and the asset metadata say)."""

    rows_repaired: int = 0
    rows_dropped: int = 0
    filled: int = 0
    reported: int = 0
    missing_sessions: int = 0
    by_rule: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, issues: pd.DataFrame) -> IssueSummary:
        actions = issues["action"].value_counts().to_dict() if len(issues) else {}
        missing = int((issues["rule"] == MISSING_SESSION).sum()) if len(issues) else 0
        by_rule = {str(k): int(v) for k, v in issues["rule"].value_counts().sort_index().items()} if len(issues) else {}
        return cls(
            int(actions.get(REPAIRED, 0)),
            int(actions.get(DROPPED, 0)),
            int(actions.get(FILLED, 0)),
            int(actions.get(REPORTED, 0)) - missing,
            missing,
            by_rule,
        )

    def line(self) -> str:
        """'N rows repaired, M dropped, see bar_issues' (+ filled columns, reports and missing sessions)."""
        extra = [
            f"{n} {what}"
            for n, what in (
                (self.filled, "column fills"),
                (self.reported, "reports"),
                (self.missing_sessions, "missing sessions"),
            )
            if n
        ]
        more = f" ({', '.join(extra)})" if extra else ""
        rows = "row" if self.rows_repaired == 1 else "rows"
        return f"{self.rows_repaired} {rows} repaired, {self.rows_dropped} dropped{more}, see bar_issues"


# ----- writing --------------------------------------------------------------------------------------------
def write_bars_and_issues(
    warehouse: TableStore,
    loaded: BarSlice,
    symbols: Sequence[str],
    start: dt.date,
    end: dt.date,
    source: str,
    now: dt.datetime | None = None,
) -> tuple[WriteResult, pd.DataFrame]:
    """Replace the market_bars slice by ``loaded.bars`` and the slice's issues by ``loaded.issues`` (plus the
    missing sessions); returns the bars write and the issues recorded inside the slice."""
    names = sorted(set(symbols))
    lo, hi = pd.Timestamp(start).normalize(), pd.Timestamp(end).normalize()
    recorded_at = pd.Timestamp(now or dt.datetime.now(dt.timezone.utc)).tz_convert("UTC").floor("us")
    for spec in (MARKET_BARS, BAR_ISSUES):  # their views, so the stored dates can be queried
        warehouse.ensure_table(spec)
    context = _LoadContext.of(loaded.bars, lo, hi, source, recorded_at)

    def build(tx: Transaction) -> tuple[WriteResult, list[pd.DataFrame]]:
        dates = _dates_after_write(warehouse, loaded.bars, names, lo, hi)
        stored = tx.read_many(BAR_ISSUES, names)
        old = _frame(pa.concat_tables(list(stored.values()))) if stored else None
        rows = _issue_rows(old, loaded.issues.assign(source=source, recorded_at=recorded_at), dates, context)
        table = _to_arrow(rows)
        bounds = _symbol_bounds(rows["symbol"].to_numpy(dtype=object))
        for symbol in names:
            a, b = bounds.get(symbol, (0, 0))
            if a == b:
                if symbol in stored:
                    tx.delete(BAR_ISSUES, symbol)
                continue
            mine = table.slice(a, b - a)
            # A daily load leaves most symbols' issues as they were: their files are not rewritten.
            if symbol not in stored or not stored[symbol].cast(BAR_ISSUES.schema).equals(mine):
                tx.put(BAR_ISSUES, symbol, mine)
        in_slice = rows[rows["date"].between(lo, hi)]
        return tx.replace_slice(MARKET_BARS, loaded.bars, names, start, end), [in_slice]

    # One write: the issues and the bars of the load land together or not at all.
    write, recorded = warehouse.write([(spec, s) for spec in (MARKET_BARS, BAR_ISSUES) for s in names], build)
    recorded = [r for r in recorded if len(r)]
    return write, pd.concat(recorded, ignore_index=True) if recorded else _empty()


def _dates_after_write(
    warehouse: TableStore, bars: pd.DataFrame, names: Sequence[str], lo: pd.Timestamp, hi: pd.Timestamp
) -> dict[str, np.ndarray]:
    """Each symbol's stored dates (sorted datetime64) as they will be once the slice is replaced: outside it
    kept, inside it the new bars. Safe to read now: every writer of these symbols' bars holds our locks."""
    stored = warehouse.query(
        "SELECT symbol, date FROM market_bars WHERE list_contains(?, symbol) AND (date < ? OR date > ?) "
        "ORDER BY symbol, date",
        [list(names), lo.date(), hi.date()],
        # A damaged file of a symbol being loaded is quarantined by the bars write below (which says so); its rows
        # count as gone. One of another symbol is not this load's to judge.
        on_damaged=lambda path, reason: None,
    )
    out: dict[str, np.ndarray] = {}
    for frame in (stored, bars):  # each sorted by symbol and date; the two never share a date
        for symbol, days in _dates_by_symbol(frame):
            out[symbol] = np.union1d(out[symbol], days) if symbol in out else days
    return out


def _dates_by_symbol(frame: pd.DataFrame) -> list[tuple[str, np.ndarray]]:
    """(symbol, its dates) of a frame sorted by symbol, split at the symbol changes (no sort, no hashing)."""
    if frame.empty:
        return []
    symbols = frame["symbol"].to_numpy(dtype=object)
    days = pd.to_datetime(frame["date"]).to_numpy(dtype="datetime64[ns]")
    cuts = np.flatnonzero(symbols[1:] != symbols[:-1]) + 1
    heads = np.concatenate([[0], cuts])
    return [(str(symbols[h]), d) for h, d in zip(heads, np.split(days, cuts))]


@dataclass(frozen=True)
class _LoadContext:
    """What a missing session's detail says: how many symbols of the load have a bar that day."""

    lo: pd.Timestamp
    hi: pd.Timestamp
    n_symbols: int
    present: dict[pd.Timestamp, int]
    source: str
    recorded_at: pd.Timestamp

    @classmethod
    def of(cls, bars: pd.DataFrame, lo: pd.Timestamp, hi: pd.Timestamp, source: str, recorded_at: pd.Timestamp) -> _LoadContext:
        # (symbol, date) is unique after the bar policy: rows per date are symbols per date
        present = bars["date"].value_counts().to_dict() if len(bars) else {}
        return cls(lo, hi, int(bars["symbol"].nunique()), present, source, recorded_at)

    def detail(self, day: pd.Timestamp, first: pd.Timestamp, last: pd.Timestamp) -> str:
        span = f"inside the stored range {first.date()}..{last.date()}"
        if not self.lo <= day <= self.hi:
            return f"no bar on this NYSE session, {span} (found when loading {self.lo.date()}..{self.hi.date()})"
        if self.n_symbols < 2:
            return f"no bar on this NYSE session, {span}"
        have = self.present.get(day, 0)
        if have == 0:
            return f"vendor-wide gap: none of the {self.n_symbols} symbols loaded has a bar on this session ({span})"
        return f"{have} of the {self.n_symbols} symbols loaded have a bar on this session, this one not ({span})"


def _missing_pairs(dates: dict[str, np.ndarray]) -> pd.DataFrame:
    """(symbol, date, first, last): every NYSE session without a bar inside each symbol's stored range
    [first, last], all symbols at once (a presence matrix over the sessions the ranges span)."""
    symbols = [s for s, d in dates.items() if len(d)]
    if not symbols:
        return pd.DataFrame({"symbol": [], "date": pd.to_datetime([]), "first": pd.to_datetime([]), "last": pd.to_datetime([])})
    firsts = np.array([dates[s][0] for s in symbols], dtype="datetime64[ns]")
    lasts = np.array([dates[s][-1] for s in symbols], dtype="datetime64[ns]")
    sessions = trading_days(pd.Timestamp(firsts.min()).date(), pd.Timestamp(lasts.max()).date()).to_numpy(dtype="datetime64[ns]")
    present = np.zeros((len(symbols), len(sessions)), dtype=bool)
    for i, symbol in enumerate(symbols):
        days = dates[symbol]
        at = np.searchsorted(sessions, days)
        hit = at < len(sessions)
        hit[hit] = sessions[at[hit]] == days[hit]  # a stored date that is no session counts for nothing
        present[i, at[hit]] = True
    lo, hi = np.searchsorted(sessions, firsts), np.searchsorted(sessions, lasts, side="right")
    column = np.arange(len(sessions))
    inside = (column >= lo[:, None]) & (column < hi[:, None])
    row, col = np.nonzero(inside & ~present)
    return pd.DataFrame({
        "symbol": np.asarray(symbols, dtype=object)[row], "date": sessions[col], "first": firsts[row], "last": lasts[row],
    })


def _issue_rows(
    old: pd.DataFrame | None, new: pd.DataFrame, dates: dict[str, np.ndarray], context: _LoadContext
) -> pd.DataFrame:
    """Every symbol's issues after the load, sorted by symbol, date, rule, action, detail: other slices' rows,
    this slice's, and the missing sessions (one recorded outside the slice keeps the row that recorded it)."""
    missing = _missing_pairs(dates)
    keep = None
    if old is not None:
        keep = old[~old["date"].between(context.lo, context.hi) & (old["rule"] != MISSING_SESSION)]
        known = old.loc[old["rule"] == MISSING_SESSION, _COLUMNS]
        missing = missing.merge(known, on=["symbol", "date"], how="left")
        carried = missing["rule"].notna() & ~missing["date"].between(context.lo, context.hi)
    else:
        missing = missing.assign(**{c: None for c in _COLUMNS[2:]})
        carried = pd.Series(False, index=missing.index)
    fresh = ~carried
    missing.loc[fresh, "detail"] = [
        context.detail(day, first, last)
        for day, first, last in zip(missing.loc[fresh, "date"], missing.loc[fresh, "first"], missing.loc[fresh, "last"])
    ]
    missing.loc[fresh, ["rule", "action", "source"]] = [MISSING_SESSION, REPORTED, context.source]
    missing["recorded_at"] = pd.to_datetime(missing["recorded_at"], utc=True)
    missing.loc[fresh, "recorded_at"] = context.recorded_at
    parts = [p[_COLUMNS] for p in (keep, new, missing) if p is not None and len(p)]
    if not parts:
        return _empty()
    rows = pd.concat(parts, ignore_index=True).assign(date=lambda f: pd.to_datetime(f["date"]))
    return rows.sort_values(["symbol", "date", "rule", "action", "detail"], kind="stable").reset_index(drop=True)


def _symbol_bounds(symbols: np.ndarray) -> dict[str, tuple[int, int]]:
    """symbol -> [a, b) of its rows in an array sorted by symbol."""
    if not len(symbols):
        return {}
    cuts = np.flatnonzero(symbols[1:] != symbols[:-1]) + 1
    heads, tails = np.concatenate([[0], cuts]), np.concatenate([cuts, [len(symbols)]])
    return {str(symbols[a]): (int(a), int(b)) for a, b in zip(heads, tails)}


# ----- files ----------------------------------------------------------------------------------------------
def _empty() -> pd.DataFrame:
    frame = pd.DataFrame({c: pd.Series(dtype="object") for c in _COLUMNS})
    return frame.assign(date=pd.Series(dtype="datetime64[ns]"), recorded_at=pd.Series(dtype="datetime64[ns, UTC]"))


def _frame(table: pa.Table | None) -> pd.DataFrame | None:
    if table is None:
        return None
    frame = table.to_pandas()
    return frame.assign(date=pd.to_datetime(frame["date"]))


def _to_arrow(rows: pd.DataFrame) -> pa.Table:
    data = rows[_COLUMNS].assign(
        date=pd.to_datetime(rows["date"]).to_numpy().astype("datetime64[D]"),
        recorded_at=pd.to_datetime(rows["recorded_at"], utc=True),
    )
    return pa.Table.from_pandas(data, schema=BAR_ISSUES.schema, preserve_index=False)


def read_issues(
    warehouse: TableStore, symbols: Sequence[str] | None = None, start: dt.date | None = None, end: dt.date | None = None
) -> pd.DataFrame:
    """Stored issues (optionally a symbol x date slice), sorted by symbol, date, rule."""
    return warehouse.read(BAR_ISSUES, symbols, start, end)


__all__ = ["BAR_ISSUES", "IssueSummary", "MISSING_SESSION", "read_issues", "write_bars_and_issues"]
