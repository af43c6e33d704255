"""The bar policy: what happens to rows that parse but cannot be right, and to inputs that lack a column.

``IBF_BAR_POLICY=repair`` (the default) widens high/low to hold open/close when the violation is at most
``IBF_BAR_REPAIR_TOLERANCE``, drops the rows it cannot trust (not an NYSE session, missing or non-positive prices,
larger OHLC violations, all but the last of duplicate (symbol, date) rows), fills a missing open/high/low from
close and a missing adj_close from its neighbours' dividend factor, and records every such row as an issue.
``strict`` changes nothing: it rejects the input with every problem counted per rule in one error.

Format facts are handled alike in both modes, since they describe the vendor's layout rather than a bad row: a
column absent (or empty for a symbol) -- open/high/low/adj_close derived from close, volume stored as NULL -- and a
volume that is one constant (a close-only export), also stored as NULL. Each becomes one issue per symbol and
loaded slice (``filled`` or ``reported``), never one per row.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

from ibf_core.calendar import all_sessions
from ibf_core.market.bars import (
    NUMERIC_COLUMNS,
    OHLC_TOLERANCE,
    PRICE_COLUMNS,
    BarsValidationError,
    describe_rows,
    empty_bars,
    parse_bars,
    split_adjust,
    to_canonical,
)
from ibf_core.settings import Settings

REPAIRED, DROPPED, FILLED, REPORTED = "repaired", "dropped", "filled", "reported"
ISSUE_COLUMNS = ["symbol", "date", "rule", "action", "detail"]
# Rows of each rule a strict rejection shows.
STRICT_EXAMPLES = 3
# A symbol whose volume is one value on at least this many rows has no real volume (a close-only export); fewer
# rows prove nothing (a one-day load of a halted stock may well read 0).
CONSTANT_VOLUME_MIN_ROWS = 5

# What each row rule says in a strict rejection, in the order a row's first problem is picked.
RULE_TEXT = {
    "not_a_session": "date is not an NYSE trading day",
    "missing_close": "missing value in column 'close'",
    "nonpositive_price": "zero or negative price",
    "infinite_value": "infinite value",
    "negative_volume": "negative volume",
    "missing_open": "missing value in column 'open'",
    "missing_high": "missing value in column 'high'",
    "missing_low": "missing value in column 'low'",
    "missing_adj_close": "missing value in column 'adj_close'",
    "missing_volume": "missing value in column 'volume'",
    "high_below_low": "high below low",
    "open_outside_range": "open outside the high-low range",
    "close_outside_range": "close outside the high-low range",
    "duplicate_date": "duplicate (symbol, date)",
}
# Rules recorded once per symbol and slice (with a row count), and what was done.
NOTE_ACTIONS = {
    "missing_open": FILLED,
    "missing_high": FILLED,
    "missing_low": FILLED,
    "missing_adj_close": FILLED,
    "missing_volume": REPORTED,
    "constant_volume": REPORTED,
    "close_only": REPORTED,
}
_NOTE = "_note_"
_OHLC_RULES = ("high_below_low", "open_outside_range", "close_outside_range")


def _setting_default(name: str) -> Any:
    """The default ``Settings`` declares (written once, there)."""
    return Settings.model_fields[name].get_default(call_default_factory=True)


@dataclass(frozen=True)
class BarPolicy:
    """``IBF_BAR_POLICY``, ``IBF_BAR_REPAIR_TOLERANCE`` and ``IBF_CSV_DATE_FORMAT`` as one value."""

    mode: Literal["repair", "strict"] = _setting_default("bar_policy")
    tolerance: float = _setting_default("bar_repair_tolerance")
    date_format: str | None = _setting_default("csv_date_format")

    def __post_init__(self) -> None:
        if self.mode not in ("repair", "strict"):
            raise ValueError(f"bar policy must be repair or strict, got {self.mode!r}")
        if not 0 <= self.tolerance < 0.5:
            raise ValueError(f"repair tolerance must be in [0, 0.5), got {self.tolerance!r}")

    @classmethod
    def from_settings(cls, settings: Settings) -> BarPolicy:
        return cls(settings.bar_policy, settings.bar_repair_tolerance, settings.csv_date_format)

    @property
    def strict(self) -> bool:
        return self.mode == "strict"


STRICT = BarPolicy(mode="strict")


def empty_issues() -> pd.DataFrame:
    frame = pd.DataFrame({c: pd.Series(dtype="string") for c in ISSUE_COLUMNS})
    return frame.assign(date=pd.Series(dtype="datetime64[ns]"))


@dataclass(frozen=True)
class BarSlice:
    """Canonical bars of a symbol x date rectangle and the issues recorded for it (``ISSUE_COLUMNS``)."""

    bars: pd.DataFrame
    issues: pd.DataFrame


@dataclass(frozen=True)
class CheckedBars:
    """A whole input after the policy: canonical bars plus per-row note columns, and the row-level issues."""

    frame: pd.DataFrame
    issues: pd.DataFrame

    @classmethod
    def empty(cls) -> CheckedBars:
        return cls(empty_bars(), empty_issues())

    @property
    def bars(self) -> pd.DataFrame:
        return self.frame[[c for c in self.frame.columns if not c.startswith(_NOTE)]]

    def symbols(self) -> list[str]:
        return sorted(self.frame["symbol"].unique())

    def split_adjusted(self) -> CheckedBars:
        return CheckedBars(split_adjust(self.frame), self.issues)

    def cut(self, symbols: Sequence[str], start: dt.date, end: dt.date) -> BarSlice:
        """The rectangle's bars and issues: its row issues, and one issue per symbol and note over its rows."""
        lo, hi = pd.Timestamp(start), pd.Timestamp(end)
        inside = self.frame["symbol"].isin(list(symbols)) & self.frame["date"].between(lo, hi)
        frame = self.frame.loc[inside]
        rows = self.issues
        rows = rows[rows["symbol"].isin(list(symbols)) & rows["date"].between(lo, hi)]
        issues = pd.concat([rows, _note_issues(frame)], ignore_index=True)
        bars = frame[[c for c in frame.columns if not c.startswith(_NOTE)]].reset_index(drop=True)
        return BarSlice(bars, _sorted_issues(issues))


