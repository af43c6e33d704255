"""The daily-bar frame every source returns: schema, parsing with row-level errors, split adjustment.

Parsing (:func:`parse_bars`) turns raw input into typed columns and stops at the first *format* error: a missing
required column, an invalid symbol, a date that is not ISO (or not in ``IBF_CSV_DATE_FORMAT``), text in a numeric
column. What happens to rows that parse but cannot be right (OHLC glitches, duplicates, non-positive prices) is
the bar policy's business (:mod:`ibf_core.market.checks`): repaired or dropped and recorded, or rejected all at once.
"""

from __future__ import annotations

import datetime as dt
from fractions import Fraction

import numpy as np
import pandas as pd

from ibf_core.settings import SYMBOL_PATTERN

BAR_COLUMNS = ["symbol", "date", "open", "high", "low", "close", "adj_close", "volume"]
# Optional: relative quoted spread (ask - bid) / mid of the day, from IB BID_ASK bars; NaN when unknown.
OPTIONAL_COLUMNS = ["spread"]
PRICE_COLUMNS = ["open", "high", "low", "close", "adj_close"]
NUMERIC_COLUMNS = [*PRICE_COLUMNS, "volume"]
# Only these must be in the input: open/high/low default from close, adj_close to close, volume to NULL
# (each recorded as an issue by the bar policy).
REQUIRED_INPUT_COLUMNS = ["date", "symbol", "close"]
# Vendor spellings of our column names (after lower-casing and spaces -> "_").
COLUMN_ALIASES = {"ticker": "symbol", "adjclose": "adj_close", "adjusted_close": "adj_close", "adj._close": "adj_close"}
# Cell texts that mean "no value" (Yahoo writes null); read as missing, never as text.
MISSING_TOKENS = frozenset({"", "null", "nan", "na", "n/a", "#n/a", "none", "-", "<na>"})
BAR_DTYPES = {
    "symbol": "string",
    "date": "datetime64[ns]",
    **{c: "float64" for c in PRICE_COLUMNS},
    "volume": "float64",
}
# Relative slack for OHLC ordering: vendors round open/close and high/low independently.
OHLC_TOLERANCE = 1e-6
# A day-over-day change of adj_close/close by more than this is a split, not a dividend.
SPLIT_RATIO_JUMP = 1.2
MAX_ERRORS_SHOWN = 3


class BarsValidationError(ValueError):
    """Bars failed validation; the message names the origin (file), row, symbol and date."""


def empty_bars() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in BAR_DTYPES.items()})[BAR_COLUMNS]


def describe_rows(frame: pd.DataFrame, mask: pd.Series, limit: int = MAX_ERRORS_SHOWN) -> list[str]:
    """Offending rows as 'row N (SYMBOL 2012-01-03)' (the reader's line numbers, the file when several)."""
    rows = frame.loc[mask]
    several_files = "_file" in rows.columns and frame["_file"].nunique() > 1
    out = []
    for idx, row in rows.head(limit).iterrows():
        out.append(row_label(row, idx, several_files))
    more = len(rows) - limit
    return out + ([f"and {more} more"] if more > 0 else [])


def row_label(row: pd.Series, idx: object, with_file: bool = False) -> str:
    """'row N (SYMBOL date)', 'row N of FILE (...)' when the input has several files."""
    line = row["_line"] if "_line" in row.index else idx
    date = row.get("date")
    date_txt = pd.Timestamp(date).date().isoformat() if isinstance(date, pd.Timestamp | np.datetime64) else date
    where = f"row {line} of {row['_file']}" if with_file else f"row {line}"
    return f"{where} ({row.get('symbol')} {date_txt})"


def _fail(origin: str, problem: str, frame: pd.DataFrame, mask: pd.Series) -> None:
    raise BarsValidationError(f"{origin}: {problem} at {', '.join(describe_rows(frame, mask))}")


def normalise_columns(raw: pd.DataFrame, origin: str) -> pd.DataFrame:
    """Column names in any case and with spaces (``Adj Close``) as ours; the required ones must be there."""
    frame = raw.copy()
    names = [str(c).strip().lower().replace(" ", "_") for c in frame.columns]
    frame.columns = [COLUMN_ALIASES.get(n, n) if COLUMN_ALIASES.get(n, n) not in names else n for n in names]
    missing = [c for c in REQUIRED_INPUT_COLUMNS if c not in frame.columns]
    if missing:
        have = ", ".join(c for c in frame.columns if not c.startswith("_"))
        raise BarsValidationError(f"{origin}: missing column(s) {', '.join(missing)} (have {have})")
    return frame


