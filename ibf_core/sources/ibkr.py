"""Daily bars from Interactive Brokers TWS / IB Gateway through the ib_insync client.

One ``fetch_daily_bars`` call connects once (trying the configured ports in order), qualifies each symbol,
downloads the trading days missing from the per-symbol Parquet cache in <= 1-year TRADES chunks and asks
once per symbol for ADJUSTED_LAST to get adj_close. With ``bid_ask=True`` it also downloads daily BID_ASK bars
(open = time-average bid, close = time-average ask) in the same chunks and adds ``spread`` = (ask - bid) / mid,
NaN where IB has no quotes. IB's historical-data pacing rules are respected by a request pacer; pacing
violations and dropped connections are retried with exponential backoff (tenacity).

The client runs on a private event loop in a helper thread, so callers need no asyncio loop of their own
(Dagster runs ops in plain threads) and a running loop in the caller's thread is never disturbed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import importlib
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeVar

from ibf_core.progress import report_progress
from ibf_core.sources.errors import (
    ClientIdInUseError,
    ConnectivityLostError,
    GatewayUnavailableError,
    HistoricalDataError,
    PacingViolationError,
    SourceError,
    UnknownSymbolError,
)

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from ibf_core.settings import Settings

# The one place naming the client library: "ib_async" (the maintained fork, same API) is a drop-in.
IB_CLIENT_MODULE = "ib_insync"

log = logging.getLogger(__name__)
T = TypeVar("T")

EASTERN = "US/Eastern"
BAR_SIZE = "1 day"
PACING_WINDOW_S = 600.0  # IB: at most N historical requests in any 10 minutes
IDENTICAL_REQUEST_GAP_S = 15.0  # IB: no identical historical request within 15 seconds
MAX_DAYS_PER_D_DURATION = 365  # IB: longer durations must be given in years
# Consecutive "1 Y" chunks overlap by a week, so a gateway whose "1 Y" means 52 weeks leaves no gap.
CHUNK_OVERLAP_DAYS = 7
CACHE_SUBDIR = "ibkr"
COVERED_KEY = b"ibf.ibkr.covered"  # Parquet schema metadata: date ranges already downloaded
QUOTES_COVERED_KEY = b"ibf.ibkr.covered.bid_ask"  # ... and the ranges whose BID_ASK bars were asked for
BID_ASK = "BID_ASK"
SPREAD = "spread"
NO_DATA_MARKERS = ("no data", "returned no data")
PACING_MARKERS = ("pacing violation", "query cancelled")
CONNECTIVITY_LOST, CONNECTIVITY_RESTORED = 1100, (1101, 1102)
NO_SECURITY_DEFINITION, CLIENT_ID_IN_USE, HISTORICAL_ERROR = 200, 326, 162


def ib_client() -> ModuleType:
    """The IB client library, imported on first use (it is heavy and binds an event loop at import)."""
    return importlib.import_module(IB_CLIENT_MODULE)


# ---- pacing -----------------------------------------------------------------------------------------
class RequestPacer:
    """IB historical-data pacing: a minimum interval, at most ``max_requests`` per sliding ``window``,
    and no identical request within ``identical_gap`` seconds. ``clock`` and ``sleep`` are injectable for tests."""

    def __init__(
        self,
        min_interval: float = 0.5,
        max_requests: int = 60,
        window: float = PACING_WINDOW_S,
        identical_gap: float = IDENTICAL_REQUEST_GAP_S,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ):
        if max_requests <= 0:
            raise ValueError("max_requests must be positive")
        self.min_interval, self.max_requests = min_interval, max_requests
        self.window, self.identical_gap, self.clock, self.sleep = window, identical_gap, clock, sleep
        self._sent: deque[float] = deque()
        self._last_by_key: dict[Hashable, float] = {}

    def wait_time(self, key: Hashable) -> float:
        """Seconds to wait before a request with this key may be sent (0 = now)."""
        now = self.clock()
        while self._sent and now - self._sent[0] >= self.window:
            self._sent.popleft()
        waits = [0.0]
        if self._sent:
            waits.append(self._sent[-1] + self.min_interval - now)
        if len(self._sent) >= self.max_requests:
            waits.append(self._sent[0] + self.window - now)
        last_same = self._last_by_key.get(key)
        if last_same is not None:
            waits.append(last_same + self.identical_gap - now)
        return max(waits)

    def record(self, key: Hashable) -> None:
        now = self.clock()
        self._sent.append(now)
        self._last_by_key[key] = now
        stale = [k for k, t in self._last_by_key.items() if now - t >= self.identical_gap]
        for k in stale:
            del self._last_by_key[k]

    async def acquire(self, key: Hashable) -> None:
        """Wait until the request may go out, then record it."""
        while (delay := self.wait_time(key)) > 0:
            log.debug("pacing: waiting %.2fs before %s", delay, key)
            await self.sleep(delay)
        self.record(key)


# ---- request planning ---------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Chunk:
    """One TRADES request: bars for [first, end] asked as ``duration`` ending at ``end``."""

    end: dt.date
    duration: str
    first: dt.date

    @property
    def end_date_time(self) -> str:
        # Explicit zone: ib_insync would turn a date into the caller's local midnight, which shifts the day.
        return f"{self.end:%Y%m%d} 23:59:59 {EASTERN}"


def plan_chunks(first: dt.date, last: dt.date) -> list[Chunk]:
    """Requests covering [first, last], newest first, each at most one year ('1 Y' or 'N D')."""
    import pandas as pd

    chunks: list[Chunk] = []
    end = last
    while end >= first:
        days = (end - first).days + 1
        if days <= MAX_DAYS_PER_D_DURATION:
            chunks.append(Chunk(end, f"{days} D", first))
            break
        year_first = (pd.Timestamp(end) - pd.DateOffset(years=1)).date() + dt.timedelta(days=1)
        chunks.append(Chunk(end, "1 Y", year_first))
        if year_first <= first:
            break
        end = year_first - dt.timedelta(days=1) + dt.timedelta(days=CHUNK_OVERLAP_DAYS)
    return chunks


def session_runs(sessions: pd.DatetimeIndex) -> list[tuple[dt.date, dt.date]]:
    """Split sessions into runs of consecutive NYSE sessions, oldest first."""
    from ibf_core.calendar import all_sessions

    if len(sessions) == 0:
        return []
    positions = all_sessions().get_indexer(sessions)
    runs, run_start = [], 0
    for i in range(1, len(sessions) + 1):
        if i == len(sessions) or positions[i] != positions[i - 1] + 1:
            runs.append((sessions[run_start].date(), sessions[i - 1].date()))
            run_start = i
    return runs


def merge_ranges(ranges: Sequence[tuple[dt.date, dt.date]]) -> list[tuple[dt.date, dt.date]]:
    """Coalesce date ranges that overlap or have no NYSE session between them."""
    from ibf_core.calendar import trading_days

    merged: list[tuple[dt.date, dt.date]] = []
    for lo, hi in sorted(ranges):
        if merged:
            prev_lo, prev_hi = merged[-1]
            gap_start = prev_hi + dt.timedelta(days=1)
            if lo <= gap_start or len(trading_days(gap_start, lo - dt.timedelta(days=1))) == 0:
                merged[-1] = (prev_lo, max(prev_hi, hi))
                continue
        merged.append((lo, hi))
    return merged


# ---- cache --------------------------------------------------------------------------------------------
class BarCache:
    """Per-symbol Parquet files ``<root>/ibkr/<SYMBOL>.parquet`` holding bars plus the ranges downloaded."""

    def __init__(self, cache_dir: Path | None):
        self.root = Path(cache_dir) / CACHE_SUBDIR if cache_dir is not None else None

    def path(self, symbol: str) -> Path | None:
        return self.root / f"{symbol}.parquet" if self.root is not None else None

    def load(
        self, symbol: str
    ) -> tuple[pd.DataFrame, list[tuple[dt.date, dt.date]], list[tuple[dt.date, dt.date]]]:
        """Cached bars (with ``spread`` when BID_ASK bars were ever fetched), the ranges whose TRADES bars and
        the ranges whose BID_ASK bars were downloaded."""
        from ibf_core.market.bars import BAR_COLUMNS, BAR_DTYPES, empty_bars

        path = self.path(symbol)
        if path is None or not path.is_file():
            return empty_bars(), [], []
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
            metadata = table.schema.metadata or {}
            covered = _ranges(metadata.get(COVERED_KEY, b"[]"))
            quote_covered = _ranges(metadata.get(QUOTES_COVERED_KEY, b"[]"))
            frame = table.to_pandas()
            columns = BAR_COLUMNS + ([SPREAD] if SPREAD in frame.columns else [])
            frame = frame[columns].astype({**BAR_DTYPES, SPREAD: "float64"} if SPREAD in columns else BAR_DTYPES)
        except Exception as exc:  # a damaged cache file is re-downloaded, never fatal
            log.warning("ignoring unreadable IB cache %s: %s", path, exc)
            return empty_bars(), [], []
        return frame, covered, quote_covered

    def save(
        self,
        symbol: str,
        frame: pd.DataFrame,
        covered: Sequence[tuple[dt.date, dt.date]],
        quote_covered: Sequence[tuple[dt.date, dt.date]] = (),
    ) -> None:
        """Replace the symbol's file atomically and durably (``ibf_core.storage.atomic``): readers never see half
        a file, a crash leaves the old one. The symbol's lock is held for the write, so a temp file of the symbol
        found meanwhile is a dead writer's and is removed."""
        path = self.path(symbol)
        if path is None:
            return
        import pyarrow as pa

        from ibf_core.storage import atomic

        table = pa.Table.from_pandas(frame.reset_index(drop=True), preserve_index=False)
        meta = dict(table.schema.metadata or {})
        meta[COVERED_KEY] = json.dumps([[a.isoformat(), b.isoformat()] for a, b in covered]).encode()
        if quote_covered:
            meta[QUOTES_COVERED_KEY] = json.dumps([[a.isoformat(), b.isoformat()] for a, b in quote_covered]).encode()
        table = table.replace_schema_metadata(meta)
        with atomic.lock(path.parent, symbol):
            atomic.remove_stale_temps(path.parent, held=[path.name])
            atomic.write_parquet(path, table)