def _sorted_issues(issues: pd.DataFrame) -> pd.DataFrame:
    if issues.empty:
        return empty_issues()
    out = issues[ISSUE_COLUMNS].astype({"symbol": "string", "rule": "string", "action": "string", "detail": "string"})
    return out.sort_values(["symbol", "date", "rule", "detail"], kind="stable").reset_index(drop=True)


def _note_issues(frame: pd.DataFrame) -> pd.DataFrame:
    """One issue per (symbol, note rule, note text): dated at its first row, counting its rows in ``frame``."""
    rows = []
    for column in [c for c in frame.columns if c.startswith(_NOTE)]:
        rule = column[len(_NOTE):]
        flagged = frame.loc[frame[column].notna(), ["symbol", "date", column]]
        if flagged.empty:
            continue
        spans = flagged.groupby(["symbol", column], sort=True, observed=True)["date"].agg(["min", "max", "size"])
        for (symbol, text), span in spans.iterrows():
            first, last = span["min"].date(), span["max"].date()
            rows_txt = "1 row" if span["size"] == 1 else f"{span['size']} rows"
            detail = f"{text} ({rows_txt}, {first}..{last})"
            rows.append({"symbol": symbol, "date": span["min"], "rule": rule, "action": NOTE_ACTIONS[rule], "detail": detail})
    return pd.DataFrame(rows, columns=ISSUE_COLUMNS) if rows else empty_issues()


# ----- the checks -------------------------------------------------------------------------------------
def check_bars(raw: pd.DataFrame, origin: str, policy: BarPolicy | None = None) -> CheckedBars:
    """Parse raw bars (format errors raise) and apply the policy (see the module docstring)."""
    policy = policy or BarPolicy()
    return apply_policy(parse_bars(raw, origin, policy.date_format), origin, policy)


