"""The daily-bar frame every source returns: schema, validation with row-level errors, split adjustment."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pandas as pd

from ibf_core.calendar import all_sessions
from ibf_core.settings import SYMBOL_PATTERN

BAR_COLUMNS = ["symbol", "date", "open", "high", "low", "close", "adj_close", "volume"]
# Optional: relative quoted spread (ask - bid) / mid of the day, from IB BID_ASK bars; NaN when unknown.
OPTIONAL_COLUMNS = ["spread"]
PRICE_COLUMNS = ["open", "high", "low", "close", "adj_close"]
NUMERIC_COLUMNS = [*PRICE_COLUMNS, "volume"]
REQUIRED_INPUT_COLUMNS = ["date", "symbol", "open", "high", "low", "close", "volume"]
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


def _where(frame: pd.DataFrame, mask: pd.Series) -> list[str]:
    """Describe offending rows as 'row N (SYMBOL 2012-01-03)' using the reader's line numbers when present."""
    rows = frame.loc[mask]
    out = []
    for idx, row in rows.head(MAX_ERRORS_SHOWN).iterrows():
        line = row["_line"] if "_line" in rows.columns else idx
        date = row.get("date")
        date_txt = pd.Timestamp(date).date().isoformat() if isinstance(date, pd.Timestamp | np.datetime64) else date
        out.append(f"row {line} ({row.get('symbol')} {date_txt})")
    more = len(rows) - MAX_ERRORS_SHOWN
    return out + ([f"and {more} more"] if more > 0 else [])


def _fail(origin: str, problem: str, frame: pd.DataFrame, mask: pd.Series) -> None:
    raise BarsValidationError(f"{origin}: {problem} at {', '.join(_where(frame, mask))}")


def _parse_dates(values: pd.Series) -> pd.Series:
    """ISO dates fast; anything else (US formats, timestamps) through pandas' per-element parser."""
    if pd.api.types.is_datetime64_any_dtype(values):
        return values
    try:
        return pd.to_datetime(values, format="ISO8601")
    except (ValueError, TypeError):
        return pd.to_datetime(values, errors="coerce", format="mixed")


def validate_bars(raw: pd.DataFrame, origin: str, symbols: list[str] | None = None) -> pd.DataFrame:
    """Check and normalise raw bars into the canonical frame, raising one clear error on the first problem.

    ``raw`` needs the input columns (adj_close optional: it defaults to close, i.e. no dividend adjustment).
    A ``_line`` column, when present, is used for row numbers in messages. Nothing is modified in place.
    """
    frame = raw.copy()
    frame.columns = [str(c).strip().lower().replace(" ", "_") for c in frame.columns]
    if "ticker" in frame.columns and "symbol" not in frame.columns:
        frame = frame.rename(columns={"ticker": "symbol"})
    missing = [c for c in REQUIRED_INPUT_COLUMNS if c not in frame.columns]
    if missing:
        raise BarsValidationError(f"{origin}: missing column(s) {', '.join(missing)} (have {', '.join(frame.columns)})")
    if frame.empty:
        return empty_bars()
    if "adj_close" not in frame.columns:
        frame["adj_close"] = frame["close"]

    # String work on the distinct symbols only: a 10-year file repeats each symbol thousands of times.
    codes, uniques = pd.factorize(frame["symbol"], use_na_sentinel=True)
    cleaned = pd.Series(uniques, dtype="string").str.strip().str.upper()
    valid = cleaned.str.match(SYMBOL_PATTERN.pattern).fillna(False).to_numpy(dtype=bool)
    bad_symbol = pd.Series((codes < 0) | ~valid[codes.clip(min=0)], index=frame.index)
    if bad_symbol.any():
        _fail(origin, "invalid symbol", frame, bad_symbol)
    frame["symbol"] = pd.Categorical.from_codes(codes, categories=cleaned.to_numpy()).astype("string")

    dates = _parse_dates(frame["date"])
    bad_date = dates.isna()
    if bad_date.any():
        _fail(origin, "unparseable date", frame, bad_date)
    if getattr(dates.dt, "tz", None) is not None:
        dates = dates.dt.tz_localize(None)
    frame["date"] = dates.dt.normalize()

    for column in NUMERIC_COLUMNS:
        values = pd.to_numeric(frame[column], errors="coerce")
        was_text = values.isna() & frame[column].notna()
        if was_text.any():
            _fail(origin, f"non-numeric value in column '{column}'", frame, was_text)
        if values.isna().any():
            _fail(origin, f"missing value in column '{column}'", frame, values.isna())
        if not np.isfinite(values).all():
            _fail(origin, f"infinite value in column '{column}'", frame, ~np.isfinite(values))
        frame[column] = values.astype("float64")

    nonpositive = (frame[PRICE_COLUMNS] <= 0).any(axis=1)
    if nonpositive.any():
        _fail(origin, "zero or negative price", frame, nonpositive)
    if (frame["volume"] < 0).any():
        _fail(origin, "negative volume", frame, frame["volume"] < 0)
    slack = frame["high"] * OHLC_TOLERANCE
    high_low = frame["high"] < frame["low"] - slack
    if high_low.any():
        _fail(origin, "high below low", frame, high_low)
    outside = (frame[["open", "close"]].max(axis=1) > frame["high"] + slack) | (
        frame[["open", "close"]].min(axis=1) < frame["low"] - slack
    )
    if outside.any():
        _fail(origin, "open/close outside the high-low range", frame, outside)

    dup = frame.duplicated(["symbol", "date"], keep=False)
    if dup.any():
        _fail(origin, "duplicate (symbol, date)", frame, dup)
    off_calendar = ~frame["date"].isin(all_sessions())
    if off_calendar.any():
        _fail(origin, "date is not an NYSE trading day", frame, off_calendar)

    if symbols is not None:
        present = set(frame["symbol"].unique())
        unknown = [s for s in symbols if s not in present]
        if unknown:
            raise BarsValidationError(f"{origin}: no bars for symbol(s) {', '.join(unknown)}")
        frame = frame[frame["symbol"].isin(symbols)]

    columns = BAR_COLUMNS + [c for c in OPTIONAL_COLUMNS if c in frame.columns]
    if "spread" in frame.columns:
        spread = pd.to_numeric(frame["spread"], errors="coerce")
        bad_spread = (spread < 0) | np.isinf(spread) | (spread.isna() & frame["spread"].notna() & (frame["spread"].astype(str).str.strip() != ""))
        if bad_spread.any():
            _fail(origin, "spread must be a non-negative number", frame, bad_spread)
        frame["spread"] = spread.astype("float64")
    out = frame[columns].astype({**BAR_DTYPES, **{c: "float64" for c in OPTIONAL_COLUMNS if c in columns}})
    return out.sort_values(["symbol", "date"], kind="stable").reset_index(drop=True)


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
