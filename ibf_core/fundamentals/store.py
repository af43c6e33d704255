"""The fundamentals tables: ``fundamentals`` (overview snapshots), ``earnings``, ``earnings_calendar``,
``macro_indicators`` and ``fundamentals_issues``.

Layout (partitions of the warehouse): ``fundamentals``, ``earnings`` and ``earnings_calendar`` one file per symbol;
``macro_indicators`` one file per indicator (``<INDICATOR>.parquet``, e.g. ``treasury_10y``); ``fundamentals_issues``
one file per Alpha Vantage function (``<ENDPOINT>.parquet``, e.g. ``OVERVIEW``, ``CPI``).

One load is one :meth:`TableStore.write` (:func:`write_batch`): everything lands or nothing does. Writes are
upserts by key, so running a load again gives identical rows:

- ``fundamentals`` (symbol, date): a snapshot counts for its recording session; a second recording in the same
  session replaces that session's row, earlier sessions are never touched (no back-fill).
- ``earnings`` (symbol, fiscal_date_ending): the newest fetch of a quarter replaces it.
- ``earnings_calendar`` (symbol, date, report_date): for each symbol whose calendar was fetched, the rows of the
  recording session become exactly the fetched ones; other sessions are kept.
- ``macro_indicators`` (indicator, date, period): the newest fetch of a period replaces it; a period the newest
  fetch lacks keeps its stored value (it was real when fetched).
- ``fundamentals_issues`` (subject, endpoint, date, reason): an issue seen again replaces its row (new recorded_at).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import pandas as pd
import pyarrow as pa

from ibf_core.storage.interface import TableStore, Transaction, check_partition_name
from ibf_core.storage.tables import Column, TableSpec

_UTC_TS = pa.timestamp("us", tz="UTC")
_SNAPSHOT = {
    "shares_outstanding": "Shares outstanding (OVERVIEW SharesOutstanding)",
    "analyst_target_price": "Analysts' consensus target price (AnalystTargetPrice)",
    "analyst_strong_buy": "Analysts rating strong buy (AnalystRatingStrongBuy)",
    "analyst_buy": "Analysts rating buy (AnalystRatingBuy)",
    "analyst_hold": "Analysts rating hold (AnalystRatingHold)",
    "analyst_sell": "Analysts rating sell (AnalystRatingSell)",
    "analyst_strong_sell": "Analysts rating strong sell (AnalystRatingStrongSell)",
}

FUNDAMENTALS = TableSpec(
    name="fundamentals",
    description="Alpha Vantage OVERVIEW per symbol and recording session: classification and snapshot fields "
    "(what AV said that session, never back-filled).",
    columns=(
        Column("symbol", pa.string(), "Ticker symbol"),
        Column("date", pa.date32(), "Recording session: fetched before its close (after the close: the next session)"),
        Column("asset_type", pa.string(), "AssetType, e.g. Common Stock"),
        Column("exchange", pa.string(), "Exchange, e.g. NASDAQ, NYSE"),
        Column("sector", pa.string(), "Sector as Alpha Vantage names it, e.g. TECHNOLOGY"),
        Column("industry", pa.string(), "Industry (from the SEC SIC code), e.g. ELECTRONIC COMPUTERS"),
        *(Column(name, pa.float64(), text + "; NaN when absent") for name, text in _SNAPSHOT.items()),
        Column("name", pa.string(), "Company name"),
        Column("fetched_at", _UTC_TS, "When it was fetched (or, for the sample, recorded), UTC"),
        Column("origin", pa.string(), "alphavantage, or sample (real classification, no snapshot values)"),
    ),
)

EARNINGS = TableSpec(
    name="earnings",
    description="Alpha Vantage EARNINGS quarterlyEarnings per symbol, dated by the session that may first use them.",
    key=("symbol", "fiscal_date_ending"),
    columns=(
        Column("symbol", pa.string(), "Ticker symbol"),
        Column("fiscal_date_ending", pa.date32(), "Fiscal quarter end"),
        Column("reported_date", pa.date32(), "Date the quarter was reported"),
        Column("report_time", pa.string(), "pre-market, post-market, or '' (unknown: treated as after the close)"),
        Column("date", pa.date32(), "Session that may first use it: a pre-market report's own session, else the next"),
        Column("reported_eps", pa.float64(), "Reported EPS (NaN when Alpha Vantage says None)"),
        Column("estimated_eps", pa.float64(), "Consensus estimate of EPS"),
        Column("surprise", pa.float64(), "Reported minus estimated EPS"),
        Column("surprise_pct", pa.float64(), "Surprise in percent of the estimate"),
    ),
)

EARNINGS_CALENDAR = TableSpec(
    name="earnings_calendar",
    description="Alpha Vantage EARNINGS_CALENDAR: announcements scheduled ahead, as recorded on each session.",
    key=("symbol", "date", "report_date"),
    columns=(
        Column("symbol", pa.string(), "Ticker symbol"),
        Column("date", pa.date32(), "Recording session (fetched before its close; after: the next session)"),
        Column("report_date", pa.date32(), "Scheduled report date"),
        Column("fiscal_date_ending", pa.date32(), "Fiscal quarter end being reported (NULL when absent)"),
        Column("estimate", pa.float64(), "Consensus EPS estimate (NaN when absent)"),
        Column("fetched_at", _UTC_TS, "When it was fetched, UTC"),
    ),
)

MACRO_INDICATORS_TABLE = TableSpec(
    name="macro_indicators",
    description="Alpha Vantage economic indicators (treasury yields, fed funds, CPI, unemployment), each value dated "
    "by the first session after its publication.",
    key=("indicator", "date", "period"),
    files="<INDICATOR>.parquet",
    columns=(
        Column("indicator", pa.string(), "treasury_3m, treasury_2y, treasury_10y, fed_funds, cpi or unemployment"),
        Column("period", pa.date32(), "The date Alpha Vantage labels the value with (a day, or a month's first day)"),
        Column("date", pa.date32(), "First session strictly after the period's end + release_lag_days"),
        Column("value", pa.float64(), "The value (a missing '.' value is never stored)"),
        Column("unit", pa.string(), "Unit as Alpha Vantage names it, e.g. percent"),
        Column("release_lag_days", pa.int64(), "Calendar days from the period's end to publication (pit.RELEASE_LAG)"),
    ),
)

FUNDAMENTALS_ISSUES = TableSpec(
    name="fundamentals_issues",
    description="What a fundamentals or macro load skipped or could not read, and why (never silently lost).",
    key=("subject", "endpoint", "date", "reason"),
    files="<ENDPOINT>.parquet",
    columns=(
        Column("subject", pa.string(), "Symbol or indicator"),
        Column("endpoint", pa.string(), "Alpha Vantage function, e.g. OVERVIEW, EARNINGS, CPI"),
        Column("date", pa.date32(), "The date concerned (a missing period, a skipped quarter) or the recording session"),
        Column("reason", pa.string(), "What was skipped and why (never the API key)"),
        Column("recorded_at", _UTC_TS, "When the load recorded it, UTC"),
    ),
)

FUNDAMENTALS_TABLES = (FUNDAMENTALS, EARNINGS, EARNINGS_CALENDAR, MACRO_INDICATORS_TABLE, FUNDAMENTALS_ISSUES)


@dataclass(eq=False)
class Batch:
    """Everything one load writes; empty frames write nothing."""

    overview: pd.DataFrame = field(default_factory=lambda: empty(FUNDAMENTALS))
    earnings: pd.DataFrame = field(default_factory=lambda: empty(EARNINGS))
    calendar: pd.DataFrame = field(default_factory=lambda: empty(EARNINGS_CALENDAR))
    calendar_scope: tuple[tuple[str, pd.Timestamp], ...] = ()  # (symbol, session): those rows become ``calendar``'s
    macro: pd.DataFrame = field(default_factory=lambda: empty(MACRO_INDICATORS_TABLE))
    issues: pd.DataFrame = field(default_factory=lambda: empty(FUNDAMENTALS_ISSUES))


# ----- frames -----------------------------------------------------------------------------------------------
def empty(spec: TableSpec) -> pd.DataFrame:
    """No rows, the table's columns (dates as datetime64, timestamps UTC)."""
    return to_pandas(spec, spec.schema.empty_table())


