"""A loopback webhook (alerts): records each POST, fails the first ones on request."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOKEN_PATH = "/hooks/T0KEN-abc123"


class Hook:
    """A loopback webhook: answers ``fail_status`` to the first ``fail_first`` requests, then 200."""

    def __init__(self, fail_first: int = 0, fail_status: int = 500):
        self.fail_first, self.fail_status = fail_first, fail_status
        self.bodies: list[dict] = []
        self.paths: list[str] = []
        self.lock = threading.Lock()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                length = int(self.headers.get("Content-Length", 0))
                raw = self.rfile.read(length)
                with hook.lock:
                    hook.paths.append(self.path)
                    hook.bodies.append(json.loads(raw))
                    n = len(hook.bodies)
                status = hook.fail_status if n <= hook.fail_first else 200
                payload = b"ok" if status == 200 else b"error"
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):  # keep the test output quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{TOKEN_PATH}"

    @property
    def requests(self) -> int:
        return len(self.bodies)

    def __enter__(self) -> Hook:
        self.thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)
