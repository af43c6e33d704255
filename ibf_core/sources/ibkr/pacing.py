"""IB's historical-data pacing rules as a sliding-window request pacer (shared with the live collector)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Hashable

log = logging.getLogger("ibf_core.sources.ibkr")  # the name it logged under before the split

PACING_WINDOW_S = 600.0  # IB: at most N historical requests in any 10 minutes
IDENTICAL_REQUEST_GAP_S = 15.0  # IB: no identical historical request within 15 seconds


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
