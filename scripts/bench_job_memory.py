"""Driver memory of a large job: 1 million short rows with the test provider.

Usage: python scripts/bench_job_memory.py [--rows 1000000] [--rows-per-shard 20000]

Writes a JSON Lines corpus to a temp dir, runs the job with the dependency-free
HashEmbeddingFunction, and reports the driver's peak RSS (target: under 1.5 GB)
and throughput. Shard tasks and replicas run in Ray worker processes; only the
driver's memory is measured here, since it must not grow with the dataset.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

from embedfleet.job import Job, JobSpec


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rows-per-shard", type=int, default=20_000)
    arguments = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder) / "rows.jsonl"
        with data.open("w") as handle:
            for index in range(arguments.rows):
                handle.write(json.dumps({"text": f"short row {index} about things"}) + "\n")
        spec = JobSpec.from_dict(
            {
                "source": {"uri": str(data)},
                "embedding": {"provider": "hash", "config": {"dimension": 32}},
                "fleet": {"replicas": 2, "num_cpus": 0, "batch_size": 2048},
                "output": {"uri": f"{folder}/out", "rows_per_shard": arguments.rows_per_shard},
            }
        )
        start = time.perf_counter()
        result = Job(spec).run(progress=False)
        seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    report = {
        "rows": arguments.rows,
        "embedded": result.embedded,
        "complete": result.complete,
        "seconds": round(seconds, 1),
        "rows_per_second": round(result.embedded / seconds),
        "driver_peak_rss_mb": round(peak_mb),
        "target_mb": 1536,
    }
    print(json.dumps(report, indent=2))
    return 0 if result.complete and peak_mb < 1536 else 1


if __name__ == "__main__":
    sys.exit(main())
