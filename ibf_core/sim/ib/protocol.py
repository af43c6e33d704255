"""What the simulated IB Gateway says and parses: messages, contracts, durations, faults and the rows of its replies."""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import zlib
from collections.abc import Iterable
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pandas as pd

from ibf_core.calendar import all_sessions
from ibf_core.sim.faults import FaultSet, parse_fault_specs

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 4002  # IB Gateway paper-trading port, one of Settings.ib_ports
SERVER_VERSION = 176  # inside the 157..178 range both ib_insync and ib_async negotiate
ACCOUNT = "DU1234567"
EASTERN = "US/Eastern"
DEFAULT_HISTORY = (dt.date(1990, 1, 2), None)  # None: up to today

# Error texts as real TWS words them (code 162 shares one prefix).
HMDS = "Historical Market Data Service error message:"
MSG_NO_DATA = HMDS + "HMDS query returned no data: {symbol}@SMART {what}"
MSG_PACING = HMDS + "Historical data request pacing violation"
MSG_TIME_LENGTH = HMDS + "Time length exceed max."
MSG_NO_SECDEF = "No security definition has been found for the request"
MSG_CLIENT_ID = "Unable to connect as the client id is already in use. Retry with a unique client id."
MSG_LOST = "Connectivity between IB and Trader Workstation has been lost."
MSG_RESTORED = (
    "Connectivity between IB and Trader Workstation has been restored - data maintained. "
    "All data farms are connected: usfarm; ushmds; secdefnj."
)
VALIDATION = "Error validating request.-'bP' : cause - "
FARM_NOTICES = (
    (2104, "Market data farm connection is OK:usfarm"),
    (2106, "HMDS data farm connection is OK:ushmds"),
    (2158, "Sec-def data farm connection is OK:secdefnj"),
)

# Well-known IB conIds and listings; other symbols get a stable hash-based conId.
KNOWN_CONTRACTS = {
    "AAPL": (265598, "NASDAQ", "APPLE INC"),
    "MSFT": (272093, "NASDAQ", "MICROSOFT CORP"),
    "IBM": (8314, "NYSE", "INTL BUSINESS MACHINES CORP"),
    "GOOG": (208813720, "NASDAQ", "ALPHABET INC-CL C"),
    "FB": (107113386, "NASDAQ", "META PLATFORMS INC-CLASS A"),
}

BAR_SIZES = {  # IB bar-size setting -> seconds
    "1 secs": 1, "5 secs": 5, "10 secs": 10, "15 secs": 15, "30 secs": 30,
    "1 min": 60, "2 mins": 120, "3 mins": 180, "5 mins": 300, "10 mins": 600, "15 mins": 900,
    "20 mins": 1200, "30 mins": 1800, "1 hour": 3600, "2 hours": 7200, "3 hours": 10800,
    "4 hours": 14400, "8 hours": 28800, "1 day": 86400, "1 week": 604800, "1 month": 2592000,
}  # fmt: skip
DAY = 86400
# IB's table of the smallest bar size allowed for a duration (duration seconds, smallest bar seconds).
MIN_BAR_FOR_DURATION = (
    (1800, 1), (3600, 5), (14400, 10), (28800, 30), (DAY, 60), (2 * DAY, 120), (7 * DAY, 180), (31 * DAY, 1800),
)  # fmt: skip
UNIT_SECONDS = {"S": 1, "D": DAY, "W": 7 * DAY, "M": int(30.4 * DAY), "Y": 365 * DAY}
DURATION_RE = re.compile(r"^\s*(\d+)\s+([SDWMY])\s*$")
SUPPORTED_WHAT = {"TRADES", "ADJUSTED_LAST", "BID_ASK"}
QUOTE_WHAT = {"MIDPOINT", "BID", "ASK", "BID_ASK", "HISTORICAL_VOLATILITY", "OPTION_IMPLIED_VOLATILITY"}


