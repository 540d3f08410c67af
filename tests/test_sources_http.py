"""Sources over HTTP: a real server on 127.0.0.1 that honours Range requests, as
object stores and CDNs do (the standard library's server does not)."""

from __future__ import annotations

import functools
import io
import json
import re
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest

pytest.importorskip("aiohttp")

from embedfleet.job import sources
from embedfleet.job.spec import SourceSpec


class RangeHandler(SimpleHTTPRequestHandler):
    """Serves files with byte-range support (RFC 9110 single ranges)."""

    def log_message(self, format, *args):  # keep test output quiet
        pass

    def send_head(self):
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if match is None:
            return super().send_head()
        path = self.translate_path(self.path)
        with open(path, "rb") as handle:
            data = handle.read()
        start = int(match[1])
        end = min(int(match[2]) if match[2] else len(data) - 1, len(data) - 1)
        self.send_response(206)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()

        return io.BytesIO(data[start : end + 1])

    def end_headers(self):
        if "Range" not in self.headers:
            self.send_header("Accept-Ranges", "bytes")
        super().end_headers()


@pytest.fixture
def http_root(tmp_path):
    handler = functools.partial(RangeHandler, directory=str(tmp_path))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield tmp_path, f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(timeout=10)


def test_http_jsonl_is_sharded_by_byte_ranges_and_read_completely(http_root):
    folder, base = http_root
    rows = [{"id": f"x{index}", "text": f"text {index} " * (index % 7 + 1)} for index in range(300)]
    (folder / "a.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    spec = SourceSpec(uri=f"{base}/a.jsonl", id_column="id")
    shards = sources.plan(spec, 40)
    assert len(shards) > 3 and {shard.unit for shard in shards} == {"bytes"}
    read = [
        (id_, text)
        for shard in shards
        for piece in sources.read_shard(shard, spec)
        for id_, text in zip(piece.ids, piece.texts, strict=True)
    ]
    assert read == [(row["id"], row["text"]) for row in rows]
