"""Local backends side by side: torch fp32 / bf16 and ONNX Runtime fp32 / int8.

    python scripts/bench_backends.py --docs 1000 --passes 3

Every variant embeds the same generated corpus (``embedfleet.bench.corpus``) in-process
with the default model. Passes are interleaved (each pass runs every variant once, in
turn), so load from other work on a shared machine hits all variants alike; the best pass
of each is reported, with the ratio to torch fp32 and the minimum cosine to torch fp32.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from embedfleet.bench import _min_cosine, corpus
from embedfleet.embedding_functions import DefaultEmbeddingFunction


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=1000)
    parser.add_argument("--passes", type=int, default=3)
    arguments = parser.parse_args()
    texts = corpus(arguments.docs, seed=1)
    variants = {
        "torch fp32": DefaultEmbeddingFunction(precision="fp32"),
        "torch bf16": DefaultEmbeddingFunction(precision="bf16"),
        "onnx fp32": DefaultEmbeddingFunction(backend="onnx", precision="fp32"),
        "onnx auto": DefaultEmbeddingFunction(backend="onnx"),
    }
    for ef in variants.values():
        ef(texts[:32])  # load, export on first use, warm up
    best = dict.fromkeys(variants, float("inf"))
    vectors: dict[str, np.ndarray] = {}
    for _ in range(arguments.passes):
        for name, ef in variants.items():
            start = time.perf_counter()
            vectors[name] = np.stack(ef(texts))
            best[name] = min(best[name], time.perf_counter() - start)
    print(f"{arguments.docs} documents, best of {arguments.passes} interleaved passes")
    print(f"{'variant':<24}{'docs/s':>10}{'x torch fp32':>14}{'min cos':>10}")
    for name, ef in variants.items():
        label = f"{name} ({ef.precision})" if name.endswith("auto") else name
        print(
            f"{label:<24}{arguments.docs / best[name]:>10.1f}"
            f"{best['torch fp32'] / best[name]:>14.2f}"
            f"{_min_cosine(vectors[name], vectors['torch fp32']):>10.4f}"
        )


if __name__ == "__main__":
    main()