@dataclasses.dataclass(frozen=True)
class Faults(FaultSet):
    """Switchable misbehaviour. Counters apply to the next N historical requests and count down."""

    pacing_violations: int = 0  # answer error 162 "pacing violation"
    unknown_symbols: frozenset[str] = frozenset()  # answer error 200 for these, even if bars exist
    drop_connections: int = 0  # close the socket right after receiving the request
    connectivity_losses: int = 0  # send 1100, then 1102 after ``restore_after`` seconds
    restore_after: float | None = 0.2  # None: connectivity never comes back on that connection
    answer_after_restore: bool = False  # whether the in-flight request is answered after 1102
    reply_delay: float = 0.0  # seconds before every historical reply (data or error)
    client_ids_in_use: frozenset[int] = frozenset()  # these client ids get error 326 and are disconnected
    # live data (ibf_core.sim.ib.live)
    no_market_data: frozenset[str] = frozenset()  # no live subscription: error 10089, or delayed data if asked for
    max_market_data_lines: int = 100  # reqMktData lines per connection; more: error 101
    realtime_bar_requests_per_10min: int = 60  # reqRealTimeBars per 10 minutes; more: error 420
    drop_stream_after_bars: int | None = None  # close the socket after this many real-time bars on a connection
    stream_connectivity_loss_after_bars: int | None = None  # 1100 (then 1102 after restore_after) mid-stream
    max_tick_by_tick: int = 5  # reqTickByTickData subscriptions per connection; more: error 10190
    max_depth_requests: int = 3  # reqMktDepth subscriptions per connection; more: error 309
    nightly_reset_seconds: float | None = None  # setting it restarts the gateway now: every connection dropped, none accepted for N market seconds

    COUNTERS = ("pacing_violations", "drop_connections", "connectivity_losses")

    def _normalize(self, fixed: dict[str, Any]) -> dict[str, Any]:
        if "unknown_symbols" in fixed:
            fixed["unknown_symbols"] = frozenset(s.strip().upper() for s in _as_iterable(fixed["unknown_symbols"]))
        if "no_market_data" in fixed:
            fixed["no_market_data"] = frozenset(s.strip().upper() for s in _as_iterable(fixed["no_market_data"]))
        if "client_ids_in_use" in fixed:
            fixed["client_ids_in_use"] = frozenset(int(i) for i in _as_iterable(fixed["client_ids_in_use"]))
        return fixed


def parse_faults(specs: Iterable[str]) -> Faults:
    """Faults from command-line ``name=value`` strings, e.g. ``pacing_violations=2``, ``unknown_symbols=XYZ,QQQ``."""
    return parse_fault_specs(Faults, specs)


def _as_iterable(value: Any) -> Iterable[Any]:
    if isinstance(value, str):
        return [v for v in value.split(",") if v.strip()]
    if isinstance(value, int):
        return [value]
    return value


@dataclasses.dataclass
class HistoricalRequest:
    """One parsed reqHistoricalData as received; ``outcome`` is filled in when it is answered."""

    symbol: str
    end_date_time: str
    duration: str
    bar_size: str
    what_to_show: str
    use_rth: bool
    format_date: int
    req_id: int
    client_id: int
    timestamp: float
    outcome: str = "pending"  # "bars:<n>", "error:<code>", "dropped", "cancelled", "lost"


class SimulatorError(RuntimeError):
    """The simulator could not start or was misused."""


