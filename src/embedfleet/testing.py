"""A deterministic, dependency-free embedding function for tests and benchmarks.

``HashEmbeddingFunction`` turns each text into a unit vector seeded by the
sha256 of the text, so the same text always gets the same vector, in any
process, with nothing but numpy. Register name: ``"hash"``. It exercises every
layer above the model (fleet, jobs, quotas) at full speed.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from embedfleet.embedding_functions.base import DEFAULT_BATCH_SIZE, Documents, EmbeddingFunction
from embedfleet.embedding_functions.registry import register
from embedfleet.errors import ConfigError

__all__ = ["HashEmbeddingFunction", "RateLimitedServer"]


@register("hash")
class HashEmbeddingFunction(EmbeddingFunction):
    """Vectors from a hash of the text: deterministic, instant, meaningless.

    ``query_prefix`` is prepended to queries so tests can tell
    ``embed_query`` from ``__call__``; ``max_tokens`` (whitespace tokens)
    gives it a limit to exercise ``on_long``.

    Fault injection, for fleet and job tests: a batch holding a text listed in
    ``fail_on`` raises ``ValueError``; a batch holding ``crash_once_on`` kills
    the whole process (``os._exit``) the first time, remembered by creating the
    file ``crash_marker``; ``delay_seconds`` makes every batch that slow
    (a stand-in for a real model, so a test can stop a job half-way).
    """

    def __init__(
        self,
        *,
        dimension: int = 64,
        query_prefix: str = "query: ",
        max_tokens: int | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        on_long: str = "truncate",
        fail_on: list[str] | None = None,
        crash_once_on: str | None = None,
        crash_marker: str | None = None,
        delay_seconds: float = 0.0,
    ) -> None:
        super().__init__(batch_size=batch_size, on_long=on_long)
        if not isinstance(dimension, int) or dimension < 1:
            raise ConfigError(f"dimension must be a positive integer, got {dimension!r}")
        self._dimension = dimension
        self.query_prefix = query_prefix
        self._max_tokens = max_tokens
        if crash_once_on is not None and crash_marker is None:
            raise ConfigError("crash_once_on needs crash_marker (a file path)")
        self.fail_on = list(fail_on) if fail_on else None
        self.crash_once_on = crash_once_on
        self.crash_marker = crash_marker
        self.delay_seconds = delay_seconds

    def get_config(self) -> dict[str, Any]:
        return {
            "dimension": self._dimension,
            "query_prefix": self.query_prefix,
            "max_tokens": self._max_tokens,
            "fail_on": self.fail_on,
            "crash_once_on": self.crash_once_on,
            "crash_marker": self.crash_marker,
            "delay_seconds": self.delay_seconds,
            **super().get_config(),
        }

    def max_tokens(self) -> int | None:
        return self._max_tokens

    def count_tokens(self, texts: Documents, *, query: bool = False) -> list[int] | None:
        if self._max_tokens is None:
            return None
        prefix = self.query_prefix if query else ""
        return [len((prefix + text).split()) for text in texts]

    def embed_batch(self, texts: Documents, *, query: bool = False) -> np.ndarray:
        self._inject_faults(texts)
        prefix = self.query_prefix if query else ""
        return np.stack([self._vector(prefix + text) for text in texts])

    def _inject_faults(self, texts: Documents) -> None:
        if self.delay_seconds:
            time.sleep(self.delay_seconds)  # stands in for a slow model or API
        if self.fail_on:
            bad = [text for text in texts if text in self.fail_on]
            if bad:
                raise ValueError(f"refusing to embed {bad[0]!r} (fail_on)")
        if self.crash_once_on in texts and self.crash_marker is not None:
            marker = Path(self.crash_marker)
            if not marker.exists():
                marker.write_text(str(os.getpid()))
                os._exit(1)

    def _vector(self, text: str) -> np.ndarray:
        if self._max_tokens is not None:
            text = " ".join(text.split()[: self._max_tokens])
        seed = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little")
        vector = np.random.default_rng(seed).standard_normal(self._dimension, dtype=np.float32)
        return vector / np.linalg.norm(vector)


class RateLimitedServer:
    """A TEI-style ``POST /embed`` server on 127.0.0.1 that enforces a quota.

    The quota is a continuously refilled token bucket holding one second's worth
    of ``requests_per_minute`` (the way providers enforce per-minute limits over
    short windows). A request finding the bucket empty gets 429 with
    ``retry-after-ms`` (the time until a token is back). Every text answered
    with 200 is counted, so a benchmark can check that each document was
    embedded exactly once. ``latency_seconds`` stands in for the provider's
    service time. For benchmarks and tests of :mod:`embedfleet.quota`.
    """

    def __init__(
        self, requests_per_minute: float, *, latency_seconds: float = 0.0, dimension: int = 8
    ) -> None:
        import json
        import threading
        from collections import Counter
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.rate = requests_per_minute / 60.0
        self.capacity = max(1.0, self.rate)  # one second's worth
        self.latency_seconds = latency_seconds
        self.embedded: Counter[str] = Counter()
        self.accepted = 0
        self.refused = 0
        self._tokens = self.capacity
        self._refilled = time.monotonic()
        self._lock = threading.Lock()
        vectors = HashEmbeddingFunction(dimension=dimension)
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                wait = server._take()
                if wait is not None:
                    body = json.dumps({"error": "rate limit exceeded"}).encode()
                    return self._send(429, body, {"retry-after-ms": str(int(wait * 1000) + 1)})
                if server.latency_seconds:
                    time.sleep(server.latency_seconds)  # the provider's service time
                texts = json.loads(raw)["inputs"]
                with server._lock:
                    server.embedded.update(texts)
                payload = [vector.tolist() for vector in vectors(texts)]
                return self._send(200, json.dumps(payload).encode(), {})

            def _send(self, status: int, data: bytes, headers: dict[str, str]) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_port}/embed"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def _take(self) -> float | None:
        """Take one token; None if granted, else seconds until one is back."""
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self.capacity, self._tokens + (now - self._refilled) * self.rate)
            self._refilled = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                self.accepted += 1
                return None
            self.refused += 1
            return (1.0 - self._tokens) / self.rate

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