def to_pandas(spec: TableSpec, table: pa.Table) -> pd.DataFrame:
    """A stored table as a frame: date columns datetime64, timestamps UTC, numbers float64."""
    frame = table.to_pandas()
    for column in spec.columns:
        if column.type == pa.date32():
            frame[column.name] = pd.to_datetime(frame[column.name])
        elif column.type == _UTC_TS:
            frame[column.name] = pd.to_datetime(frame[column.name], utc=True)
        elif column.type == pa.float64():
            frame[column.name] = frame[column.name].astype("float64")
    return frame


def to_arrow(spec: TableSpec, frame: pd.DataFrame) -> pa.Table:
    """``frame`` in the declared schema, sorted by key; a null key or a repeated key raises ValueError."""
    missing = [c for c in spec.column_names if c not in frame.columns]
    if missing:
        raise ValueError(f"{spec.name}: frame lacks column(s) {', '.join(missing)}")
    data = frame[spec.column_names].copy()
    for column in spec.columns:
        values = data[column.name]
        if column.type == pa.date32():
            data[column.name] = pd.to_datetime(values).dt.normalize().to_numpy().astype("datetime64[D]")
        elif column.type == _UTC_TS:
            data[column.name] = pd.to_datetime(values, utc=True).dt.floor("us")
        elif column.type == pa.float64():
            data[column.name] = pd.to_numeric(values).astype("float64")
        elif column.type == pa.string():
            data[column.name] = values.astype(object).where(values.notna(), None)
    keys = list(spec.key)
    if data[keys].isna().any().any():
        raise ValueError(f"{spec.name}: a key column ({', '.join(keys)}) is empty")
    if data.duplicated(keys).any():
        raise ValueError(f"{spec.name}: duplicate key {data.loc[data.duplicated(keys), keys].iloc[0].tolist()}")
    data = data.sort_values(keys, kind="stable").reset_index(drop=True)
    return pa.Table.from_pandas(data, schema=spec.schema, preserve_index=False)


