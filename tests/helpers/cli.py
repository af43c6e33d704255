"""The ``ibf`` console script in its own process, and what a command left in the lake."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

IBF_BIN = str(Path(sys.executable).with_name("ibf"))


def run_ibf(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """The ibf console script in its own process, with this test's environment (plus ``env``)."""
    return subprocess.run([IBF_BIN, *args], capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})


def ibf(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """``ibf *args`` in this test's environment; with ``check``, a non-zero exit fails the test with its stderr."""
    proc = subprocess.run([IBF_BIN, *args], capture_output=True, text=True, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def lake_state(home: Path) -> dict[str, str]:
    """Every file of the lake (all tables, news included) by content: proves a failed command wrote nothing."""
    lake = home / "lake"
    if not lake.exists():
        return {}
    return {str(p.relative_to(lake)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(lake.rglob("*")) if p.is_file() and ".locks" not in p.parts}
