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
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd

from ibf_core.calendar import latest_complete_session, to_date, trading_days
from ibf_core.market.bars import empty_bars, split_adjust
from ibf_core.market.checks import validate_bars
from ibf_core.progress import report_progress
from ibf_core.settings import normalize_symbol
from ibf_core.sources.base import SymbolLookup
from ibf_core.sources.errors import (
    ConnectivityLostError,
    GatewayUnavailableError,
    HistoricalDataError,
    PacingViolationError,
    UnknownSymbolError,
)
from ibf_core.sources.ibkr.cache import BarCache
from ibf_core.sources.ibkr.gateway import (
    CONNECTIVITY_LOST,
    NO_SECURITY_DEFINITION,
    DroppedError,
    Gateway,
    NoReplyError,
    NotRestoredError,
    PacingError,
    RestoredError,
    T,
    TransientError,
    ib_client,
    run_on_private_loop,
)
from ibf_core.sources.ibkr.pacing import IDENTICAL_REQUEST_GAP_S, PACING_WINDOW_S, RequestPacer
from ibf_core.sources.ibkr.parsing import BID_ASK, EASTERN, SPREAD, bars_frame, concat_bars, merge_bars, spread_series
from ibf_core.sources.ibkr.planning import merge_ranges, plan_chunks, session_runs

if TYPE_CHECKING:  # pragma: no cover
    from ibf_core.settings import Settings

# Heavy imports (tenacity) stay inside the functions that need them: importing this module loads none of them.

