"""The one pre-flight check of a request (``ibf backfill``, ``ibf stream``, a fundamentals load through backfill,
``ibf universe add``): every asset name, the date range and every symbol are checked before any run is launched,
any partition key added or any row written, so bad input changes nothing.

What "unknown" means: the market-bar source is the authority on symbols. ``sample`` knows its five symbols, ``csv``
the symbols in its file or folder, ``ibkr`` what IB's contract details resolve to one stock on SMART/USD (error 200:
no security definition). The news and fundamentals feeds (Alpha Vantage, a headline file) are never asked: a feed
with no articles for a symbol, or Alpha Vantage's ``{}`` (its answer for an unknown symbol and for an ETF alike), is
data (nothing to store), not a bad symbol; a request for a symbol the bar source lacks is refused before any feed
request is made.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from ibf_core.calendar import trading_days
from ibf_core.sources.base import BarSource, listed


class BadInputError(ValueError):
    """A request names a symbol, asset or date range that cannot be served; nothing was written or launched."""


def check_assets(assets: Sequence[str], asset_names: Sequence[str]) -> None:
    """Every name in ``assets`` is one of the asset graph's ``asset_names``."""
    unknown = [a for a in assets if a not in set(asset_names)]
    if unknown:
        noun = "asset" if len(unknown) == 1 else "assets"
        raise BadInputError(f"unknown {noun} {', '.join(unknown)} (asset graph: {listed(sorted(asset_names), 30)})")


def check_dates(start: dt.date | None, end: dt.date | None) -> None:
    """A range with both ends has at least one NYSE session (an end before the start has none)."""
    if start is None or end is None:
        return
    if start > end:
        raise BadInputError(f"empty date range {start}..{end}: the start is after the end")
    if trading_days(start, end).empty:
        raise BadInputError(f"empty date range {start}..{end}: no NYSE session between them (weekend or holidays)")


def check_symbols(source: BarSource, symbols: Sequence[str]) -> None:
    """Every symbol is one ``source`` knows (it is asked: see the module docstring for what each source answers)."""
    wanted = list(dict.fromkeys(symbols))
    if not wanted:
        return
    found = source.lookup_symbols(wanted)
    if found.unknown:
        noun = "symbol" if len(found.unknown) == 1 else "symbols"
        raise BadInputError(f"unknown {noun} {listed(found.unknown)} (source {source.name}: {found.where})")


def preflight(
    source: BarSource,
    symbols: Sequence[str],
    start: dt.date | None = None,
    end: dt.date | None = None,
    assets: Sequence[str] = (),
    asset_names: Sequence[str] = (),
) -> None:
    """Refuse the request with one ``BadInputError`` line unless every asset, the date range and every symbol is
    good; the cheap checks first, the source (a file read, an IB connection) last."""
    check_assets(assets, asset_names)
    check_dates(start, end)
    check_symbols(source, symbols)