def apply_policy(parsed: pd.DataFrame, origin: str, policy: BarPolicy) -> CheckedBars:
    """Repair, drop and record (repair) or reject listing every problem (strict); format facts in both."""
    if parsed.empty:
        return CheckedBars.empty()
    work = _by_symbol_and_date(parsed.assign(_order=np.arange(len(parsed))))
    no_volume = _fill_absent(work, _Symbols.of(work))
    untrusted = _untrusted(work)
    partial = _partial_missing(work, untrusted.notna(), no_volume)
    if policy.strict:
        _reject_problems(work, origin, untrusted, partial)
        return _finish(work, empty_issues())
    kept = untrusted.isna()
    untrusted_issues = _row_issues(work, ~kept, untrusted, DROPPED, _drop_detail)
    _fill_partial(work, partial, kept)
    ohlc_issues, beyond = _judge_ohlc(work, kept, policy.tolerance)
    kept &= ~beyond
    duplicate_issues, earlier = _drop_duplicates(work, kept)
    kept &= ~earlier
    return _finish(work.loc[kept], pd.concat([untrusted_issues, ohlc_issues, duplicate_issues], ignore_index=True))


def _by_symbol_and_date(work: pd.DataFrame) -> pd.DataFrame:
    """Rows by symbol, date, then input order (``_order``: "the last duplicate wins"); a file already in that
    order (most are) is not sorted again."""
    symbols = work["symbol"].to_numpy(dtype=object)
    days = work["date"].to_numpy(dtype="datetime64[ns]").view(np.int64)
    same = symbols[1:] == symbols[:-1]
    if bool(np.all((symbols[1:] > symbols[:-1]) | (same & (days[1:] >= days[:-1])))):
        return work.reset_index(drop=True)
    codes, _ = pd.factorize(symbols, sort=True)
    return work.take(np.lexsort((work["_order"].to_numpy(), days, codes))).reset_index(drop=True)


def _finish(work: pd.DataFrame, issues: pd.DataFrame) -> CheckedBars:
    notes = [c for c in work.columns if c.startswith(_NOTE)]
    frame = pd.concat([to_canonical(work, sort=False), work[notes].reset_index(drop=True)], axis=1)
    return CheckedBars(frame, _sorted_issues(issues))


def _note(work: pd.DataFrame, rule: str, mask: pd.Series | np.ndarray, text: str) -> None:
    """Mark rows for a per-symbol issue (the first note of a row and rule wins); ``{file}`` in ``text`` names
    each row's file (or "the input")."""
    column = _NOTE + rule
    mask = pd.Series(mask, index=work.index)
    if not mask.any():
        return
    if column not in work.columns:
        work[column] = pd.Series(pd.NA, index=work.index, dtype="object")
    mask &= work[column].isna()
    files = work.loc[mask, "_file"].fillna("the input") if "_file" in work.columns else pd.Series("the input", index=work.index[mask])
    texts = {name: text.format(file=name) for name in files.unique()}
    work.loc[mask, column] = files.map(texts)


# ----- per-symbol reductions ----------------------------------------------------------------------------
@dataclass(frozen=True)
class _Symbols:
    """Each row's symbol index in a frame sorted by symbol, and per-symbol reductions broadcast back to the rows
    (numpy on contiguous groups: a pandas groupby on 1.2 M string keys costs more than all the checks)."""

    codes: np.ndarray
    starts: np.ndarray

    @classmethod
    def of(cls, work: pd.DataFrame) -> _Symbols:
        values = work["symbol"].to_numpy(dtype=object)
        starts = np.concatenate([[0], np.flatnonzero(values[1:] != values[:-1]) + 1]).astype(np.int64)
        return cls(np.repeat(np.arange(len(starts)), np.diff(np.append(starts, len(values)))), starts)

    def count(self, mask: pd.Series | np.ndarray) -> np.ndarray:
        return np.bincount(self.codes, weights=np.asarray(mask, dtype=float), minlength=len(self.starts))[self.codes]

    def same_value(self, values: pd.Series) -> np.ndarray:
        """Rows whose symbol's non-missing values are all equal (and at least one)."""
        x = values.to_numpy(dtype=float)
        low, high = np.fmin.reduceat(x, self.starts), np.fmax.reduceat(x, self.starts)
        return ((low == high) & ~np.isnan(low))[self.codes]


