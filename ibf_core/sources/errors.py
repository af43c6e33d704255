"""Typed errors every bar source raises; each message names the symbol and date range involved."""

from __future__ import annotations

import datetime as dt


class SourceError(RuntimeError):
    """A source could not deliver bars."""


class GatewayUnavailableError(SourceError):
    """No TWS / IB Gateway accepted a connection on any configured port."""


class UnknownSymbolError(SourceError):
    """The source does not know the symbol (IB error 200: no security definition)."""

    def __init__(self, symbol: str, detail: str = ""):
        self.symbol = symbol
        super().__init__(f"unknown symbol {symbol}" + (f": {detail}" if detail else ""))


class HistoricalDataError(SourceError):
    """A history request for one symbol and range failed; carries the IB error code when there is one."""

    def __init__(self, symbol: str, start: dt.date, end: dt.date, message: str, code: int | None = None):
        self.symbol, self.start, self.end, self.code = symbol, start, end, code
        prefix = f"IB error {code}: " if code is not None else ""
        super().__init__(f"{symbol} {start}..{end}: {prefix}{message}")


class PacingViolationError(HistoricalDataError):
    """IB error 162 pacing violation, still failing after the configured retries."""


class ConnectivityLostError(HistoricalDataError):
    """IB error 1100 (or a dropped socket) during a request, not restored in time."""


class ClientIdInUseError(SourceError):
    """IB error 326: another API client already uses this client id."""
