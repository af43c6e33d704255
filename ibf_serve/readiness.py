"""Readiness: each part a service needs, checked and named; the first failing part makes the answer 503."""

from __future__ import annotations

from typing import Any

from ibf_core.forecasts import newest_bar_age_sessions
from ibf_core.storage import space


def readiness(services) -> tuple[dict[str, Any], bool]:
    """``({"status", "checks": {part: {"ok", ...}}}, ok)``; messages name the part, never a path."""
    checks: dict[str, dict[str, Any]] = {}
    store = services.store
    try:
        if not store.exists():
            raise FileNotFoundError("the warehouse does not exist yet")
        store.query("SELECT count(*) FROM predictions")
        checks["warehouse"] = {"ok": True}
    except Exception as exc:  # noqa: BLE001 - any failure means not ready
        checks["warehouse"] = {"ok": False, "message": f"warehouse not readable ({type(exc).__name__})"}
    try:
        versions = services.versions()
        checks["model"] = {"ok": bool(versions), "versions": len(versions)}
        if versions:
            checks["model"]["newest"] = versions[-1].version
        else:
            checks["model"]["message"] = "no model registered"
    except Exception as exc:  # noqa: BLE001
        checks["model"] = {"ok": False, "message": f"model registry not readable ({type(exc).__name__})"}
    try:
        services.instance().get_run_records(limit=1)
        checks["dagster"] = {"ok": True}
    except Exception as exc:  # noqa: BLE001
        checks["dagster"] = {"ok": False, "message": f"Dagster instance not reachable ({type(exc).__name__})"}
    if checks["warehouse"]["ok"]:
        try:
            age = newest_bar_age_sessions(store)
            limit = services.settings.freshness_max_sessions
            # Stale data is reported, not fatal: a replay of history (the sample ends 2013) still serves.
            checks["bars"] = {"ok": age is not None, "newest_bar_age_sessions": age, "stale": age is not None and age > limit}
            if age is None:
                checks["bars"]["message"] = "no market bars stored"
        except Exception as exc:  # noqa: BLE001
            checks["bars"] = {"ok": False, "message": f"market_bars not readable ({type(exc).__name__})"}
    try:
        found = space.free_space(services.settings.home_dir, services.settings.min_free_mib)
        checks["disk"] = {"ok": found.ok, "free_bytes": found.free_bytes, "floor_bytes": found.floor_bytes}
        if not found.ok:  # the next backfill or stream flush would fail: not ready before it does
            checks["disk"]["message"] = found.summary()
    except OSError as exc:
        checks["disk"] = {"ok": False, "message": f"free space under IBF_HOME not readable ({type(exc).__name__})"}
    ok = all(c["ok"] for c in checks.values())
    failing = [name for name, c in checks.items() if not c["ok"]]
    return {"status": "ready" if ok else "not ready", "failing": failing, "checks": checks}, ok