def _parse_symbols(frame: pd.DataFrame, origin: str) -> pd.Series:
    # String work on the distinct symbols only: a 10-year file repeats each symbol thousands of times.
    codes, uniques = pd.factorize(frame["symbol"], use_na_sentinel=True)
    cleaned = pd.Series(uniques, dtype="string").str.strip().str.upper()
    valid = cleaned.str.match(SYMBOL_PATTERN.pattern).fillna(False).to_numpy(dtype=bool)
    bad_symbol = pd.Series((codes < 0) | ~valid[codes.clip(min=0)], index=frame.index)
    if bad_symbol.any():
        _fail(origin, "invalid symbol", frame, bad_symbol)
    return pd.Series(pd.Categorical.from_codes(codes, categories=cleaned.to_numpy()), index=frame.index).astype("string")


def _holds_dates(values: pd.Series) -> bool:
    """Already dates (Parquet date/timestamp columns), not text to parse."""
    if pd.api.types.is_datetime64_any_dtype(values):
        return True
    first = values.dropna().head(1)
    return len(first) == 1 and isinstance(first.iloc[0], dt.date)


def _date_hint(value: str, date_format: str | None) -> str:
    if date_format:
        return f"{value!r} does not match IBF_CSV_DATE_FORMAT={date_format!r}"
    return f"{value!r} is not an ISO date (YYYY-MM-DD); set IBF_CSV_DATE_FORMAT (e.g. %d/%m/%Y) to read another format"


def parse_dates(frame: pd.DataFrame, origin: str, date_format: str | None = None) -> pd.Series:
    """ISO dates, or every date in ``date_format`` (one strptime format for the whole input): never guessed per
    row, since a guess reads 04/01 as 4 January on one row and as 1 April on the next."""
    values = frame["date"]
    if _holds_dates(values):
        parsed = pd.to_datetime(values)
    else:
        fmt = date_format or "ISO8601"
        parsed = pd.to_datetime(values, format=fmt, errors="coerce")
        if not pd.api.types.is_datetime64_any_dtype(parsed):
            raise BarsValidationError(f"{origin}: dates mix time-zone offsets (first value {values.iloc[0]!r})")
        bad = parsed.isna()
        if bad.any():  # surrounding spaces are not an error: strip only the cells that failed (stripping all is slow)
            retry = pd.to_datetime(values[bad].astype("string").str.strip(), format=fmt, errors="coerce")
            parsed.loc[bad.to_numpy()] = retry.to_numpy()
            bad = parsed.isna()
        if bad.any():
            first = frame.index[bad.to_numpy()][0]
            where = ", ".join(describe_rows(frame, bad))
            raise BarsValidationError(f"{origin}: unparseable date at {where}: {_date_hint(str(values.loc[first]), date_format)}")
    if getattr(parsed.dt, "tz", None) is not None:
        parsed = parsed.dt.tz_localize(None)
    return parsed.dt.normalize()


def _parse_number_column(frame: pd.DataFrame, column: str, origin: str) -> pd.Series:
    raw = frame[column]
    if pd.api.types.is_numeric_dtype(raw) and not pd.api.types.is_bool_dtype(raw):
        return raw.astype("float64")
    values = pd.to_numeric(raw, errors="coerce")
    failed = values.isna()
    if failed.any():  # string work on the failed cells only: a missing token, or text (an error)
        text = raw[failed].astype("string").str.strip().str.lower()
        was_text = pd.Series(False, index=raw.index)
        was_text.loc[failed.to_numpy()] = (~(text.isna() | text.isin(MISSING_TOKENS))).to_numpy()
        if was_text.any():
            first = frame.index[was_text.to_numpy()][0]
            where = ", ".join(describe_rows(frame, was_text))
            raise BarsValidationError(f"{origin}: non-numeric value in column '{column}' at {where}: {raw.loc[first]!r}")
    return values.astype("float64")