class Reject(Exception):
    """Answer the current request with an IB error."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code, self.message = code, message


def normalise_frame(frame: pd.DataFrame) -> pd.DataFrame:
    missing = [c for c in ("symbol", "date", "open", "high", "low", "close", "volume") if c not in frame.columns]
    if missing:
        raise SimulatorError(f"bar frame lacks column(s) {', '.join(missing)}")
    out = frame.copy()
    out["symbol"] = out["symbol"].astype(str).str.strip().str.upper()
    out["date"] = pd.to_datetime(out["date"]).dt.normalize()
    if "adj_close" not in out.columns:
        out["adj_close"] = out["close"]
    if "spread" in out.columns:
        out["spread"] = pd.to_numeric(out["spread"], errors="coerce").astype("float64")
    return out


def symbol_rows(frame: pd.DataFrame, symbol: str) -> pd.DataFrame | None:
    rows = frame[frame["symbol"] == symbol].sort_values("date").reset_index(drop=True)
    return rows if len(rows) else None


# ---- request parsing ------------------------------------------------------------------------------
def parse_end_date_time(text: str, now: dt.datetime) -> dt.date:
    """The US/Eastern date an IB endDateTime refers to ('' = now).

    Accepts ``YYYYMMDD HH:MM:SS`` (TWS local time, taken as US/Eastern), the same followed by a zone
    (``US/Eastern``, ``UTC``, ``Europe/Amsterdam``), ``YYYYMMDD-HH:MM:SS`` (UTC) and ``YYYYMMDD``.
    """
    eastern = ZoneInfo(EASTERN)
    text = text.strip()
    if not text:
        return now.astimezone(eastern).date()
    try:
        if re.fullmatch(r"\d{8}", text):
            return dt.datetime.strptime(text, "%Y%m%d").date()
        if re.fullmatch(r"\d{8}-\d{2}:\d{2}:\d{2}", text):
            stamp = dt.datetime.strptime(text, "%Y%m%d-%H:%M:%S").replace(tzinfo=dt.timezone.utc)
            return stamp.astimezone(eastern).date()
        match = re.fullmatch(r"(\d{8})\s+(\d{2}:\d{2}:\d{2})(?:\s+(\S+))?", text)
        if match:
            day, clock, zone = match.groups()
            tz = ZoneInfo(zone) if zone else eastern
            stamp = dt.datetime.strptime(day + clock, "%Y%m%d%H:%M:%S").replace(tzinfo=tz)
            return stamp.astimezone(eastern).date()
    except (ValueError, ZoneInfoNotFoundError) as exc:
        raise Reject(321, VALIDATION + f"Invalid end date/time '{text}' ({exc})") from None
    raise Reject(321, VALIDATION + f"Invalid end date/time '{text}'")


def parse_duration(text: str) -> tuple[int, str]:
    match = DURATION_RE.match(text)
    if not match or int(match.group(1)) <= 0:
        raise Reject(321, VALIDATION + f"Invalid duration string '{text}'")
    return int(match.group(1)), match.group(2)


def check_duration_vs_bar_size(count: int, unit: str, bar_size: str) -> None:
    """IB's sanity rules: > 365 days only in years; the bar size must suit the duration."""
    if bar_size not in BAR_SIZES:
        raise Reject(321, VALIDATION + f"Historical data bar size setting '{bar_size}' is invalid")
    seconds = count * UNIT_SECONDS[unit]
    if unit != "Y" and seconds > 365 * DAY:
        raise Reject(
            321, VALIDATION + "Historical data requests for durations longer than 365 days must be made in years"
        )
    bar = BAR_SIZES[bar_size]
    smallest = next((min_bar for limit, min_bar in MIN_BAR_FOR_DURATION if seconds <= limit), DAY)
    if bar < smallest:
        raise Reject(162, MSG_TIME_LENGTH)
    if bar > seconds:
        raise Reject(321, VALIDATION + f"bar size '{bar_size}' is longer than the duration '{count} {unit}'")


