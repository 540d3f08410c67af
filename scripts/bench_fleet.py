"""Fleet benchmark: in-process vs 1 and 2 CPU replicas on the same texts.

Usage: python scripts/bench_fleet.py [--docs 2000] [--precision auto] [--repeats 2]

Start-up (Ray, actors, model load) is timed separately; throughput is the
steady state: each configuration embeds the corpus once to warm up, then
``--repeats`` timed passes. Ratios are against in-process, measured in the
same run on the same machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

import embedfleet
from embedfleet.bench import corpus
from embedfleet.embedding_functions import DefaultEmbeddingFunction


def steady(function: embedfleet.EmbeddingFunction, texts: list[str], repeats: int) -> float:
    function(texts[: min(len(texts), 256)])  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        function(texts)
    return len(texts) * repeats / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=2000)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--repeats", type=int, default=2)
    arguments = parser.parse_args(argv)
    texts = corpus(arguments.docs)
    ef = DefaultEmbeddingFunction(precision=arguments.precision)

    start = time.perf_counter()
    ef(["warm up"])
    rows = [{"setup": "in-process", "startup_s": time.perf_counter() - start}]
    rows[0]["docs_per_s"] = steady(ef, texts, arguments.repeats)
    reference = np.stack(ef(texts[:100]))

    import ray

    start = time.perf_counter()
    ray.init(include_dashboard=False, logging_level="ERROR")
    ray_startup = time.perf_counter() - start
    for replicas in (1, 2):
        start = time.perf_counter()
        with embedfleet.remote(ef, replicas=replicas, num_cpus=1, name=f"bench{replicas}") as fleet:
            fleet(["warm up"])
            startup = time.perf_counter() - start
            docs_per_s = steady(fleet, texts, arguments.repeats)
            cosine = float((np.stack(fleet(texts[:100])) * reference).sum(axis=1).min())
        rows.append(
            {
                "setup": f"{replicas} CPU replica{'s' if replicas > 1 else ''}",
                "startup_s": startup,
                "docs_per_s": docs_per_s,
                "min_cosine_to_in_process": cosine,
            }
        )
    baseline = rows[0]["docs_per_s"]
    print(f"corpus: {len(texts)} docs, precision {ef.precision}, ray.init {ray_startup:.1f}s")
    print(f"{'setup':<16}{'start-up s':>12}{'docs/s':>10}{'ratio':>8}")
    for row in rows:
        row["ratio"] = row["docs_per_s"] / baseline
        print(
            f"{row['setup']:<16}{row['startup_s']:>12.1f}{row['docs_per_s']:>10.1f}{row['ratio']:>8.2f}"
        )
    json.dump(rows, sys.stderr)
    print(file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