def _ranges(raw: bytes) -> list[tuple[dt.date, dt.date]]:
    return [(dt.date.fromisoformat(a), dt.date.fromisoformat(b)) for a, b in json.loads(raw)]


# ---- transient failures (retried), internal --------------------------------------------------------------
class _Transient(Exception):
    """A failure worth retrying after a backoff."""

    code: int | None = None


class _Pacing(_Transient):
    code = HISTORICAL_ERROR


class _Dropped(_Transient):
    """The socket to TWS closed during a request."""


class _Restored(_Transient):
    """Connectivity came back (1102) while a request was in flight; it must be asked again."""

    code = CONNECTIVITY_LOST


class _NotRestored(Exception):
    """1100 and no 1102 within the timeout."""


class _NoReply(Exception):
    """No answer within the timeout."""


# ---- one API session -------------------------------------------------------------------------------------
class _Gateway:
    """An API connection with port failover, reconnects and request/error plumbing. Lives on one loop."""

    def __init__(self, source: IbkrSource):
        self.source = source
        self.ib: Any = None
        self.port: int | None = None
        self.link_up = asyncio.Event()  # TWS <-> IB servers (cleared by 1100, set by 1101/1102)
        self.link_down = asyncio.Event()
        self.link_up.set()
        self.connections = 0

    # connection
    async def connect(self) -> None:
        """Try every configured port in order; the first that completes the API handshake wins."""
        src, failures = self.source, []
        for port in src.ports:
            try:
                self.ib = await self._connect_port(port)
            except ClientIdInUseError:
                raise
            except (OSError, asyncio.TimeoutError, ConnectionError) as exc:
                failures.append(f"{port}: {_describe(exc)}")
                continue
            self.port, self.connections = port, self.connections + 1
            self.link_up.set()
            self.link_down.clear()
            log.info("connected to IB at %s:%s (client id %s)", src.host, port, src.client_id)
            return
        tried = ", ".join(str(p) for p in src.ports)
        raise GatewayUnavailableError(
            f"no TWS / IB Gateway accepted an API connection at {src.host} on port(s) {tried} "
            f"({'; '.join(failures)}). Start TWS or IB Gateway with the API enabled, "
            "or set IBF_IB_HOST / IBF_IB_PORTS."
        )

    async def _connect_port(self, port: int) -> Any:
        src, lib = self.source, ib_client()
        ib = lib.IB()
        ib.RaiseRequestErrors = True  # request errors raise RequestError instead of returning []
        in_use: list[str] = []
        closed = asyncio.Event()

        def on_error(req_id: int, code: int, message: str, _contract: Any) -> None:
            if code == CLIENT_ID_IN_USE:
                in_use.append(message)
                closed.set()
            self._on_error(code)

        ib.errorEvent += on_error
        ib.client.apiError += lambda _msg: closed.set()  # socket closed before the API was ready
        connecting = asyncio.ensure_future(
            ib.connectAsync(src.host, port, clientId=src.client_id, timeout=src.connect_timeout, readonly=True)
        )
        closing = asyncio.ensure_future(closed.wait())
        try:
            await asyncio.wait({connecting, closing}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            closing.cancel()
        if in_use or not connecting.done():
            connecting.cancel()
            await asyncio.gather(connecting, return_exceptions=True)
            ib.disconnect()
            if in_use:
                raise ClientIdInUseError(
                    f"client id {src.client_id} is already in use at {src.host}:{port} "
                    f"(IB error {CLIENT_ID_IN_USE}: {in_use[0]}); set IBF_IB_CLIENT_ID to a free id"
                )
            raise ConnectionError("TWS closed the connection during the handshake")
        connecting.result()
        return ib

    def _on_error(self, code: int) -> None:
        if code == CONNECTIVITY_LOST:
            self.link_up.clear()
            self.link_down.set()
        elif code in CONNECTIVITY_RESTORED:
            self.link_down.clear()
            self.link_up.set()

    def is_connected(self) -> bool:
        return self.ib is not None and self.ib.isConnected()

    async def ensure_connected(self) -> None:
        """Reconnect with exponential backoff after the socket dropped.

        TWS may still hold the old session's client id for a moment, so 326 is retried here too.
        """
        if self.is_connected():
            return
        from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

        self.close()
        src = self.source
        log.warning("IB connection lost; reconnecting to %s", src.host)
        retrying = AsyncRetrying(
            retry=retry_if_exception_type((GatewayUnavailableError, ClientIdInUseError)),
            stop=stop_after_attempt(src.retries + 1),
            wait=wait_exponential(multiplier=src.backoff, max=src.max_backoff),
            reraise=True,
        )
        await retrying(self.connect)

    def close(self) -> None:
        if self.ib is not None:
            self.ib.disconnect()
            self.ib = None

    # requests
    async def qualify(self, symbol: str) -> Any:
        lib = ib_client()
        contract = lib.Stock(symbol, "SMART", "USD")
        try:
            found = await asyncio.wait_for(self.ib.qualifyContractsAsync(contract), self.source.timeout)
        except lib.RequestError as exc:
            if exc.code == NO_SECURITY_DEFINITION:
                raise UnknownSymbolError(symbol, f"IB error {exc.code}: {exc.message}") from None
            raise SourceError(f"{symbol}: contract lookup failed: IB error {exc.code}: {exc.message}") from None
        except ConnectionError as exc:
            raise _Dropped(f"connection dropped during the contract lookup ({exc})") from None
        except asyncio.TimeoutError:
            raise _NoReply(f"no contract details within {self.source.timeout:g}s") from None
        if not found:
            raise UnknownSymbolError(symbol, "IB returned no (or more than one) matching stock on SMART/USD")
        return contract

    async def history(self, contract: Any, end_date_time: str, duration: str, what: str) -> list[Any]:
        """One reqHistoricalData; [] for IB's 'no data'. Watches 1100/1102 while waiting."""
        lib, ib, timeout = ib_client(), self.ib, self.source.timeout
        if not self.link_up.is_set():
            await self._await_restored(timeout)
        # The request is issued by hand (as IB.reqHistoricalDataAsync does) to keep its reqId: on a timeout
        # or 1100 it must be cancelled on the wire, and reqHistoricalDataAsync's own timeout returns [] — the
        # same as "no data".
        try:
            req_id = ib.client.getReqId()
            future = ib.wrapper.startReq(req_id, contract)
            ib.client.reqHistoricalData(req_id, contract, end_date_time, duration, BAR_SIZE, what, True, 1, False, [])
        except ConnectionError as exc:
            raise _Dropped(f"connection dropped before the request went out ({exc})") from None
        lost = asyncio.ensure_future(self.link_down.wait())
        try:
            done, _ = await asyncio.wait({future, lost}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            lost.cancel()
        if future in done:
            return self._result(future, lib)
        if lost in done:
            restored = await self._restored_within(timeout)
            if future.done():
                return self._result(future, lib)
            self._cancel(req_id, future)
            if not restored:
                raise _NotRestored(_not_restored_text(timeout))
            raise _Restored("connectivity to IB was lost (1100) and restored (1102) during the request")
        self._cancel(req_id, future)
        raise _NoReply(f"no reply within {timeout:g}s (IBF_IB_TIMEOUT); TWS may be busy or the request too large")

    def _result(self, future: asyncio.Future, lib: ModuleType) -> list[Any]:
        try:
            return list(future.result())
        except lib.RequestError as exc:
            text = exc.message.lower()
            if exc.code == HISTORICAL_ERROR and any(m in text for m in NO_DATA_MARKERS):
                return []
            if exc.code == HISTORICAL_ERROR and any(m in text for m in PACING_MARKERS):
                raise _Pacing(exc.message) from None
            raise
        except ConnectionError as exc:
            raise _Dropped(f"connection dropped during the request ({exc})") from None

    def _cancel(self, req_id: int, future: asyncio.Future) -> None:
        future.cancel()
        if self.is_connected():
            self.ib.client.cancelHistoricalData(req_id)

    async def _restored_within(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self.link_up.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    async def _await_restored(self, timeout: float) -> None:
        if not await self._restored_within(timeout):
            raise _NotRestored(_not_restored_text(timeout))


def _not_restored_text(timeout: float) -> str:
    return f"IB error {CONNECTIVITY_LOST}: connectivity to IB lost and not restored within {timeout:g}s"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__


# ---- running coroutines without a caller loop ----------------------------------------------------------------
def run_on_private_loop(make: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine on a fresh event loop in a helper thread and return its result (or raise its error)."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)  # ib_insync looks the loop up with get_event_loop()
        try:
            outcome["value"] = loop.run_until_complete(make())
        except BaseException as exc:  # handed to the caller's thread
            outcome["error"] = exc
        finally:
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            asyncio.set_event_loop(None)
            loop.close()

    thread = threading.Thread(target=target, name="ibkr-client", daemon=True)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


# ---- the source --------------------------------------------------------------------------------------------
@dataclasses.dataclass
class _Plan:
    symbol: str
    cached: pd.DataFrame
    covered: list[tuple[dt.date, dt.date]]
    spans: list[tuple[dt.date, dt.date]]  # runs of missing sessions to download, oldest first
    quote_covered: list[tuple[dt.date, dt.date]] = dataclasses.field(default_factory=list)
    quote_spans: list[tuple[dt.date, dt.date]] = dataclasses.field(default_factory=list)  # BID_ASK still missing


@dataclasses.dataclass
class _Downloaded:
    trades: pd.DataFrame | None  # None: TRADES were all cached
    adjusted: pd.Series | None  # ADJUSTED_LAST closes by date
    spreads: pd.Series | None = None  # relative spreads by date (NaN: no quotes that day)
    quoted: list[tuple[dt.date, dt.date]] = dataclasses.field(default_factory=list)  # BID_ASK ranges now asked


class IbkrSource:
    """Daily bars from TWS / IB Gateway (``BarSource``): TRADES for OHLCV, ADJUSTED_LAST for adj_close and,
    with ``bid_ask=True``, BID_ASK for the relative quoted ``spread``."""

    name = "ibkr"

    def __init__(
        self,
        host: str = "127.0.0.1",
        ports: Sequence[int] = (7497, 7496, 4002, 4001),
        client_id: int = 1,
        timeout: float = 15.0,
        request_interval: float = 0.5,
        max_requests_per_10min: int = 60,
        retries: int = 4,
        cache_dir: Path | str | None = None,
        *,
        backoff: float = 2.0,
        max_backoff: float = 60.0,
        identical_request_gap: float = IDENTICAL_REQUEST_GAP_S,
        connect_timeout: float | None = None,
        now: Callable[[], dt.datetime] | None = None,
        clock: Callable[[], float] = time.monotonic,
        bid_ask: bool = False,
    ):
        """``backoff``: first retry wait in seconds (doubling up to ``max_backoff``). ``now``: tz-aware clock.

        ``bid_ask``: also request daily BID_ASK bars and return a ``spread`` column ((ask - bid) / mid, NaN
        where IB has no quote history); off, no BID_ASK requests are made and there is no ``spread`` column.
        """
        if not ports:
            raise ValueError("at least one IB port is needed")
        self.host, self.ports, self.client_id = host, [int(p) for p in ports], int(client_id)
        self.timeout, self.retries = float(timeout), int(retries)
        self.connect_timeout = float(connect_timeout if connect_timeout is not None else timeout)
        self.backoff, self.max_backoff = float(backoff), float(max_backoff)
        self.cache = BarCache(Path(cache_dir) if cache_dir is not None else None)
        self.pacer = RequestPacer(
            request_interval, max_requests_per_10min, PACING_WINDOW_S, identical_request_gap, clock
        )
        self._now = now or (lambda: dt.datetime.now(dt.timezone.utc))
        self.bid_ask = bool(bid_ask)
        self._lock = threading.Lock()  # one API session per source at a time: the client id is shared

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> IbkrSource:
        params: dict[str, Any] = dict(
            host=settings.ib_host,
            ports=settings.ib_ports,
            client_id=settings.ib_client_id,
            timeout=settings.ib_timeout,
            request_interval=settings.ib_request_interval,
            max_requests_per_10min=settings.ib_max_requests_per_10min,
            retries=settings.ib_retries,
            cache_dir=settings.cache_dir,
            bid_ask=bool(getattr(settings, "ib_bid_ask", False)),
        )
        params.update(overrides)
        return cls(**params)

    def __repr__(self) -> str:
        extra = ", bid_ask=True" if self.bid_ask else ""
        return f"IbkrSource(host={self.host!r}, ports={self.ports}, client_id={self.client_id}{extra})"

    # public API
    def fetch_daily_bars(self, symbols: Sequence[str], start: dt.date, end: dt.date) -> pd.DataFrame:
        from ibf_core.calendar import to_date
        from ibf_core.settings import normalize_symbol

        start, end = to_date(start), to_date(end)
        if start > end:
            raise ValueError(f"start {start} is after end {end}")
        wanted = list(dict.fromkeys(normalize_symbol(s) for s in symbols))
        with self._lock:
            return run_on_private_loop(lambda: self._fetch(wanted, start, end))

    # orchestration (runs on the private loop)
    async def _fetch(self, symbols: list[str], start: dt.date, end: dt.date) -> pd.DataFrame:
        import pandas as pd

        from ibf_core.market.bars import empty_bars

        plans = [self._plan(symbol, start, end) for symbol in symbols]
        gateway: _Gateway | None = None
        frames = []
        try:
            for done, plan in enumerate(plans, start=1):
                downloaded = None
                if plan.spans or plan.quote_spans:
                    if gateway is None:
                        gateway = _Gateway(self)
                        await gateway.connect()
                    downloaded = await self._download(gateway, plan)
                frames.append(self._finish(plan, downloaded, start, end))
                report_progress(done, len(plans), f"ibkr {plan.symbol}")
        finally:
            if gateway is not None:
                gateway.close()
        frames = [f for f in frames if len(f)]
        if not frames:
            return self._shape(empty_bars())
        out = pd.concat(frames, ignore_index=True)
        return out.sort_values(["symbol", "date"], kind="stable").reset_index(drop=True)

    def _today(self) -> dt.date:
        from zoneinfo import ZoneInfo

        now = self._now()
        now = now if now.tzinfo else now.replace(tzinfo=dt.timezone.utc)
        return now.astimezone(ZoneInfo(EASTERN)).date()

    def _latest_complete(self) -> dt.date:
        import pandas as pd

        from ibf_core.calendar import latest_complete_session

        return latest_complete_session(pd.Timestamp(self._now()))

    def _plan(self, symbol: str, start: dt.date, end: dt.date) -> _Plan:
        """Which sessions of [start, end] (up to today) the cache lacks, as runs of consecutive sessions."""
        import pandas as pd

        from ibf_core.calendar import trading_days

        cached, covered, quote_covered = self.cache.load(symbol)
        last = min(end, self._today())
        wanted = trading_days(start, last) if start <= last else pd.DatetimeIndex([])

        def missing_runs(ranges: list[tuple[dt.date, dt.date]]) -> list[tuple[dt.date, dt.date]]:
            return session_runs(wanted[[not any(lo <= d.date() <= hi for lo, hi in ranges) for d in wanted]])

        quote_spans = missing_runs(quote_covered) if self.bid_ask else []
        return _Plan(symbol, cached, covered, missing_runs(covered), quote_covered, quote_spans)

    async def _download(self, gateway: _Gateway, plan: _Plan) -> _Downloaded:
        """TRADES bars for the plan's spans plus the ADJUSTED_LAST closes that cover them, and the BID_ASK
        spreads for its quote spans."""
        symbol = plan.symbol
        spans = sorted(plan.spans + plan.quote_spans)
        first, last = spans[0][0], max(hi for _, hi in spans)
        contract = await self._with_retries(gateway, lambda: gateway.qualify(symbol), symbol, first, last)
        downloaded = _Downloaded(None, None)
        if plan.spans:
            downloaded.trades, downloaded.adjusted = await self._download_adjusted_trades(gateway, contract, plan)
        if plan.quote_spans:
            downloaded.spreads, downloaded.quoted = await self._download_spreads(
                gateway, contract, plan, downloaded.trades
            )
        return downloaded

    async def _download_adjusted_trades(
        self, gateway: _Gateway, contract: Any, plan: _Plan
    ) -> tuple[pd.DataFrame, pd.Series | None]:
        symbol, last = plan.symbol, plan.spans[-1][1]
        trades = await self._download_trades(gateway, contract, plan)
        if trades.empty:
            return trades, None
        anchor = trades["date"].min().date()
        older_cached = plan.cached.loc[plan.cached["date"] < trades["date"].min(), "date"]
        if len(older_cached):
            anchor = older_cached.max().date()  # one cached day in the answer lets us re-base the cache
        # IB refuses an endDateTime with ADJUSTED_LAST (error 321), so adj_close comes from ONE request per
        # symbol ending now ('') whose duration, in years, reaches back to the oldest day we need.
        years = (self._today() - anchor).days // 365 + 1
        bars = await self._request(gateway, contract, "", f"{years} Y", "ADJUSTED_LAST", symbol, anchor, last)
        adjusted = _bars_frame(bars).set_index("date")["close"] if bars else None
        if adjusted is None:
            log.warning("IB sent no ADJUSTED_LAST bars for %s; adj_close falls back to close", symbol)
        return trades, adjusted

    async def _download_spreads(
        self, gateway: _Gateway, contract: Any, plan: _Plan, trades: pd.DataFrame | None
    ) -> tuple[pd.Series | None, list[tuple[dt.date, dt.date]]]:
        """BID_ASK bars for the quote spans, only between the first and last traded day in each span, in the
        same <= 1-year chunks as TRADES. Returns the spreads by date and the spans now asked for.

        IB's "no data" (an instrument or period without quote history) gives no spread: NaN, not 0. Any other
        failure that retrying does not cure leaves the spreads unknown and the spans not covered, so the next
        run asks again; the TRADES bars are kept either way.
        """
        import pandas as pd

        symbol = plan.symbol
        days = plan.cached["date"]
        if trades is not None and len(trades):
            days = pd.concat([days, trades["date"]], ignore_index=True)
        spans = []
        for lo, hi in plan.quote_spans:
            inside = days[(days >= pd.Timestamp(lo)) & (days <= pd.Timestamp(hi))]
            if len(inside):
                spans.append((inside.min().date(), inside.max().date()))
        pieces: list[pd.Series] = []
        try:
            for span_first, span_last in reversed(spans):
                seen_data = False
                for chunk in plan_chunks(span_first, span_last):
                    bars = await self._request(
                        gateway, contract, chunk.end_date_time, chunk.duration, BID_ASK,
                        symbol, chunk.first, chunk.end,
                    )  # fmt: skip
                    if bars:
                        seen_data = True
                        spread = _spread_series(symbol, bars)
                        inside = (spread.index >= pd.Timestamp(span_first)) & (spread.index <= pd.Timestamp(span_last))
                        pieces.append(spread[inside])
                    elif seen_data and chunk.duration.endswith("Y"):
                        log.info("%s: no BID_ASK bars up to %s; skipping older quote history", symbol, chunk.end)
                        break
        except HistoricalDataError as exc:
            if isinstance(exc, (PacingViolationError, ConnectivityLostError)):
                raise
            log.warning("%s: BID_ASK bars unavailable (%s); spreads stay unknown, asked again next run", symbol, exc)
            return None, []
        if not pieces:
            first, last = plan.quote_spans[0][0], plan.quote_spans[-1][1]
            log.info("%s: IB has no BID_ASK quote history for %s..%s", symbol, first, last)
            return pd.Series(dtype="float64"), list(plan.quote_spans)
        spreads = pd.concat(pieces)
        spreads = spreads[~spreads.index.duplicated(keep="first")].sort_index()  # the newest request's copy wins
        return spreads, list(plan.quote_spans)

    async def _download_trades(self, gateway: _Gateway, contract: Any, plan: _Plan) -> pd.DataFrame:
        import pandas as pd

        frames, seen_data = [], False
        for span_first, span_last in reversed(plan.spans):
            for chunk in plan_chunks(span_first, span_last):
                bars = await self._request(
                    gateway, contract, chunk.end_date_time, chunk.duration, "TRADES",
                    plan.symbol, chunk.first, chunk.end,
                )  # fmt: skip
                if bars:
                    seen_data = True
                    frame = _bars_frame(bars)
                    inside = (frame["date"] >= pd.Timestamp(span_first)) & (frame["date"] <= pd.Timestamp(span_last))
                    frames.append(frame[inside])
                elif seen_data and chunk.duration.endswith("Y"):
                    # A whole empty year before data we already have: the stock was not listed yet.
                    log.info("%s: no bars up to %s; skipping older history", plan.symbol, chunk.end)
                    return _concat_bars(frames)
        return _concat_bars(frames)

    async def _request(
        self, gateway: _Gateway, contract: Any, end_date_time: str, duration: str, what: str,
        symbol: str, first: dt.date, last: dt.date,
    ) -> list[Any]:  # fmt: skip
        async def attempt() -> list[Any]:
            await self.pacer.acquire((symbol, end_date_time, duration, what))
            log.info("IB history %s %s %s end=%r", symbol, what, duration, end_date_time)
            return await gateway.history(contract, end_date_time, duration, what)

        return await self._with_retries(gateway, attempt, symbol, first, last)

    async def _with_retries(
        self, gateway: _Gateway, op: Callable[[], Awaitable[T]], symbol: str, first: dt.date, last: dt.date
    ) -> T:
        """Run ``op`` with reconnect-and-retry on drops and backoff on pacing; map failures to typed errors."""
        from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

        lib = ib_client()

        async def connected_op() -> T:
            await gateway.ensure_connected()
            return await op()

        retrying = AsyncRetrying(
            retry=retry_if_exception_type(_Transient),
            stop=stop_after_attempt(self.retries + 1),
            wait=wait_exponential(multiplier=self.backoff, max=self.max_backoff),
            before_sleep=lambda state: log.warning(
                "%s %s..%s: %s; retry %d of %d", symbol, first, last, state.outcome.exception(),
                state.attempt_number, self.retries,
            ),
            reraise=True,
        )  # fmt: skip
        try:
            return await retrying(connected_op)
        except _Pacing as exc:
            raise PacingViolationError(
                symbol, first, last, f"pacing violation persisted after {self.retries} retries: {exc}", exc.code
            ) from None
        except (_Dropped, _Restored) as exc:
            message = f"{exc}; gave up after {self.retries} retries"
            raise ConnectivityLostError(symbol, first, last, message, exc.code) from None
        except _NotRestored as exc:
            raise ConnectivityLostError(symbol, first, last, str(exc), CONNECTIVITY_LOST) from None
        except GatewayUnavailableError as exc:
            message = f"connection dropped and reconnecting failed: {exc}"
            raise ConnectivityLostError(symbol, first, last, message) from None
        except _NoReply as exc:
            raise HistoricalDataError(symbol, first, last, str(exc)) from None
        except lib.RequestError as exc:
            if exc.code == NO_SECURITY_DEFINITION:
                raise UnknownSymbolError(symbol, f"IB error {exc.code}: {exc.message}") from None
            raise HistoricalDataError(symbol, first, last, exc.message, exc.code) from None

    def _finish(self, plan: _Plan, downloaded: _Downloaded | None, start: dt.date, end: dt.date) -> pd.DataFrame:
        """Merge new bars into the cache, validate, split-adjust, persist complete sessions, cut to [start, end]."""
        import numpy as np
        import pandas as pd

        from ibf_core.market.bars import empty_bars, split_adjust
        from ibf_core.market.checks import validate_bars

        symbol, cached = plan.symbol, plan.cached
        if downloaded is not None:
            if downloaded.trades is not None:
                raw = _merge(symbol, cached, downloaded.trades, downloaded.adjusted)
            else:
                raw = cached.copy()
            if self.bid_ask and SPREAD not in raw.columns:
                raw[SPREAD] = np.nan
            if downloaded.spreads is not None and len(downloaded.spreads):
                known = raw["date"].isin(downloaded.spreads.index)
                raw.loc[known, SPREAD] = raw.loc[known, "date"].map(downloaded.spreads).to_numpy(dtype="float64")
            bars = split_adjust(validate_bars(raw, origin=f"ibkr {symbol}")) if len(raw) else empty_bars()
            complete = self._latest_complete()

            def now_covered(old: list[tuple[dt.date, dt.date]], new: list[tuple[dt.date, dt.date]]) -> list:
                return merge_ranges(old + [(lo, min(hi, complete)) for lo, hi in new if lo <= complete])

            covered = now_covered(plan.covered, plan.spans)
            quote_covered = now_covered(plan.quote_covered, downloaded.quoted)
            if self.cache.root is not None:
                self.cache.save(symbol, bars[bars["date"] <= pd.Timestamp(complete)], covered, quote_covered)
        else:
            bars = cached
        if len(bars):
            inside = (bars["date"] >= pd.Timestamp(start)) & (bars["date"] <= pd.Timestamp(end))
            bars = bars[inside].reset_index(drop=True)
        return self._shape(bars)

    def _shape(self, bars: pd.DataFrame) -> pd.DataFrame:
        """With bid_ask: always a float ``spread`` column (NaN = unknown). Without: never one."""
        import numpy as np

        if not self.bid_ask:
            return bars.drop(columns=[SPREAD]) if SPREAD in bars.columns else bars
        if SPREAD not in bars.columns:
            bars = bars.assign(**{SPREAD: np.full(len(bars), np.nan)})
        return bars.astype({SPREAD: "float64"})


# ---- frame helpers ---------------------------------------------------------------------------------------
def _bars_frame(bars: Sequence[Any]) -> pd.DataFrame:
    import pandas as pd

    return pd.DataFrame(
        {
            "date": pd.to_datetime([b.date for b in bars]).normalize(),
            "open": [b.open for b in bars],
            "high": [b.high for b in bars],
            "low": [b.low for b in bars],
            "close": [b.close for b in bars],
            "volume": [b.volume for b in bars],
        }
    )


def _spread_series(symbol: str, bars: Sequence[Any]) -> pd.Series:
    """Relative quoted spread per day from IB BID_ASK bars (open = average bid, close = average ask).

    A day without a usable quote (non-positive or non-finite prices, or an average ask below the average bid)
    gets NaN, never 0.
    """
    import numpy as np

    frame = _bars_frame(bars)
    bid, ask = frame["open"].to_numpy(dtype="float64"), frame["close"].to_numpy(dtype="float64")
    with np.errstate(invalid="ignore", divide="ignore"):
        spread = (ask - bid) / ((ask + bid) / 2)
    usable = np.isfinite(spread) & (bid > 0) & (ask > 0) & (spread >= 0)
    if not usable.all():
        log.warning("%s: %d BID_ASK bar(s) without a usable quote; their spread is NaN", symbol, int((~usable).sum()))
    import pandas as pd

    return pd.Series(np.where(usable, spread, np.nan), index=pd.DatetimeIndex(frame["date"]), name=SPREAD)


def _concat_bars(frames: list[pd.DataFrame]) -> pd.DataFrame:
    import pandas as pd

    if not frames:
        return pd.DataFrame({c: pd.Series(dtype="float64") for c in ["open", "high", "low", "close", "volume"]}).assign(
            date=pd.Series(dtype="datetime64[ns]")
        )
    # Overlapping chunks repeat days; the newest request's copy wins.
    out = pd.concat(frames, ignore_index=True).drop_duplicates("date", keep="first")
    return out.sort_values("date").reset_index(drop=True)


def _merge(symbol: str, cached: pd.DataFrame, trades: pd.DataFrame, adjusted: pd.Series | None) -> pd.DataFrame:
    """Cached bars + new TRADES bars with adj_close from ADJUSTED_LAST.

    New bars take adj_close from ``adjusted`` (gaps interpolate the adj/close ratio). Cached days inside
    the ADJUSTED_LAST answer take its fresh value; older cached days are re-based by the ratio at the oldest
    overlapping day, so a dividend paid since the last download re-adjusts the whole history consistently.
    """
    import pandas as pd

    new = trades.copy()
    new["symbol"] = symbol
    old = cached.copy()
    if SPREAD in old.columns:  # a re-downloaded day keeps the spread already known for it
        new[SPREAD] = new["date"].map(old.set_index("date")[SPREAD]).astype("float64")
    if adjusted is not None:
        ratio = new["date"].map(adjusted) / new["close"]
        new["adj_close"] = new["close"] * ratio.ffill().bfill().fillna(1.0)
        overlap = old["date"].isin(adjusted.index)
        if overlap.any():
            oldest = old.loc[overlap, "date"].min()
            factor = adjusted[oldest] / old.loc[old["date"] == oldest, "adj_close"].iloc[0]
            old.loc[old["date"] < oldest, "adj_close"] *= factor
            old.loc[overlap, "adj_close"] = old.loc[overlap, "date"].map(adjusted)
    else:
        new["adj_close"] = new["close"]
    old = old[~old["date"].isin(new["date"])]
    columns = ["symbol", "date", "open", "high", "low", "close", "adj_close", "volume"]
    columns += [SPREAD] if SPREAD in old.columns else []
    return pd.concat([old, new], ignore_index=True)[columns]
