"""A small real HTTP server on 127.0.0.1 for provider tests.

Each fake answers like one provider's documented wire format; every request is
recorded (path, headers, JSON body) so tests can check what was sent, and
``faults`` queues answers to give instead of the normal one (status, headers,
raw body), for 429 / 500 / truncated JSON / wrong counts. A wrong bearer key is
answered 401 with the key echoed back (``refusal`` shapes that answer), as some
providers do, so tests can check that it is redacted.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]  # names lower-cased
    body: Any


@dataclass
class Fault:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


class FakeServer:
    """Serves ``answer(path, body) -> (status, json)`` until stopped."""

    def __init__(
        self,
        answer: Callable[[str, Any], tuple[int, Any]],
        api_key: str | None = None,
        refusal: Callable[[str | None], Any] | None = None,
    ):
        self.answer = answer
        self.api_key = api_key
        self.refusal = refusal or _refusal
        self.requests: list[Recorded] = []
        self.faults: deque[Fault] = deque()
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = None
                with server._lock:
                    headers = {name.lower(): value for name, value in self.headers.items()}
                    server.requests.append(Recorded(self.path, headers, body))
                    fault = server.faults.popleft() if server.faults else None
                if fault is not None:
                    return self._send(fault.status, fault.body, fault.headers)
                if server.api_key is not None:
                    expected = f"Bearer {server.api_key}"
                    presented = self.headers.get("Authorization")
                    if presented != expected:
                        error = server.refusal(presented)
                        return self._send(401, json.dumps(error).encode())
                status, payload = server.answer(self.path, body)
                return self._send(status, json.dumps(payload).encode())

            def _send(
                self, status: int, data: bytes, headers: dict[str, str] | None = None
            ) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


def _refusal(presented: str | None) -> Any:
    """TEI's error shape, echoing the credentials it refused."""
    return {"error": f"invalid credentials: {presented}", "error_type": "Unauthorized"}
