"""Sync throughput and memory: snapshots into LanceDB and Chroma, at two sizes each.

Usage: python scripts/bench_sync.py [--lancedb-rows 1000000 250000]
                                    [--chroma-rows 100000 25000] [--dimension 384]
                                    [--chroma embedded|server] [--report bench_sync.json]

For each size it writes a synthetic output (no model, no Ray: random unit vectors,
sha256 content hashes, a text column and an int passthrough column, in parts of
``--part-rows`` rows) with two snapshots: the corpus, then a nightly change (10% of the
rows changed, 5% deleted, 5% new). Each sync then runs in a fresh child process:

  first        the empty destination loaded with the first snapshot
  incremental  brought to the second (only the 20% that changed is sent)
  no-op        a second sync of the same snapshot (sends nothing)

and reports rows sent per second and the child's peak RSS (``ru_maxrss``), next to its
RSS after the imports, before the sync: the sync's own memory is the difference. Run
at two sizes, a sync streamed by batches keeps the same peak; one that held the snapshot
would grow 4x with 4x the rows. With ``--chroma server`` (the default) Chroma runs as
``chroma run`` in its own process, so its index is not in the measured process (the
server's own RSS is reported apart).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

SRC = Path(__file__).resolve().parent.parent / "src"


def write_output(folder: Path, rows: int, dimension: int, part_rows: int) -> list[str]:
    """Two complete snapshots (corpus, then a 10/5/5 change) under ``folder``."""
    from embedfleet.job.store import OutputStore, ShardMarker

    store = OutputStore(str(folder))
    frequencies = np.random.default_rng(0).uniform(0.001, 1.0, dimension).astype(np.float32)
    runs = []
    ids = np.arange(rows)
    for number, present in enumerate([ids, _changed_ids(ids)]):
        run_id = f"20260101T00000{number}Z-bench"
        snapshot = store.snapshot(run_id)
        snapshot.start(
            {
                "fingerprint": "bench",
                "embedding": {"provider": "hash", "config": {"dimension": dimension}},
            }
        )
        for start in range(0, len(present), part_rows):
            chunk = present[start : start + part_rows]
            edited = (chunk % 10 == 0) & (number == 1)  # the nightly change's new texts
            words = np.where(edited, "rewritten", "text")
            texts = [f"document {i} {word}" for i, word in zip(chunk, words, strict=True)]
            # a vector per (id, text), the same in both snapshots for an unchanged row
            seeds = (chunk + 1 + edited * rows).astype(np.float32)[:, None]
            vectors = np.sin(seeds * frequencies)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            table = pa.table(
                {
                    "id": pa.array([f"doc-{i}" for i in chunk]),
                    "embedding": pa.FixedSizeListArray.from_arrays(
                        pa.array(vectors.ravel()), dimension
                    ),
                    "content_hash": pa.array(
                        [hashlib.sha256(t.encode()).hexdigest() for t in texts]
                    ),
                    "text": pa.array(texts),
                    "n": pa.array(chunk.astype(np.int64)),
                }
            )
            shard = f"{start:010d}"
            snapshot.commit_shard(ShardMarker(shard, embedded=len(chunk)), table, None)
        snapshot.finish({"fingerprint": "bench"})
        runs.append(run_id)
    return runs


def _changed_ids(ids: np.ndarray) -> np.ndarray:
    """5% deleted (i % 20 == 5), 5% new ids after the last; i % 10 == 0 get new texts."""
    kept = ids[ids % 20 != 5]
    return np.concatenate([kept, np.arange(len(ids), len(ids) + len(ids) // 20)])


def child(arguments: argparse.Namespace) -> int:
    """One sync, in this process: prints a JSON line with its time and memory."""
    from embedfleet.destinations import DestinationSpec
    from embedfleet.destinations.sync import sync_destination
    from embedfleet.job.store import OutputStore

    spec = DestinationSpec(**json.loads(arguments.child))
    __import__("chromadb" if spec.kind == "chroma" else "lancedb")  # imports before the baseline
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    result = sync_destination(OutputStore(arguments.output), spec, run_id=arguments.run_id)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "sent": result.records_sent,
                "seconds": seconds,
                "imports_rss_mb": before / 1024,
                "peak_rss_mb": peak / 1024,
                "base": result.base,
            }
        )
    )
    return 0


def run_child(output: Path, run_id: str, spec: dict[str, Any]) -> dict[str, Any]:
    command = [
        sys.executable,
        __file__,
        "--child",
        json.dumps(spec),
        "--output",
        str(output),
        "--run-id",
        run_id,
    ]
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"sync failed: {done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


class ChromaServer:
    """`chroma run` on a free port of 127.0.0.1, for the duration of a ``with``."""

    def __init__(self, folder: Path) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        executable = shutil.which("chroma") or str(Path(sys.executable).parent / "chroma")
        self.process = subprocess.Popen(
            [
                executable,
                "run",
                "--path",
                str(folder),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(300):
            try:
                urllib.request.urlopen(f"{self.url}/api/v2/heartbeat", timeout=1).close()
                return
            except OSError:
                time.sleep(0.2)
        self.process.kill()
        raise SystemExit("chroma run did not start")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def rss_mb(self) -> float:
        import psutil

        return psutil.Process(self.process.pid).memory_info().rss / 2**20

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def bench(kind: str, rows: int, arguments: argparse.Namespace, folder: Path) -> list[dict]:
    output = folder / f"{kind}-{rows}" / "out"
    written = time.perf_counter()
    first, second = write_output(output, rows, arguments.dimension, arguments.part_rows)
    print(
        f"{kind} {rows:,} rows: output written in {time.perf_counter() - written:.0f} s",
        file=sys.stderr,
    )
    server = None
    if kind == "lancedb":
        spec: dict[str, Any] = {
            "kind": "lancedb",
            "uri": str(output.parent / "lance"),
            "table": "docs",
        }
    elif arguments.chroma == "server":
        server = ChromaServer(output.parent / "chroma-server")
        spec = {"kind": "chroma", "url": server.url, "collection": "docs"}
    else:
        spec = {"kind": "chroma", "path": str(output.parent / "chroma"), "collection": "docs"}
    results = []
    try:
        for phase, run_id in (("first", first), ("incremental", second), ("no-op", second)):
            measured = run_child(output, run_id, spec)
            rate = measured["sent"] / measured["seconds"] if measured["seconds"] else 0.0
            results.append(
                {"kind": kind, "rows": rows, "phase": phase, "rows_per_s": rate, **measured}
            )
            if server is not None:
                results[-1]["server_rss_mb"] = server.rss_mb()
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(output.parent, ignore_errors=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lancedb-rows", type=int, nargs="*", default=[1_000_000, 250_000])
    parser.add_argument("--chroma-rows", type=int, nargs="*", default=[100_000, 25_000])
    parser.add_argument("--dimension", type=int, default=384)
    parser.add_argument("--part-rows", type=int, default=10_000)
    parser.add_argument("--chroma", choices=("embedded", "server"), default="server")
    parser.add_argument("--workdir", help="where outputs are written (default: a temp dir)")
    parser.add_argument("--report", help="write the results as JSON")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    parser.add_argument("--run-id", help=argparse.SUPPRESS)
    arguments = parser.parse_args(argv)
    if arguments.child:
        return child(arguments)
    sys.path.insert(0, str(SRC))
    results = []
    with tempfile.TemporaryDirectory(dir=arguments.workdir) as folder:
        for kind, sizes in (("lancedb", arguments.lancedb_rows), ("chroma", arguments.chroma_rows)):
            for rows in sizes:
                results += bench(kind, rows, arguments, Path(folder))
    print(f"{'store':8} {'rows':>10} {'phase':12} {'sent':>9} {'s':>7} {'rows/s':>9} "
          f"{'imports MB':>10} {'peak MB':>8}")  # fmt: skip
    for item in results:
        print(
            f"{item['kind']:8} {item['rows']:>10,} {item['phase']:12} {item['sent']:>9,} "
            f"{item['seconds']:>7.1f} {item['rows_per_s']:>9,.0f} "
            f"{item['imports_rss_mb']:>10.0f} {item['peak_rss_mb']:>8.0f}"
        )
    if arguments.report:
        Path(arguments.report).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