# ----- format facts (both modes) -------------------------------------------------------------------------
def _empty_for_symbol(work: pd.DataFrame, groups: _Symbols, column: str) -> pd.Series:
    """Rows whose symbol has no value at all in ``column``."""
    return pd.Series(groups.count(work[column].notna()) == 0, index=work.index)


def _fill_absent(work: pd.DataFrame, groups: _Symbols) -> pd.Series:
    """Columns a symbol lacks entirely: open/high/low/adj_close from close, volume NULL; returns the rows whose
    NULL volume is such a format fact (not a per-row gap)."""
    absent = {c: c not in work.columns for c in ("open", "high", "low", "adj_close", "volume")}
    for column, missing in absent.items():
        if missing:
            work[column] = np.nan
    filled = {}
    for column in ("open", "high", "low", "adj_close", "volume"):
        empty = _empty_for_symbol(work, groups, column)
        filled[column] = empty
        if not empty.any():
            continue
        how = _FILL_TEXT[column]
        where = f"no {column} column in {{file}}" if absent[column] else f"{column} empty for this symbol in {{file}}"
        _note(work, f"missing_{column}", empty, f"{where}: {how}")
        _derive(work, column, empty)
    _close_only(work, groups, filled["open"] | filled["high"] | filled["low"])
    return filled["volume"] | _constant_volume(work, groups)


_FILL_TEXT = {
    "open": "set to close",
    "high": "set to max(open, close)",
    "low": "set to min(open, close)",
    "adj_close": "set to close (no dividend adjustment)",
    "volume": "stored as NULL",
}


def _derive(work: pd.DataFrame, column: str, rows: pd.Series) -> None:
    """A missing open is the close; high/low the larger/smaller of open and close; volume stays NULL."""
    if column == "volume" or not rows.any():
        return
    if column in ("open", "adj_close"):
        work.loc[rows, column] = work.loc[rows, "close"]
    elif column == "high":
        work.loc[rows, "high"] = np.fmax(work.loc[rows, "open"], work.loc[rows, "close"])
    else:
        work.loc[rows, "low"] = np.fmin(work.loc[rows, "open"], work.loc[rows, "close"])


def _constant_volume(work: pd.DataFrame, groups: _Symbols) -> pd.Series:
    """Rows of symbols whose volume is one value on every row (at least CONSTANT_VOLUME_MIN_ROWS): set NULL."""
    counted = groups.count(work["volume"].notna()) >= CONSTANT_VOLUME_MIN_ROWS
    constant = pd.Series(groups.same_value(work["volume"]) & counted, index=work.index)
    for value in work.loc[constant, "volume"].dropna().unique():
        rows = constant & (work["volume"] == value)
        _note(work, "constant_volume", rows, f"volume is {value:g} on every row of this symbol in {{file}}: stored as NULL")
    work.loc[constant, "volume"] = np.nan
    return constant


def _close_only(work: pd.DataFrame, groups: _Symbols, derived: pd.Series) -> None:
    """Symbols whose given open, high and low all equal close: reported (their intraday features are flat)."""
    flat = (work["open"] == work["close"]) & (work["high"] == work["close"]) & (work["low"] == work["close"])
    everywhere = (groups.count(~flat) == 0) & (groups.count(np.ones(len(work))) >= 2) & ~derived.to_numpy()
    _note(work, "close_only", everywhere, "open, high and low equal close on every row of {file}: no intraday range")


