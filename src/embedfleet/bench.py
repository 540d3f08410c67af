"""``embedfleet bench``: the same corpus through three paths, side by side.

(a) plain sentence-transformers ``encode`` in fp32, the baseline a user would
write; (b) the in-process ``DefaultEmbeddingFunction``; (c) a full job (read
JSON Lines, shard, embed on the fleet, write Parquet). Throughput is the steady
state after start-up (for the job: after the lock, plan, Ray and the fleet with
its models are up); start-up is reported separately. Compare ratios, which
are measured in one run on one machine, not absolute numbers across machines.
"""

from __future__ import annotations

import json
import random
import tempfile
import time
from pathlib import Path
from typing import Any

WORDS = [
    *[
        "the",
        "quick",
        "brown",
        "fox",
        "jumps",
        "over",
        "lazy",
        "dog",
        "embedding",
        "vector",
        "model",
        "ray",
        "cluster",
    ],
    *[
        "data",
        "science",
        "music",
        "football",
        "garden",
        "finance",
        "medicine",
        "astronomy",
        "cooking",
    ],
]


def corpus(count: int, seed: int = 0) -> list[str]:
    """Mostly short documents (lognormal lengths around 25 words), a few long ones."""
    rng = random.Random(seed)
    lengths = [max(3, min(300, int(rng.lognormvariate(3.2, 0.7)))) for _ in range(count)]
    return [" ".join(rng.choice(WORDS) for _ in range(length)) for length in lengths]


def run_benchmark(docs: int, *, replicas: int = 2, num_cpus: float = 1) -> list[dict[str, Any]]:
    from sentence_transformers import SentenceTransformer

    from embedfleet.embedding_functions import DefaultEmbeddingFunction
    from embedfleet.job import Job, JobSpec

    texts = corpus(docs)
    ef = DefaultEmbeddingFunction()
    source = str(ef.source.source)
    tokens = sum(ef.count_tokens(texts))
    rows: list[dict[str, Any]] = []

    start = time.perf_counter()
    baseline = SentenceTransformer(source, device="cpu")
    baseline.encode(texts[:32])
    cold = time.perf_counter() - start
    rows.append(
        _timed(
            "sentence-transformers encode fp32",
            cold,
            docs,
            tokens,
            lambda: baseline.encode(texts, batch_size=32),
        )
    )

    start = time.perf_counter()
    ef(texts[:32])
    cold = time.perf_counter() - start
    rows.append(
        _timed(f"embedfleet in-process ({ef.precision})", cold, docs, tokens, lambda: ef(texts))
    )

    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder) / "corpus.jsonl"
        data.write_text("".join(json.dumps({"text": text}) + "\n" for text in texts))
        spec = JobSpec.from_dict(
            {
                "source": {"uri": str(data)},
                "embedding": {"provider": "default"},
                "fleet": {"replicas": replicas, "num_cpus": num_cpus},
                "output": {"uri": f"{folder}/out", "rows_per_shard": max(500, docs // 8)},
            }
        )
        result = Job(spec).run(progress=False)
        rows.append(
            {
                "path": f"full job ({replicas} replicas x {num_cpus:g} CPU)",
                "cold_start_s": result.startup_seconds,
                "docs_per_s": result.steady_rows_per_second,
                "tokens_per_s": tokens * result.steady_rows_per_second / docs,
            }
        )

    base = rows[0]["docs_per_s"]
    for row in rows:
        row["ratio_to_encode"] = row["docs_per_s"] / base
    rows[2]["ratio_to_in_process"] = rows[2]["docs_per_s"] / rows[1]["docs_per_s"]
    print(f"corpus: {docs} documents, {tokens} tokens ({tokens / docs:.1f} per document)")
    print(f"{'path':<40}{'cold s':>8}{'docs/s':>10}{'tokens/s':>11}{'x encode':>10}")
    for row in rows:
        print(
            f"{row['path']:<40}{row['cold_start_s']:>8.1f}{row['docs_per_s']:>10.1f}"
            f"{row['tokens_per_s']:>11.0f}{row['ratio_to_encode']:>10.2f}"
        )
    print(f"full job / in-process: {rows[2]['ratio_to_in_process']:.2f}")
    return rows


def _timed(path: str, cold: float, docs: int, tokens: int, work: Any) -> dict[str, Any]:
    start = time.perf_counter()
    work()
    seconds = time.perf_counter() - start
    return {
        "path": path,
        "cold_start_s": cold,
        "docs_per_s": docs / seconds,
        "tokens_per_s": tokens / seconds,
    }
