"""HTTP endpoints of a worker: ``/metrics`` (Prometheus text format), ``/healthz`` (alive)
and ``/readyz`` (the process's own readiness: a worker's assignment and backoff state, a control
replica's lease membership).

Served by the standard library's threading HTTP server on ``metrics.host:metrics.port``;
bodies never include configuration or secrets.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from pipeline.core import metrics

ReadyCheck = Callable[[], tuple[bool, dict[str, object]]]


class HealthServer:
    """Serves the endpoints from a daemon thread. ``port`` 0 picks a free port (see ``.port``)."""

    def __init__(self, host: str, port: int, ready: ReadyCheck) -> None:
        ready_check = ready

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, generate_latest(metrics.REGISTRY), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    self._send(200, b'{"status":"alive"}', "application/json")
                elif path == "/readyz":
                    ok, detail = ready_check()
                    body = json.dumps({"status": "ready" if ok else "not ready", **detail}).encode()
                    self._send(200 if ok else 503, body, "application/json")
                else:
                    self._send(404, b"not found", "text/plain")

            def _send(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                return

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="health-http", daemon=True)

    @property
    def port(self) -> int:
        """The bound port."""
        return int(self._server.server_address[1])

    def start(self) -> None:
        """Start serving in the background."""
        metrics.UP.set(1)
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._server.shutdown()
        self._server.server_close()