# ----- row rules ---------------------------------------------------------------------------------------
def _untrusted(work: pd.DataFrame) -> pd.Series:
    """The first rule that makes a row untrustworthy (dropped in repair mode), or NA."""
    rules = pd.Series(pd.NA, index=work.index, dtype="object")

    def mark(rule: str, mask: pd.Series) -> None:
        rules[mask.to_numpy() & rules.isna().to_numpy()] = rule

    mark("not_a_session", ~work["date"].isin(all_sessions()))
    mark("missing_close", work["close"].isna())
    mark("nonpositive_price", (work[PRICE_COLUMNS] <= 0).any(axis=1))
    mark("infinite_value", np.isinf(work[NUMERIC_COLUMNS]).any(axis=1))
    mark("negative_volume", work["volume"] < 0)
    return rules


def _partial_missing(work: pd.DataFrame, dropped: pd.Series, no_volume: pd.Series) -> dict[str, pd.Series]:
    """Rows with a gap in a column the symbol otherwise has (format facts and dropped rows left out)."""
    out = {c: work[c].isna() & ~dropped for c in ("open", "high", "low", "adj_close")}
    out["volume"] = work["volume"].isna() & ~dropped & ~no_volume
    return {c: m for c, m in out.items() if m.any()}


def _fill_partial(work: pd.DataFrame, partial: dict[str, pd.Series], kept: pd.Series) -> None:
    """Repair mode: per-row gaps filled (prices) or reported (volume), one note per symbol."""
    texts = {
        "open": "open missing on some rows of {file}: set to close",
        "high": "high missing on some rows of {file}: set to max(open, close)",
        "low": "low missing on some rows of {file}: set to min(open, close)",
        "adj_close": "adj_close missing on some rows of {file}: close x the nearest bar's adj_close/close",
        "volume": "volume missing on some rows of {file}: stored as NULL",
    }
    for column in ("open", "high", "low", "adj_close", "volume"):
        rows = partial.get(column)
        if rows is None:
            continue
        _note(work, f"missing_{column}", rows, texts[column])
        if column == "adj_close":
            _fill_adj_close(work, rows, kept)
        else:
            _derive(work, column, rows)


def _fill_adj_close(work: pd.DataFrame, rows: pd.Series, kept: pd.Series) -> None:
    """close x the dividend factor (adj_close/close) of the nearest earlier, else later, trusted bar."""
    ratio = (work["adj_close"] / work["close"]).where(kept & ~rows)
    by_symbol = ratio.groupby(work["symbol"], observed=True)
    nearest = by_symbol.ffill().fillna(by_symbol.bfill()).fillna(1.0)
    work.loc[rows, "adj_close"] = work.loc[rows, "close"] * nearest[rows]


