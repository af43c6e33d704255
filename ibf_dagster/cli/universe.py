"""``ibf universe``: the symbols partitioned by every per-symbol asset (Dagster's dynamic ``symbol`` partitions)."""

from __future__ import annotations

from typing import Annotated

import typer

from ibf_core.settings import normalize_symbol
from ibf_dagster.cli._common import _fail, _settings, out, preflight_symbols
from ibf_dagster.instance import get_instance

# Heavy imports wait until a command runs: `ibf --help` must not load dagster.


def universe_list() -> None:
    """Symbols that are partitions (* = also in IBF_UNIVERSE)."""
    from ibf_dagster.runner import known_symbols

    settings = _settings()
    for symbol in known_symbols(get_instance(settings)):
        out.print(f"{symbol}{' *' if symbol in settings.universe else ''}", highlight=False)


def universe_add(symbols: Annotated[list[str], typer.Argument(help="Symbols to add")]) -> None:
    """Add symbols to the ``symbol`` partitions (each must be one the bar source IBF_SOURCE knows)."""
    from ibf_dagster.runner import sync_universe

    try:
        wanted = [normalize_symbol(s) for s in symbols]
    except ValueError as exc:
        _fail(str(exc), 2)
    settings = _settings()
    preflight_symbols(settings, wanted)
    added = sync_universe(get_instance(settings), wanted)
    out.print(f"added: {', '.join(added) or 'nothing (already present)'}", highlight=False)


def universe_remove(symbols: Annotated[list[str], typer.Argument(help="Symbols to remove")]) -> None:
    """Remove symbols from the ``symbol`` partitions (warehouse rows stay until you delete them)."""
    from ibf_dagster.partitions import SYMBOL_PARTITIONS
    from ibf_dagster.runner import known_symbols

    settings = _settings()
    instance = get_instance(settings)
    known = set(known_symbols(instance))
    for raw in symbols:
        symbol = raw.strip().upper()
        if symbol not in known:
            _fail(f"{symbol} is not in the universe", 2)
        instance.delete_dynamic_partition(SYMBOL_PARTITIONS.name, symbol)
        note = " (still in IBF_UNIVERSE: the universe_sync sensor will add it back)" if symbol in settings.universe else ""
        out.print(f"removed {symbol}{note}", highlight=False)
