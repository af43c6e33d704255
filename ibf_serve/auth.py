"""API keys (SHA-256 digests compared in constant time) and a per-key sliding-window rate limit."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections import deque
from pathlib import Path

from ibf_serve.errors import ApiError


def new_key() -> tuple[str, str]:
    """A fresh random API key and its digest (store the digest; the key is shown once)."""
    key = "ibf_" + secrets.token_urlsafe(32)
    return key, digest(key)


def digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def load_digests(inline: list[str], file: Path | None) -> list[str]:
    """Digests from the setting plus the file (one per line, ``#`` comments); a bad line is an error naming it."""
    found = list(inline)
    if file is not None:
        for n, line in enumerate(Path(file).read_text().splitlines(), 1):
            line = line.split("#", 1)[0].strip().lower()
            if not line:
                continue
            if len(line) != 64 or any(c not in "0123456789abcdef" for c in line):
                raise ValueError(f"IBF_API_KEYS_FILE line {n}: not a hex SHA-256 digest")
            found.append(line)
    return list(dict.fromkeys(found))


class KeyRing:
    """Known key digests; ``check`` returns the matching digest (the rate-limit identity, never the key)."""

    def __init__(self, digests: list[str]):
        self._digests = [bytes.fromhex(d) for d in digests]

    def check(self, authorization: str | None) -> str:
        if not authorization or not authorization.startswith("Bearer ") or not authorization[7:].strip():
            raise ApiError(401, "missing API key: send Authorization: Bearer <key>", headers={"WWW-Authenticate": "Bearer"})
        given = hashlib.sha256(authorization[7:].strip().encode("utf-8")).digest()
        match = None
        for known in self._digests:  # every digest is compared, so the time says nothing about which matched
            if hmac.compare_digest(given, known):
                match = known
        if match is None:
            raise ApiError(403, "API key not accepted")
        return match.hex()


class RateLimiter:
    """At most ``per_minute`` requests per identity in any 60 s window (0 = unlimited)."""

    def __init__(self, per_minute: int, clock=time.monotonic):
        self.per_minute, self._clock = per_minute, clock
        self._hits: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def hit(self, identity: str) -> None:
        if not self.per_minute:
            return
        now = self._clock()
        with self._lock:
            hits = self._hits.setdefault(identity, deque())
            while hits and hits[0] <= now - 60.0:
                hits.popleft()
            if len(hits) >= self.per_minute:
                retry = max(1, int(hits[0] + 60.0 - now + 0.999))
                raise ApiError(429, f"rate limit of {self.per_minute} requests per minute exceeded", headers={"Retry-After": str(retry)})
            hits.append(now)
