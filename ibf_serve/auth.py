"""API keys (SHA-256 digests compared in constant time) and a per-key sliding-window rate limit."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import mmap
import os
import secrets
import threading
import time
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

    @property
    def digests(self) -> list[str]:
        return [d.hex() for d in self._digests]


class RateLimiter:
    """At most ``per_minute`` requests per identity in any 60 s window (0 = unlimited).

    Each identity keeps the times of its last ``per_minute`` requests in a ring; a request is allowed when the
    oldest of them is more than 60 s old. The rings live in a memory map: anonymous for one process, a file
    (``path``) shared by the server's worker processes, so several workers enforce one limit, not one each.
    ``time.monotonic`` is the system-wide CLOCK_MONOTONIC on Linux, comparable across the workers.
    """

    def __init__(self, per_minute: int, identities: list[str], path: Path | None = None, clock=time.monotonic):
        self.per_minute, self._clock = per_minute, clock
        self._slot = {identity: n for n, identity in enumerate(sorted(set(identities)))}
        self._lock = threading.Lock()
        self._file = None
        if not per_minute or not self._slot:
            self._map = None
            return
        size = len(self._slot) * (per_minute + 1) * 8
        if path is None:
            self._map = mmap.mmap(-1, size)
        else:
            self._file = open(path, "a+b")  # noqa: SIM115 - held for the process' life, like the map
            with _flock(self._file):
                if os.fstat(self._file.fileno()).st_size != size:  # the first worker sizes it (zeros)
                    self._file.truncate(size)
            self._map = mmap.mmap(self._file.fileno(), size)
        self._heads = memoryview(self._map).cast("q")  # slot k: [head, t_0 .. t_{n-1}] as int64 / float64
        self._times = memoryview(self._map).cast("d")

    def hit(self, identity: str) -> None:
        if self._map is None:
            return
        n = self.per_minute
        base = self._slot[identity] * (n + 1)
        with self._lock, _flock(self._file):
            now = self._clock()
            head = self._heads[base]
            oldest = self._times[base + 1 + head]
            if oldest and oldest > now - 60.0:  # 0.0: a ring place never used
                retry = max(1, int(oldest + 60.0 - now + 0.999))
                raise ApiError(429, f"rate limit of {n} requests per minute exceeded", headers={"Retry-After": str(retry)})
            self._times[base + 1 + head] = now
            self._heads[base] = (head + 1) % n


@contextlib.contextmanager
def _flock(file):
    """An exclusive lock on ``file`` for the workers sharing it (nothing to lock for an anonymous map)."""
    if file is None:
        yield
        return
    fcntl.flock(file.fileno(), fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(file.fileno(), fcntl.LOCK_UN)