def _in(frame: pd.DataFrame, other: pd.DataFrame, keys: Sequence[str]) -> pd.Series:
    """Whether each row's key occurs in ``other``."""
    if other.empty or frame.empty:
        return pd.Series(False, index=frame.index)
    ours = pd.MultiIndex.from_frame(frame[list(keys)])
    return pd.Series(ours.isin(pd.MultiIndex.from_frame(other[list(keys)])), index=frame.index)


# ----- writing ----------------------------------------------------------------------------------------------
def _groups(frame: pd.DataFrame, by: str) -> dict[str, pd.DataFrame]:
    return {str(k): g for k, g in frame.groupby(by, sort=True)} if not frame.empty else {}


def write_batch(store: TableStore, batch: Batch) -> dict[str, int]:
    """Upsert the batch in one transaction; rows written per table name (unchanged partitions are not rewritten)."""
    calendar_scope = {s: set() for s, _ in batch.calendar_scope}
    for symbol, session in batch.calendar_scope:
        calendar_scope[symbol].add(pd.Timestamp(session))
    plan: list[tuple[TableSpec, dict[str, pd.DataFrame], Callable[[str, pd.DataFrame], pd.Series] | None]] = [
        (FUNDAMENTALS, _groups(batch.overview, "symbol"), None),
        (EARNINGS, _groups(batch.earnings, "symbol"), None),
        (EARNINGS_CALENDAR, {s: batch.calendar[batch.calendar["symbol"] == s] for s in calendar_scope},
         lambda name, old: old["date"].isin(calendar_scope[name])),
        (MACRO_INDICATORS_TABLE, _groups(batch.macro, "indicator"), None),
        (FUNDAMENTALS_ISSUES, _groups(batch.issues, "endpoint"), None),
    ]  # fmt: skip
    arrows = {spec.name: {n: to_arrow(spec, f) for n, f in parts.items()} for spec, parts, _ in plan}  # checks first
    locks = [(spec, check_partition_name(spec, name)) for spec, parts, _ in plan for name in parts]
    if not locks:
        return {spec.name: 0 for spec, _, _ in plan}
    for spec in FUNDAMENTALS_TABLES:
        store.ensure_table(spec)

    def build(tx: Transaction) -> dict[str, int]:
        written = {}
        for spec, parts, scope in plan:
            written[spec.name] = sum(_upsert(tx, spec, name, new, arrows[spec.name][name], scope) for name, new in parts.items())
        return written

    return store.write(locks, build)


def _upsert(
    tx: Transaction,
    spec: TableSpec,
    name: str,
    new: pd.DataFrame,
    new_arrow: pa.Table,
    scope: Callable[[str, pd.DataFrame], pd.Series] | None,
) -> int:
    """Make the partition its stored rows without ``new``'s keys (and without ``scope``'s rows), plus ``new``."""
    stored = tx.read(spec, name)
    if stored is None:
        if len(new):
            tx.put(spec, name, new_arrow)
        return len(new)
    old = to_pandas(spec, stored)
    drop = _in(old, to_pandas(spec, new_arrow), spec.key)
    if scope is not None:
        drop |= scope(name, old)
    kept = old.loc[~drop]
    merged = to_arrow(spec, pd.concat([kept, to_pandas(spec, new_arrow)], ignore_index=True)) if len(kept) else new_arrow
    if merged.num_rows == 0:
        tx.delete(spec, name)
    elif not merged.equals(stored):
        tx.put(spec, name, merged)
    return len(new)


# ----- reading ----------------------------------------------------------------------------------------------
def read_table(store: TableStore, spec: TableSpec, names: Iterable[str] | None = None) -> pd.DataFrame:
    """Stored rows of the named partitions (all when None), sorted by key."""
    if not store.exists():
        return empty(spec)
    names = None if names is None else [check_partition_name(spec, n) for n in names]
    frame = to_pandas(spec, store.read_partitions(spec, names))
    return frame.sort_values(list(spec.key), kind="stable").reset_index(drop=True)


__all__ = [
    "EARNINGS",
    "EARNINGS_CALENDAR",
    "FUNDAMENTALS",
    "FUNDAMENTALS_ISSUES",
    "FUNDAMENTALS_TABLES",
    "MACRO_INDICATORS_TABLE",
    "Batch",
    "empty",
    "read_table",
    "to_arrow",
    "to_pandas",
    "write_batch",
]  # fmt: skip