log = logging.getLogger("ibf_core.sources.ibkr")  # the name it logged under before the split


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
        start, end = to_date(start), to_date(end)
        if start > end:
            raise ValueError(f"start {start} is after end {end}")
        wanted = list(dict.fromkeys(normalize_symbol(s) for s in symbols))
        with self._lock:
            return run_on_private_loop(lambda: self._fetch(wanted, start, end))

    def lookup_symbols(self, symbols: Sequence[str]) -> SymbolLookup:
        """The symbols IB's contract details do not resolve to one stock on SMART/USD (error 200). A symbol with
        a download cache was resolved before and is not asked again, so a cached universe needs no connection."""
        wanted = [s for s in dict.fromkeys(normalize_symbol(s) for s in symbols) if not self._cached(s)]
        if not wanted:
            return SymbolLookup((), "every symbol resolved before (download cache)")
        # ib_insync logs each error 200 and each refused port itself; here they are the answer, which the caller's
        # one error line states (the ports tried are in GatewayUnavailableError's message)
        client_log = logging.getLogger("ib_insync")
        level = client_log.level
        client_log.setLevel(logging.CRITICAL)
        try:
            with self._lock:
                return run_on_private_loop(lambda: self._lookup(wanted))
        finally:
            client_log.setLevel(level)

    def _cached(self, symbol: str) -> bool:
        path = self.cache.path(symbol)
        return path is not None and path.exists()

    # orchestration (runs on the private loop)
    async def _lookup(self, symbols: list[str]) -> SymbolLookup:
        gateway = Gateway(self)
        await gateway.connect()

        async def is_unknown(symbol: str) -> bool:
            try:
                await gateway.qualify(symbol)
            except UnknownSymbolError:
                return True
            except (DroppedError, NoReplyError) as exc:
                raise GatewayUnavailableError(f"{symbol}: contract lookup at {self.host}:{gateway.port} failed: {exc}") from None
            return False

        try:  # all lookups in flight together: ib_insync paces the messages to IB's 50 per second
            answers = await asyncio.gather(*(is_unknown(s) for s in symbols))
        finally:
            gateway.close()
        unknown = [s for s, missing in zip(symbols, answers) if missing]
        return SymbolLookup(tuple(unknown), f"IB contract details at {self.host}:{gateway.port} have no stock "
                            "on SMART/USD (error 200: no security definition)")

    async def _fetch(self, symbols: list[str], start: dt.date, end: dt.date) -> pd.DataFrame:
        plans = [self._plan(symbol, start, end) for symbol in symbols]
        gateway: Gateway | None = None
        frames = []
        try:
            for done, plan in enumerate(plans, start=1):
                downloaded = None
                if plan.spans or plan.quote_spans:
                    if gateway is None:
                        gateway = Gateway(self)
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
        now = self._now()
        now = now if now.tzinfo else now.replace(tzinfo=dt.timezone.utc)
        return now.astimezone(ZoneInfo(EASTERN)).date()

    def _latest_complete(self) -> dt.date:
        return latest_complete_session(pd.Timestamp(self._now()))

    def _plan(self, symbol: str, start: dt.date, end: dt.date) -> _Plan:
        """Which sessions of [start, end] (up to today) the cache lacks, as runs of consecutive sessions."""
        cached, covered, quote_covered = self.cache.load(symbol)
        last = min(end, self._today())
        wanted = trading_days(start, last) if start <= last else pd.DatetimeIndex([])

        def missing_runs(ranges: list[tuple[dt.date, dt.date]]) -> list[tuple[dt.date, dt.date]]:
            return session_runs(wanted[[not any(lo <= d.date() <= hi for lo, hi in ranges) for d in wanted]])

        quote_spans = missing_runs(quote_covered) if self.bid_ask else []
        return _Plan(symbol, cached, covered, missing_runs(covered), quote_covered, quote_spans)

    async def _download(self, gateway: Gateway, plan: _Plan) -> _Downloaded:
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
        self, gateway: Gateway, contract: Any, plan: _Plan
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
        adjusted = bars_frame(bars).set_index("date")["close"] if bars else None
        if adjusted is None:
            log.warning("IB sent no ADJUSTED_LAST bars for %s; adj_close falls back to close", symbol)
        return trades, adjusted

    async def _download_spreads(
        self, gateway: Gateway, contract: Any, plan: _Plan, trades: pd.DataFrame | None
    ) -> tuple[pd.Series | None, list[tuple[dt.date, dt.date]]]:
        """BID_ASK bars for the quote spans, only between the first and last traded day in each span, in the
        same <= 1-year chunks as TRADES. Returns the spreads by date and the spans now asked for.

        IB's "no data" (an instrument or period without quote history) gives no spread: NaN, not 0. Any other
        failure that retrying does not cure leaves the spreads unknown and the spans not covered, so the next
        run asks again; the TRADES bars are kept either way.
        """
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
                        spread = spread_series(symbol, bars)
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

    async def _download_trades(self, gateway: Gateway, contract: Any, plan: _Plan) -> pd.DataFrame:
        frames, seen_data = [], False
        for span_first, span_last in reversed(plan.spans):
            for chunk in plan_chunks(span_first, span_last):
                bars = await self._request(
                    gateway, contract, chunk.end_date_time, chunk.duration, "TRADES",
                    plan.symbol, chunk.first, chunk.end,
                )  # fmt: skip
                if bars:
                    seen_data = True
                    frame = bars_frame(bars)
                    inside = (frame["date"] >= pd.Timestamp(span_first)) & (frame["date"] <= pd.Timestamp(span_last))
                    frames.append(frame[inside])
                elif seen_data and chunk.duration.endswith("Y"):
                    # A whole empty year before data we already have: the stock was not listed yet.
                    log.info("%s: no bars up to %s; skipping older history", plan.symbol, chunk.end)
                    return concat_bars(frames)
        return concat_bars(frames)

    async def _request(
        self, gateway: Gateway, contract: Any, end_date_time: str, duration: str, what: str,
        symbol: str, first: dt.date, last: dt.date,
    ) -> list[Any]:  # fmt: skip
        async def attempt() -> list[Any]:
            await self.pacer.acquire((symbol, end_date_time, duration, what))
            log.info("IB history %s %s %s end=%r", symbol, what, duration, end_date_time)
            return await gateway.history(contract, end_date_time, duration, what)

        return await self._with_retries(gateway, attempt, symbol, first, last)

    async def _with_retries(
        self, gateway: Gateway, op: Callable[[], Awaitable[T]], symbol: str, first: dt.date, last: dt.date
    ) -> T:
        """Run ``op`` with reconnect-and-retry on drops and backoff on pacing; map failures to typed errors."""
        from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

        lib = ib_client()

        async def connected_op() -> T:
            await gateway.ensure_connected()
            return await op()

        retrying = AsyncRetrying(
            retry=retry_if_exception_type(TransientError),
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
        except PacingError as exc:
            raise PacingViolationError(
                symbol, first, last, f"pacing violation persisted after {self.retries} retries: {exc}", exc.code
            ) from None
        except (DroppedError, RestoredError) as exc:
            message = f"{exc}; gave up after {self.retries} retries"
            raise ConnectivityLostError(symbol, first, last, message, exc.code) from None
        except NotRestoredError as exc:
            raise ConnectivityLostError(symbol, first, last, str(exc), CONNECTIVITY_LOST) from None
        except GatewayUnavailableError as exc:
            message = f"connection dropped and reconnecting failed: {exc}"
            raise ConnectivityLostError(symbol, first, last, message) from None
        except NoReplyError as exc:
            raise HistoricalDataError(symbol, first, last, str(exc)) from None
        except lib.RequestError as exc:
            if exc.code == NO_SECURITY_DEFINITION:
                raise UnknownSymbolError(symbol, f"IB error {exc.code}: {exc.message}") from None
            raise HistoricalDataError(symbol, first, last, exc.message, exc.code) from None

    def _finish(self, plan: _Plan, downloaded: _Downloaded | None, start: dt.date, end: dt.date) -> pd.DataFrame:
        """Merge new bars into the cache, validate, split-adjust, persist complete sessions, cut to [start, end]."""
        symbol, cached = plan.symbol, plan.cached
        if downloaded is not None:
            if downloaded.trades is not None:
                raw = merge_bars(symbol, cached, downloaded.trades, downloaded.adjusted)
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
        if not self.bid_ask:
            return bars.drop(columns=[SPREAD]) if SPREAD in bars.columns else bars
        if SPREAD not in bars.columns:
            bars = bars.assign(**{SPREAD: np.full(len(bars), np.nan)})
        return bars.astype({SPREAD: "float64"})
