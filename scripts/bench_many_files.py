"""Many small files vs a few large ones: ``embedfleet run`` and Ray Data side by side.

Usage: python scripts/bench_many_files.py [--rows 100000] [--small-files 5000]
           [--large-files 20] [--rows-per-shard 10000] [--replicas 2] [--no-ray-data]

Writes ``--rows`` short JSON Lines rows twice, once spread over ``--small-files`` files and
once over ``--large-files`` files, then runs, each in a fresh process, one after the other
on the same machine:

- ``embedfleet run`` of each folder: the ``hash`` provider (dimension 64), ``--replicas``
  replicas, ``rows_per_shard = --rows-per-shard``, a new output;
- Ray Data on the small-files folder, as its documentation recommends for a job like this
  on a small machine: ``read_json`` -> ``map_batches`` (a callable class with the same
  hash function, ``concurrency = --replicas`` actors, ``batch_size=1024``) ->
  ``write_parquet``, with CPU requests that leave the read and write tasks room beside the
  actors on 2 CPUs (reads and writes ``num_cpus=0.2``, each actor ``0.5``: the hash
  function is as cheap as embedfleet's zero-CPU replicas find it; with 1-CPU actors the
  two actors hold both CPUs and the reads never start).

Ray Data needs pandas, which embedfleet does not: ``pip install pandas`` first (or pass
``--no-ray-data``).

Reports wall time (process start to exit: Python, Ray start-up, planning, embedding and
writing), rows written and part files per run, and the ratios the targets are stated in.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RUN_TIMEOUT = 1800  # seconds for one run, start-up included

RAY_DATA = """
import sys, ray, numpy as np, pyarrow as pa
from embedfleet.testing import HashEmbeddingFunction
source, output, replicas = sys.argv[1], sys.argv[2], int(sys.argv[3])
ray.init(include_dashboard=False, logging_level="ERROR")
ray.data.DataContext.get_current().enable_progress_bars = False

class Embed:
    def __init__(self):
        self.function = HashEmbeddingFunction(dimension=64)

    def __call__(self, batch: pa.Table) -> pa.Table:
        vectors = np.stack(self.function(batch["text"].to_pylist())).astype(np.float32)
        column = pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), 64)
        return pa.table({"id": batch["id"], "embedding": column})

dataset = ray.data.read_json(source, num_cpus=0.2)
dataset = dataset.map_batches(
    Embed, concurrency=replicas, num_cpus=0.5, batch_size=1024, batch_format="pyarrow"
)
dataset.write_parquet(output, ray_remote_args={"num_cpus": 0.2})
"""


def write_corpus(folder: Path, rows: int, files: int) -> None:
    folder.mkdir(parents=True)
    per_file = -(-rows // files)
    for number in range(files):
        first = number * per_file
        lines = [
            json.dumps({"id": f"r{index}", "text": f"short row {index} about things"})
            for index in range(first, min(first + per_file, rows))
        ]
        (folder / f"part-{number:05d}.jsonl").write_text("\n".join(lines) + "\n")


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, timeout=RUN_TIMEOUT)
    return time.perf_counter() - started


def embedfleet_run(source: Path, output: Path, arguments: argparse.Namespace) -> dict[str, Any]:
    spec = output.parent / f"{output.name}.toml"
    spec.write_text(
        "\n".join(
            [
                "[source]",
                f'uri = "{source}"',
                'id_column = "id"',
                "[embedding]",
                'provider = "hash"',
                "[embedding.config]",
                "dimension = 64",
                "[fleet]",
                f"replicas = {arguments.replicas}",
                "num_cpus = 0",
                "[output]",
                f'uri = "{output}"',
                f"rows_per_shard = {arguments.rows_per_shard}",
            ]
        )
        + "\n"
    )
    report = output.parent / f"{output.name}.json"
    command = [sys.executable, "-m", "embedfleet.cli", "run", str(spec), "--quiet"]
    seconds = timed([*command, "--report", str(report)])
    result = json.loads(report.read_text())
    parts = list(output.glob("snapshots/*/*.parquet"))
    return {
        "seconds": round(seconds, 1),
        "startup_seconds": round(result["startup_seconds"], 1),
        "rows": result["embedded"],
        "shards": result["shards"],
        "part_files": len(parts),
        "files_written": sum(1 for path in output.rglob("*") if path.is_file()),
    }


def ray_data_run(source: Path, output: Path, replicas: int) -> dict[str, Any]:
    seconds = timed([sys.executable, "-c", RAY_DATA, str(source), str(output), str(replicas)])
    import pyarrow.dataset as ds

    parts = list(output.glob("*.parquet"))
    return {
        "seconds": round(seconds, 1),
        "rows": ds.dataset(str(output), format="parquet").count_rows(),
        "part_files": len(parts),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--small-files", type=int, default=5000)
    parser.add_argument("--large-files", type=int, default=20)
    parser.add_argument("--rows-per-shard", type=int, default=10_000)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--no-ray-data", action="store_true")
    arguments = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as temporary:
        root = Path(temporary)
        small, large = root / "small", root / "large"
        write_corpus(small, arguments.rows, arguments.small_files)
        write_corpus(large, arguments.rows, arguments.large_files)
        report: dict[str, Any] = {
            "rows": arguments.rows,
            "rows_per_shard": arguments.rows_per_shard,
            "replicas": arguments.replicas,
            "part_file_limit": -(-arguments.rows // arguments.rows_per_shard),
        }
        runs = {
            "embedfleet_small_files": lambda: embedfleet_run(small, root / "out-small", arguments),
            "embedfleet_large_files": lambda: embedfleet_run(large, root / "out-large", arguments),
        }
        if not arguments.no_ray_data:
            runs["ray_data_small_files"] = lambda: ray_data_run(
                small, root / "ray-data", arguments.replicas
            )
        for name, run in runs.items():
            try:
                report[name] = run()
            except (subprocess.SubprocessError, OSError) as exc:  # say so, keep the others
                report[name] = {"failed": str(exc)[:300]}
    seconds = {name: report[name].get("seconds") for name in runs}
    small_seconds = seconds["embedfleet_small_files"]
    if small_seconds and seconds["embedfleet_large_files"]:
        report["small_over_large"] = round(small_seconds / seconds["embedfleet_large_files"], 2)
    if small_seconds and seconds.get("ray_data_small_files"):
        report["embedfleet_over_ray_data"] = round(
            small_seconds / seconds["ray_data_small_files"], 2
        )
    print(json.dumps(report, indent=2))
    return 0 if all(seconds.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
