"""The user's own daily bars: CSV or Parquet files, one file or a folder of them.

Two layouts, told apart per file by whether it has a symbol column:

* long: ``date,symbol,open,high,low,close,volume[,adj_close]`` (``ticker`` also names the symbol);
* one file per symbol named ``SYMBOL.csv`` (Yahoo's download: ``Date,Open,High,Low,Close,Adj Close,Volume``),
  the symbol taken from the file name.

Headers may be in any case and hold spaces (``Adj Close``). Dates are ISO, or all in the one strptime format of
``IBF_CSV_DATE_FORMAT``; they are never guessed row by row. Only date, symbol and close are required (see
``ibf_core.market.checks`` for what a missing open/high/low/volume becomes). ``path`` may be one file or a folder
(every ``*.csv``, ``*.csv.gz`` and ``*.parquet`` in it, sorted); the whole input is read and checked before
anything is returned, so a format error names its file and line before a byte is written.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from ibf_core.market.bars import BarsValidationError, parse_bars
from ibf_core.market.checks import BarPolicy, BarSlice, CheckedBars, apply_policy
from ibf_core.settings import normalize_symbol
from ibf_core.sources.base import SymbolLookup, listed
from ibf_core.sources.errors import SourceError, UnknownSymbolError

SUFFIXES = (".csv", ".csv.gz", ".parquet")


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.name.endswith(SUFFIXES) and not p.name.startswith("."))
        if not files:
            raise SourceError(f"{path}: no {', '.join(SUFFIXES)} files in this folder")
        return files
    if not path.exists():
        raise SourceError(f"{path}: no such file")
    return [path]


def symbol_from_file_name(path: Path) -> str:
    """``AAPL.csv`` / ``brk-b.csv.gz`` / ``IBM.parquet`` -> the symbol; a name that is not one is an error."""
    stem = path.name
    for suffix in sorted(SUFFIXES, key=len, reverse=True):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    try:
        return normalize_symbol(stem)
    except ValueError:
        raise BarsValidationError(
            f"{path}: no symbol column, and the file name {stem!r} is not a symbol "
            "(one file per symbol must be named SYMBOL.csv; letters, digits, '.', '-')"
        ) from None


def _read_table(path: Path) -> pd.DataFrame:
    """The file as text cells (CSV) or typed columns (Parquet), with ``_line`` as the user counts lines."""
    try:
        if path.name.endswith(".parquet"):
            raw = pd.read_parquet(path)
            return raw.assign(_line=raw.index + 1)
        # Text first, so the parser can name the exact cell that is not a number; no NA guessing either
        # (a ticker "NA" is a symbol), missing tokens are handled per numeric column.
        raw = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True, encoding="utf-8-sig")
        return raw.assign(_line=raw.index + 2)
    except pd.errors.EmptyDataError:
        raise BarsValidationError(f"{path}: empty file (no header, no rows)") from None
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise BarsValidationError(f"{path}: cannot read ({str(exc).splitlines()[0]})") from exc


def read_bars_file(path: Path, date_format: str | None = None) -> pd.DataFrame:
    """One file parsed (format errors name the file and line), the symbol from the file name when it has none."""
    raw = _read_table(path)
    names = {str(c).strip().lower() for c in raw.columns}
    if not names & {"symbol", "ticker"}:
        raw = raw.assign(symbol=symbol_from_file_name(path))
    return parse_bars(raw.assign(_file=path.name), origin=str(path), date_format=date_format)


# The last input read, by its files' (path, size, mtime) and the policy: `ibf backfill --csv` checks the whole
# file before the run and the run's market_bars step reads it again in the same process (1-2 s for a year of
# 500 symbols). A file changed on disk has another key, so edits are still picked up.
_LAST_READ: dict[tuple, CheckedBars] = {}


def read_checked(path: Path, policy: BarPolicy | None = None) -> CheckedBars:
    """All bars under ``path`` with the policy applied once over every file (a duplicate across files is one),
    split-adjusted."""
    policy = policy or BarPolicy()
    files = _files(path)
    key = (str(path), policy, tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files))
    if key in _LAST_READ:
        return _LAST_READ[key]
    frames = [read_bars_file(f, policy.date_format) for f in files]
    frames = [f for f in frames if len(f)]
    if not frames:
        raise BarsValidationError(f"{path}: no bars (header only, no rows)")
    parsed = pd.concat(frames, ignore_index=True)
    checked = apply_policy(parsed, str(path), policy).split_adjusted()
    _LAST_READ.clear()
    _LAST_READ[key] = checked
    return checked


def read_bars_path(path: Path, policy: BarPolicy | None = None) -> pd.DataFrame:
    """All bars under ``path`` (one file or a folder) as the canonical frame."""
    return read_checked(path, policy).bars


class CsvSource:
    """Bars from the user's files; the files are re-read on each call so edits are picked up."""

    name = "csv"

    def __init__(self, path: Path | str, policy: BarPolicy | None = None):
        self.path = Path(path).expanduser()
        self.policy = policy or BarPolicy()

    def read(self) -> CheckedBars:
        """The whole input, checked (raises on a format error, and on any bad row under the strict policy)."""
        return read_checked(self.path, self.policy)

    def lookup_symbols(self, symbols: Sequence[str]) -> SymbolLookup:
        """The symbols not in the input (read and checked whole: a format error is raised here, before any run)."""
        in_file = self.read().symbols()
        unknown = tuple(s for s in symbols if s not in set(in_file))
        return SymbolLookup(unknown, f"{self.path} has {listed(in_file)}")

    def fetch_checked(self, symbols: Sequence[str], start: dt.date, end: dt.date) -> BarSlice:
        """The rectangle's bars and the issues the policy recorded for it."""
        checked = self.read()
        unknown = sorted(set(symbols) - set(checked.symbols()))
        if unknown:
            raise UnknownSymbolError(", ".join(unknown), f"not in {self.path}")
        return checked.cut(symbols, start, end)

    def fetch_daily_bars(self, symbols: Sequence[str], start: dt.date, end: dt.date) -> pd.DataFrame:
        return self.fetch_checked(symbols, start, end).bars