def _ohlc_excess(work: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Relative size of each OHLC ordering violation (<= 0 where none): high below low, open outside, close
    outside [low, high] (numpy: this runs on every row)."""
    o, h, l, c = (work[k].to_numpy(dtype=float) for k in ("open", "high", "low", "close"))
    with np.errstate(divide="ignore", invalid="ignore"):  # zero prices are dropped rows, judged elsewhere
        excess = ((l - h) / h, np.fmax((o - h) / h, (l - o) / l), np.fmax((c - h) / h, (l - c) / l))
    return tuple(np.nan_to_num(e, nan=0.0) for e in excess)  # type: ignore[return-value]


def _ohlc_worst(work: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """The worst violation per row, and the rule naming it where there is one: a broken range (high below low)
    names the row's problem, else the worse of open and close."""
    high_low, open_out, close_out = _ohlc_excess(work)
    worst = pd.Series(np.maximum(high_low, np.maximum(open_out, close_out)), index=work.index)
    rule = pd.Series(pd.NA, index=work.index, dtype="object")
    bad = (worst > OHLC_TOLERANCE).to_numpy()
    rule[bad] = np.where(
        high_low[bad] > OHLC_TOLERANCE,
        "high_below_low",
        np.where(open_out[bad] >= close_out[bad], "open_outside_range", "close_outside_range"),
    )
    return worst, rule


def _judge_ohlc(work: pd.DataFrame, kept: pd.Series, tolerance: float) -> tuple[pd.DataFrame, pd.Series]:
    """Widen high/low over open/close where the worst violation is within ``tolerance``; the rows beyond it are
    returned to be dropped. Both are recorded with the values as they came."""
    worst, rule = _ohlc_worst(work)
    bad = kept & (worst > OHLC_TOLERANCE)
    if not bad.any():
        return empty_issues(), bad
    repair, drop = bad & (worst <= tolerance), bad & (worst > tolerance)
    prices = work.loc[repair, ["open", "high", "low", "close"]]
    widened = pd.DataFrame({"high": prices.max(axis=1), "low": prices.min(axis=1)})

    def repaired(row: pd.Series, idx: int) -> str:
        new = widened.loc[idx]
        changes = [f"{k} {row[k]:.6g} -> {new[k]:.6g}" for k in ("high", "low") if row[k] != new[k]]
        return f"{_violation(row, rule[idx], worst[idx])}: {', '.join(changes)}"

    def dropped(row: pd.Series, idx: int) -> str:
        return f"{_violation(row, rule[idx], worst[idx])}, more than the tolerance {tolerance:g}: row dropped"

    issues = pd.concat(
        [_row_issues(work, repair, rule, REPAIRED, repaired), _row_issues(work, drop, rule, DROPPED, dropped)],
        ignore_index=True,
    )
    work.loc[repair, ["high", "low"]] = widened[["high", "low"]]
    return issues, drop


def _violation(row: pd.Series, rule: str, size: float) -> str:
    values = ", ".join(f"{k} {row[k]:.6g}" for k in ("open", "high", "low", "close"))
    return f"{_label(row)}: {RULE_TEXT[rule]} by {size:.2%} ({values})"


def _earlier_duplicates(work: pd.DataFrame, rows: pd.Series) -> pd.Series:
    """Among ``rows``, those followed by a row of the same (symbol, date): ``work`` is sorted by symbol, date and
    input order, so these are all but the last copy in the input."""
    picked = work.loc[rows.to_numpy(), ["symbol", "date"]]
    same = (picked["symbol"].to_numpy()[1:] == picked["symbol"].to_numpy()[:-1]) & (
        picked["date"].to_numpy()[1:] == picked["date"].to_numpy()[:-1]
    )
    out = pd.Series(False, index=work.index)
    out[picked.index[:-1][same]] = True
    return out


def _drop_duplicates(work: pd.DataFrame, kept: pd.Series) -> tuple[pd.DataFrame, pd.Series]:
    """All but the last (in input order) of the kept rows sharing a (symbol, date): their issues and rows."""
    rows = _earlier_duplicates(work, kept)
    if not rows.any():
        return empty_issues(), rows
    keys = work.loc[rows, ["symbol", "date"]]
    copies = work.loc[kept & ~rows & work.set_index(["symbol", "date"]).index.isin(pd.MultiIndex.from_frame(keys))]
    last = copies.set_index(["symbol", "date"])

    def detail(row: pd.Series, idx: int) -> str:
        winner = last.loc[(row["symbol"], row["date"])]
        differs = [f"{k} {row[k]:.6g} vs {winner[k]:.6g}" for k in NUMERIC_COLUMNS if not _same(row[k], winner[k])]
        how = f"differs: {', '.join(differs)}" if differs else "identical values"
        return f"{_label(row)}: a later bar for the same (symbol, date) is kept ({_label(winner)}; {how})"

    return _row_issues(work, rows, pd.Series("duplicate_date", index=work.index), DROPPED, detail), rows


def _same(a: float, b: float) -> bool:
    return (pd.isna(a) and pd.isna(b)) or a == b


def _label(row: pd.Series) -> str:
    """Where a row came from: 'FILE row N' (or 'row N' when the input is not a file)."""
    line = row.get("_line", "?")
    source = row.get("_file")
    return f"{source} row {line}" if isinstance(source, str) and source else f"row {line}"


def _drop_detail(row: pd.Series, idx: int) -> str:
    return f"{_label(row)}: {RULE_TEXT[row['_rule']]}: row dropped"


def _row_issues(work: pd.DataFrame, mask: pd.Series, rules: pd.Series, action: str, detail) -> pd.DataFrame:
    """One issue per row of ``mask`` (few rows: details are built one by one)."""
    rows = work.loc[mask.to_numpy()].assign(_rule=rules[mask.to_numpy()])
    if rows.empty:
        return empty_issues()
    out = [
        {"symbol": r["symbol"], "date": r["date"], "rule": r["_rule"], "action": action, "detail": detail(r, idx)}
        for idx, r in rows.iterrows()
    ]
    return pd.DataFrame(out, columns=ISSUE_COLUMNS)


# ----- strict -----------------------------------------------------------------------------------------
def _strict_problems(work: pd.DataFrame, untrusted: pd.Series, partial: dict[str, pd.Series]) -> pd.Series:
    """Each bad row's first problem, in RULE_TEXT order; OHLC violations of any size count."""
    rules = untrusted.copy()
    for column, rows in partial.items():
        rules[rows.to_numpy() & rules.isna().to_numpy()] = f"missing_{column}"
    worst, rule = _ohlc_worst(work)
    violated = (worst > OHLC_TOLERANCE) & rules.isna()
    rules[violated] = rule[violated]
    duplicate = _earlier_duplicates(work, pd.Series(True, index=work.index)) & rules.isna()
    rules[duplicate] = "duplicate_date"
    return rules


def _reject_problems(work: pd.DataFrame, origin: str, untrusted: pd.Series, partial: dict[str, pd.Series]) -> None:
    """Strict mode: raise one error counting every problem per rule, with the first rows of each."""
    rules = _strict_problems(work, untrusted, partial)
    if rules.isna().all():
        return
    # Messages name rows in input order, as the file reads.
    shown = work.assign(_rule=rules).sort_values("_order", kind="stable")
    counts = [(rule, int((shown["_rule"] == rule).sum())) for rule in RULE_TEXT if (shown["_rule"] == rule).any()]
    total = sum(n for _, n in counts)
    head = f"{origin}: {total} bad row{'s' if total > 1 else ''} (IBF_BAR_POLICY=strict rejects the input)"
    if len(counts) == 1:
        rule = counts[0][0]
        where = describe_rows(shown, shown["_rule"] == rule, STRICT_EXAMPLES)
        raise BarsValidationError(f"{head}: {RULE_TEXT[rule]} at {', '.join(where)}")
    lines = [f"{head}: " + ", ".join(f"{n} {RULE_TEXT[rule]}" for rule, n in counts)]
    for rule, n in counts:
        where = describe_rows(shown, shown["_rule"] == rule, STRICT_EXAMPLES)
        lines.append(f"  {RULE_TEXT[rule]} ({n}): {', '.join(where)}")
    raise BarsValidationError("\n".join(lines))


def validate_bars(
    raw: pd.DataFrame, origin: str, symbols: list[str] | None = None, policy: BarPolicy | None = None
) -> pd.DataFrame:
    """Check and normalise raw bars into the canonical frame; strict by default (any bad row is an error listing
    every problem). For a source that records repairs, use ``check_bars`` and keep its issues.

    ``raw`` needs date, symbol and close; a ``_line`` column, when present, is used for row numbers in messages.
    Nothing is modified in place.
    """
    bars = check_bars(raw, origin, policy or STRICT).bars
    if symbols is not None:
        present = set(bars["symbol"].unique())
        unknown = [s for s in symbols if s not in present]
        if unknown:
            raise BarsValidationError(f"{origin}: no bars for symbol(s) {', '.join(unknown)}")
        bars = bars[bars["symbol"].isin(symbols)].reset_index(drop=True)
    return bars