def window_start(end: dt.date, count: int, unit: str) -> dt.date:
    """First date a duration covers ending at ``end``: ``N D`` counts trading sessions, W/M/Y calendar time."""
    if unit == "D":
        sessions = all_sessions()
        upto = sessions[sessions <= pd.Timestamp(end)]
        return upto[-count].date() if len(upto) >= count else dt.date(1900, 1, 1)
    if unit == "S":
        return end - dt.timedelta(days=max(1, -(-count // DAY)) - 1)
    offset = {"W": pd.DateOffset(weeks=count), "M": pd.DateOffset(months=count), "Y": pd.DateOffset(years=count)}[unit]
    return (pd.Timestamp(end) - offset).date() + dt.timedelta(days=1)


def wire_number(value: float) -> str:
    value = float(value)
    return str(int(value)) if value.is_integer() else repr(value)


# ---- message builders -----------------------------------------------------------------------------
def contract_id(symbol: str) -> int:
    """A stable conId per symbol: IB's real one for well-known symbols, else a CRC-based one."""
    known = KNOWN_CONTRACTS.get(symbol)
    return known[0] if known else 1_000_000 + zlib.crc32(symbol.encode()) % 900_000_000


def symbol_for_con_id(con_id: str) -> str:
    for symbol, (known_id, _, _) in KNOWN_CONTRACTS.items():
        if str(known_id) == con_id:
            return symbol
    return ""


def primary_exchange(symbol: str) -> str:
    known = KNOWN_CONTRACTS.get(symbol)
    # Unknown symbols: NYSE for short tickers, NASDAQ for 4+ letters (the US listing convention).
    return known[1] if known else ("NYSE" if len(symbol) <= 3 else "NASDAQ")


def contract_data(req_id: int, symbol: str) -> list[Any]:
    """contractData (message 10) for server versions >= 164: no version field."""
    con_id = contract_id(symbol)
    long_name = KNOWN_CONTRACTS.get(symbol, (0, "", f"{symbol} SIMULATED INC"))[2]
    hours = "20240102:0930-20240102:1600"
    return [
        10, req_id, symbol, "STK", "", "0", "", "SMART", "USD", symbol, "NMS", symbol, con_id, "0.01",
        "", "ACTIVETIM,AD,ADJUST,ALERT,ALLOC,LMT,MKT,STP", "SMART,AMEX,NYSE,ARCA,ISLAND,NASDAQ", "1", "0",
        long_name, primary_exchange(symbol), "", "Technology", "Computers", "Computers", EASTERN, hours, hours,
        "", "", 1, "ISIN", f"US{con_id:010d}", "1", "", "", "26,26", "", "COMMON", "0.0001", "0.0001", "100",
    ]  # fmt: skip


def bar_rows(frame: pd.DataFrame, adjusted: bool) -> list[tuple]:
    """(date, open, high, low, close, volume) rows; ADJUSTED_LAST scales OHLC by adj_close/close."""
    out = []
    for row in frame.itertuples(index=False):
        o, h, low, c, v = float(row.open), float(row.high), float(row.low), float(row.close), float(row.volume)
        if adjusted:
            factor = float(row.adj_close) / c
            # The adjusted close is adj_close itself (not c * factor) so it round-trips exactly.
            o, h, low, c = o * factor, h * factor, low * factor, float(row.adj_close)
        out.append((row.date.strftime("%Y%m%d"), o, h, low, c, v))
    return out


def bid_ask_rows(frame: pd.DataFrame) -> list[tuple]:
    """IB BID_ASK daily bars around the close: open = time-average bid, high = max ask, low = min bid,
    close = time-average ask, volume -1 (IB sends no size for quote bars).

    With bid = close * (1 - s/2) and ask = close * (1 + s/2) the relative spread (ask - bid) / mid is s.
    One quote level per day, so the day's max ask is the ask and its min bid the bid.
    """
    out = []
    for row in frame.itertuples(index=False):
        close, spread = float(row.close), float(row.spread)
        bid, ask = close * (1 - spread / 2), close * (1 + spread / 2)
        out.append((row.date.strftime("%Y%m%d"), bid, ask, bid, ask, -1.0))
    return out


def historical_data_message(req_id: int, rows: list[tuple]) -> list[Any]:
    """historicalData (message 17): reqId, start, end, count, then 8 fields per bar.

    A negative volume marks quote bars (BID_ASK): IB sends -1 for their volume, WAP and bar count.
    """
    fields: list[Any] = [17, req_id, f"{rows[0][0]}  00:00:00", f"{rows[-1][0]}  23:59:59", len(rows)]
    for date, o, h, low, c, v in rows:
        if v < 0:
            fields += [date, repr(o), repr(h), repr(low), repr(c), -1, -1, -1]
            continue
        wap = round((h + low + c) / 3, 4)
        fields += [date, repr(o), repr(h), repr(low), repr(c), wire_number(v), repr(wap), max(1, int(v // 100))]
    return fields
