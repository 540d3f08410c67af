"""Stand-ins for tests and benchmarks.

``HashEmbeddingFunction`` (registered as ``"hash"``; it lives with the other
providers in :mod:`embedfleet.embedding_functions.hash`): deterministic vectors
from a hash of the text, numpy only. ``RateLimitedServer``: a TEI-style server
on 127.0.0.1 that enforces a requests/minute quota. ``SyntheticFileSystem``: an
fsspec filesystem (``synthetic://``) serving any number of generated JSON Lines
files without storing them, counting the files it opens.
"""

from __future__ import annotations

import time
from typing import Any

from embedfleet.embedding_functions.hash import HashEmbeddingFunction

__all__ = ["HashEmbeddingFunction", "RateLimitedServer", "SyntheticFileSystem"]


class RateLimitedServer:
    """A TEI-style ``POST /embed`` server on 127.0.0.1 that enforces a quota.

    The quota is a continuously refilled token bucket holding one second's worth
    of ``requests_per_minute`` (the way providers enforce per-minute limits over
    short windows). A request finding the bucket empty gets 429 with
    ``retry-after-ms`` (the time until a token is back). Every text answered
    with 200 is counted, so a benchmark can check that each document was
    embedded exactly once; ``accepted_at`` / ``refused_at`` hold when each request
    was answered 200 / 429 (``time.monotonic()``), for rates over time.
    ``latency_seconds`` stands in for the provider's service time.

    ``rate_limit_headers=True`` adds OpenAI's headers to every answer:
    ``x-ratelimit-limit-requests`` (the per-minute limit), ``-remaining-requests``
    (whole requests in the bucket) and ``-reset-requests`` (until the bucket is full,
    as a duration such as ``120ms``), and, with ``tokens_per_minute``, the same for
    tokens (stated, not enforced). ``storm_after`` / ``storm_seconds``: once that many
    requests were accepted, every request is answered ``storm_status`` (503) for that
    long, then service is normal again (:meth:`start_storm` starts one by hand).
    For benchmarks and tests of :mod:`embedfleet.quota`.
    """

    def __init__(
        self,
        requests_per_minute: float,
        *,
        latency_seconds: float = 0.0,
        dimension: int = 8,
        rate_limit_headers: bool = False,
        tokens_per_minute: float | None = None,
        storm_after: int | None = None,
        storm_seconds: float = 0.0,
        storm_status: int = 503,
    ) -> None:
        import json
        import threading
        from collections import Counter
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.requests_per_minute = requests_per_minute
        self.rate = requests_per_minute / 60.0
        self.capacity = max(1.0, self.rate)  # one second's worth
        self.latency_seconds = latency_seconds
        self.rate_limit_headers = rate_limit_headers
        self.tokens_per_minute = tokens_per_minute
        self.storm_after = storm_after
        self.storm_seconds = storm_seconds
        self.storm_status = storm_status
        self.embedded: Counter[str] = Counter()
        self.accepted = 0
        self.refused = 0
        self.stormed = 0  # requests answered storm_status
        self.accepted_at: list[float] = []
        self.refused_at: list[float] = []
        self.storm_window: tuple[float, float] | None = None  # (start, end), monotonic
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
                status, wait, headers = server._take()
                if status == server.storm_status:
                    body = json.dumps({"error": "service unavailable"}).encode()
                    return self._send(status, body, headers)
                if wait is not None:
                    body = json.dumps({"error": "rate limit exceeded"}).encode()
                    headers["retry-after-ms"] = str(int(wait * 1000) + 1)
                    return self._send(429, body, headers)
                if server.latency_seconds:
                    time.sleep(server.latency_seconds)  # the provider's service time
                texts = json.loads(raw)["inputs"]
                with server._lock:
                    server.embedded.update(texts)
                payload = [vector.tolist() for vector in vectors(texts)]
                return self._send(200, json.dumps(payload).encode(), headers)

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

    def start_storm(self, seconds: float) -> None:
        """Answer every request ``storm_status`` for the next ``seconds``."""
        with self._lock:
            now = time.monotonic()
            self.storm_window = (now, now + seconds)

    def _take(self) -> tuple[int, float | None, dict[str, str]]:
        """Take one token: (200, None, headers) if granted, (429, seconds until one is
        back, headers) if not, (storm_status, None, {}) during a storm."""
        with self._lock:
            now = time.monotonic()
            if self.storm_after is not None and self.accepted >= self.storm_after:
                self.storm_after = None
                self.storm_window = (now, now + self.storm_seconds)
            if self.storm_window is not None and self.storm_window[0] <= now < self.storm_window[1]:
                self.stormed += 1
                return self.storm_status, None, {}
            self._tokens = min(self.capacity, self._tokens + (now - self._refilled) * self.rate)
            self._refilled = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                self.accepted += 1
                self.accepted_at.append(now)
                return 200, None, self._headers()
            self.refused += 1
            self.refused_at.append(now)
            return 429, (1.0 - self._tokens) / self.rate, self._headers()

    def _headers(self) -> dict[str, str]:
        """OpenAI-style rate-limit headers for the bucket as it is now (if asked for)."""
        if not self.rate_limit_headers:
            return {}
        until_full = (self.capacity - self._tokens) / self.rate
        headers = {
            "x-ratelimit-limit-requests": f"{self.requests_per_minute:g}",
            "x-ratelimit-remaining-requests": str(int(self._tokens)),
            "x-ratelimit-reset-requests": f"{max(0, round(until_full * 1000))}ms",
        }
        if self.tokens_per_minute is not None:
            headers["x-ratelimit-limit-tokens"] = f"{self.tokens_per_minute:g}"
            headers["x-ratelimit-remaining-tokens"] = f"{self.tokens_per_minute:g}"
            headers["x-ratelimit-reset-tokens"] = "0s"
        return headers

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


