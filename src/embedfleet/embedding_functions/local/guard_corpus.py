"""The texts a reduced precision is measured on against fp32, and the bench's generator.

A guard is only as good as its texts: short, medium and long ones (past a small
model's token limit, where truncation and long attention rows are exercised),
English and other scripts, code and SQL. The generator lives here, beside the
guard, because the guard depends on it; ``embedfleet bench`` borrows it to draw
its corpus from the same distribution (it imports from here, never the other
way round, so the guard does not depend on the benchmark).

A kept guard result is keyed by :func:`texts_digest` of these texts, by their
content: editing the word list or a sentence measures again.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence

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

#: Fixed sentences in several scripts, plus code and SQL, after the generated texts.
SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "Embeddings map text to vectors so that similar meanings lie close together.",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "Le renard brun rapide saute par-dessus le chien paresseux.",
    "東京は日本の首都であり、世界最大の都市圏の一つです。",
    "Быстрая коричневая лиса перепрыгивает через ленивую собаку.",
    "def embed(texts): return model.encode(texts, batch_size=32)",
    "SELECT id, text FROM documents WHERE updated_at > '2026-01-01';",
)
GENERATED_TEXTS = 96
GENERATOR_SEED = 20261125


def corpus(count: int, seed: int = 0) -> list[str]:
    """Short, medium and long documents, shuffled: 60% of 3-40 words (lognormal
    around 15), 30% of 50-150, 10% of 200-400 (past the model's 256-token limit)."""
    rng = random.Random(seed)
    lengths = []
    for _ in range(count):
        draw = rng.random()
        if draw < 0.6:
            lengths.append(max(3, min(40, int(rng.lognormvariate(2.7, 0.6)))))
        elif draw < 0.9:
            lengths.append(rng.randint(50, 150))
        else:
            lengths.append(rng.randint(200, 400))
    return [" ".join(rng.choice(WORDS) for _ in range(length)) for length in lengths]


def guard_corpus() -> list[str]:
    """Short, medium and long texts (past 256 tokens), English and other scripts."""
    return [*corpus(GENERATED_TEXTS, seed=GENERATOR_SEED), *SENTENCES]


def texts_digest(texts: Sequence[str]) -> str:
    """A hash of the texts themselves (order included): what a kept result is keyed by."""
    return hashlib.sha256(json.dumps(list(texts), ensure_ascii=False).encode()).hexdigest()