def parse_bars(raw: pd.DataFrame, origin: str, date_format: str | None = None) -> pd.DataFrame:
    """Typed columns (symbol, date, the numeric columns present, ``_line``/``_file`` when given), raising one
    clear error on the first format problem. Values that parse are not judged here (see ``checks``)."""
    frame = normalise_columns(raw, origin)
    if frame.empty:
        return frame
    frame["symbol"] = _parse_symbols(frame, origin)
    frame["date"] = parse_dates(frame, origin, date_format)
    for column in NUMERIC_COLUMNS:
        if column in frame.columns:
            frame[column] = _parse_number_column(frame, column, origin)
    if "spread" in frame.columns:
        spread = pd.to_numeric(frame["spread"], errors="coerce")
        blank = frame["spread"].isna() | (frame["spread"].astype(str).str.strip() == "")
        bad_spread = (spread < 0) | np.isinf(spread) | (spread.isna() & ~blank)
        if bad_spread.any():
            _fail(origin, "spread must be a non-negative number", frame, bad_spread)
        frame["spread"] = spread.astype("float64")
    return frame


def to_canonical(frame: pd.DataFrame, sort: bool = True) -> pd.DataFrame:
    """The canonical columns (spread when present) with their dtypes, sorted by symbol and date (``sort=False``:
    the caller's frame already is)."""
    columns = BAR_COLUMNS + [c for c in OPTIONAL_COLUMNS if c in frame.columns]
    dtypes = {**BAR_DTYPES, **{c: "float64" for c in OPTIONAL_COLUMNS if c in columns}}
    out = frame[columns].astype(dtypes)
    if sort:
        out = out.sort_values(["symbol", "date"], kind="stable")
    return out.reset_index(drop=True)


def _nearest_split_ratio(jump: float) -> Fraction:
    return Fraction(jump).limit_denominator(10)


def split_events(bars: pd.DataFrame) -> pd.DataFrame:
    """Splits visible in the data: days where adj_close/close jumps by a split-sized factor.

    Dividends move adj_close/close by a few percent at most; a split moves it by the split ratio
    (2.0 for 2-for-1, 0.1 for a 1-for-10 reverse split). Returns ``symbol, date, ratio``.
    """
    if bars.empty:
        return pd.DataFrame({"symbol": [], "date": [], "ratio": []})
    ordered = bars.sort_values(["symbol", "date"])
    ratio = ordered["adj_close"] / ordered["close"]
    jump = ratio / ratio.groupby(ordered["symbol"]).shift()
    is_split = (jump > SPLIT_RATIO_JUMP) | (jump < 1 / SPLIT_RATIO_JUMP)
    events = ordered.loc[is_split, ["symbol", "date"]].copy()
    events["ratio"] = [float(_nearest_split_ratio(j)) for j in jump[is_split]]
    return events.reset_index(drop=True)


def split_adjust(bars: pd.DataFrame) -> pd.DataFrame:
    """Adjust OHLC down and volume up for every split inside the data, so a split is never a return.

    Already split-adjusted data (IB TRADES bars, most vendors) has no adj_close/close jumps and is
    returned unchanged. adj_close is left as the source gave it.
    """
    events = split_events(bars)
    if events.empty:
        return bars
    out = bars.sort_values(["symbol", "date"]).reset_index(drop=True)
    factor = np.ones(len(out))
    for symbol, date, ratio in events.itertuples(index=False):
        before = ((out["symbol"] == symbol) & (out["date"] < date)).to_numpy()
        factor[before] *= ratio
    for column in ["open", "high", "low", "close"]:
        out[column] = out[column] / factor
    out["volume"] = out["volume"] * factor
    return out


def unexplained_jumps(bars: pd.DataFrame, bound: float) -> pd.DataFrame:
    """Rows whose close-to-close log return exceeds ``bound`` in absolute value (after split adjustment)."""
    ordered = bars.sort_values(["symbol", "date"])
    logret = np.log(ordered["close"]).groupby(ordered["symbol"]).diff()
    flagged = ordered.loc[logret.abs() > bound, ["symbol", "date", "close"]].copy()
    flagged["log_return"] = logret[logret.abs() > bound]
    return flagged.reset_index(drop=True)
