"""Request metrics per route template and status, and the last line of defence: an escaped exception is
answered with the error shape (and logged), never with a traceback or a dropped connection."""

from __future__ import annotations

import time

from ibf_serve import errors


class Measure:
    def __init__(self, app, instruments, scrub):
        self.app, self.instruments, self.scrub = app, instruments, scrub

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        state = {"status": 500, "started": False}

        async def sending(message) -> None:
            if message["type"] == "http.response.start":
                state["status"], state["started"] = message["status"], True
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except Exception as exc:  # noqa: BLE001 - answered here: re-raised, the server would drop the connection
            errors.log.error("unhandled error on %s %s: %s", scope.get("method"), scope.get("path"), self.scrub(repr(exc))[:500])
            if not state["started"]:
                await errors.error_response(500, "internal_error", "internal error")(scope, receive, sending)
        finally:
            route = scope.get("route")  # set by the router on this same scope: a template, never the raw path
            template = getattr(route, "path", None) or "<unmatched>"
            self.instruments.requests.labels(template, scope.get("method", ""), str(state["status"])).inc()
            self.instruments.latency.labels(template, scope.get("method", "")).observe(time.perf_counter() - start)