def _synthetic_base() -> type:
    from fsspec.spec import AbstractFileSystem

    return AbstractFileSystem


class SyntheticFileSystem(_synthetic_base()):  # type: ignore[misc]
    """``synthetic:///corpus/dNNNN/fNNNNNNN.jsonl``: ``files`` JSON Lines files of
    ``rows_per_file`` rows, ``per_directory`` to a directory, made up when listed or
    read, never stored: a million files cost nothing until planning holds them.

    Each line is ``{"text": "synthetic row FFFFFFF-RRRR ..."}`` padded to a fixed width,
    so a file's size is known without making it. ``SyntheticFileSystem.opened`` counts
    the files opened by every instance (fsspec keeps one per thread; planning should open
    a bounded sample, not every file). Pass the keyword arguments as ``storage_options``.
    """

    protocol = "synthetic"
    root_marker = "/"
    LINE = 64  # bytes per line, newline included
    MTIME = 1_700_000_000.0
    opened = 0  # files opened, all instances together

    def __init__(
        self, files: int = 1000, rows_per_file: int = 20, per_directory: int = 1000, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.files = files
        self.rows_per_file = rows_per_file
        self.per_directory = per_directory

    def _file(self, index: int) -> dict[str, Any]:
        name = f"/corpus/d{index // self.per_directory:04d}/f{index:07d}.jsonl"
        size = self.LINE * self.rows_per_file
        return {"name": name, "size": size, "type": "file", "mtime": self.MTIME}

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        path = self._strip_protocol(path).rstrip("/") or "/"
        directories = -(-self.files // self.per_directory)
        if path == "/":
            entries = [{"name": "/corpus", "size": 0, "type": "directory"}]
        elif path == "/corpus":
            entries = [
                {"name": f"/corpus/d{number:04d}", "size": 0, "type": "directory"}
                for number in range(directories)
            ]
        elif path.startswith("/corpus/d") and path.count("/") == 2:
            number = int(path.rsplit("d", 1)[1])
            first = number * self.per_directory
            last = min(first + self.per_directory, self.files)
            entries = [self._file(index) for index in range(first, last)]
        else:
            raise FileNotFoundError(path)
        return entries if detail else [entry["name"] for entry in entries]

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        path = self._strip_protocol(path).rstrip("/") or "/"
        if path.endswith(".jsonl"):
            index = int(path.rsplit("f", 1)[1].split(".")[0])
            if index < self.files and self._file(index)["name"] == path:
                return self._file(index)
            raise FileNotFoundError(path)
        if path in ("/", "/corpus") or (path.startswith("/corpus/d") and path.count("/") == 2):
            return {"name": path, "size": 0, "type": "directory"}
        raise FileNotFoundError(path)

    def content(self, index: int) -> bytes:
        lines = []
        for row in range(self.rows_per_file):
            text = f"synthetic row {index:07d}-{row:04d}"
            line = '{"text": "' + text.ljust(self.LINE - 13) + '"}\n'
            lines.append(line.encode())
        return b"".join(lines)

    def _open(self, path: str, mode: str = "rb", **kwargs: Any) -> Any:
        import io

        info = self.info(path)
        if info["type"] != "file" or "r" not in mode:
            raise OSError(f"{path}: synthetic files can only be read")
        SyntheticFileSystem.opened += 1
        return io.BytesIO(self.content(int(info["name"].rsplit("f", 1)[1].split(".")[0])))
