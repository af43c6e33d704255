"""The user's own daily bars: CSV or Parquet files in long format ``date,symbol,open,high,low,close,volume[,adj_close]``.

``path`` may be one file or a folder (every ``*.csv``, ``*.csv.gz`` and ``*.parquet`` in it, sorted). Every file is
validated as a whole before anything is returned, so one bad row fails the load with its file and line number.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from ibf_core.bars import BarsValidationError, split_adjust, validate_bars
from ibf_core.sources.errors import SourceError, UnknownSymbolError

SUFFIXES = (".csv", ".csv.gz", ".parquet")


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.name.endswith(SUFFIXES))
        if not files:
            raise SourceError(f"{path}: no {', '.join(SUFFIXES)} files in this folder")
        return files
    if not path.exists():
        raise SourceError(f"{path}: no such file")
    return [path]


def read_bars_file(path: Path) -> pd.DataFrame:
    """Read and validate one file; errors name the file and the line (CSV) or row (Parquet)."""
    try:
        if path.name.endswith(".parquet"):
            raw = pd.read_parquet(path)
            raw["_line"] = raw.index + 1
        else:
            # Everything as text first, so validation can name the exact cell that is not a number.
            raw = pd.read_csv(path, dtype=str, skipinitialspace=True)
            raw["_line"] = raw.index + 2
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise BarsValidationError(f"{path}: cannot read ({str(exc).splitlines()[0]})") from exc
    return validate_bars(raw, origin=str(path))


def read_bars_path(path: Path) -> pd.DataFrame:
    """All bars under ``path`` (one file or a folder), validated together (no duplicate symbol/date across files)."""
    frames = [read_bars_file(f) for f in _files(path)]
    bars = pd.concat(frames, ignore_index=True)
    if len(frames) > 1:
        bars["_line"] = bars.index
        bars = validate_bars(bars, origin=f"{path} (all files)")
    return split_adjust(bars)


class CsvSource:
    """Bars from the user's files; the files are re-read on each call so edits are picked up."""

    name = "csv"

    def __init__(self, path: Path | str):
        self.path = Path(path).expanduser()

    def fetch_daily_bars(self, symbols: Sequence[str], start: dt.date, end: dt.date) -> pd.DataFrame:
        bars = read_bars_path(self.path)
        unknown = sorted(set(symbols) - set(bars["symbol"].unique()))
        if unknown:
            raise UnknownSymbolError(", ".join(unknown), f"not in {self.path}")
        mask = bars["symbol"].isin(list(symbols)) & bars["date"].between(pd.Timestamp(start), pd.Timestamp(end))
        return bars.loc[mask].reset_index(drop=True)
