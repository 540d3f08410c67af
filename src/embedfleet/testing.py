"""A deterministic, dependency-free embedding function for tests and benchmarks.

``HashEmbeddingFunction`` turns each text into a unit vector seeded by the
sha256 of the text, so the same text always gets the same vector, in any
process, with nothing but numpy. Register name: ``"hash"``. It exercises every
layer above the model (fleet, jobs, quotas) at full speed.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from embedfleet.embedding_functions.base import DEFAULT_BATCH_SIZE, Documents, EmbeddingFunction
from embedfleet.embedding_functions.registry import register
from embedfleet.errors import ConfigError

__all__ = ["HashEmbeddingFunction"]


@register("hash")
class HashEmbeddingFunction(EmbeddingFunction):
    """Vectors from a hash of the text: deterministic, instant, meaningless.

    ``query_prefix`` is prepended to queries so tests can tell
    ``embed_query`` from ``__call__``; ``max_tokens`` (whitespace tokens)
    gives it a limit to exercise ``on_long``.
    """

    def __init__(
        self,
        *,
        dimension: int = 64,
        query_prefix: str = "query: ",
        max_tokens: int | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        on_long: str = "truncate",
    ) -> None:
        super().__init__(batch_size=batch_size, on_long=on_long)
        if not isinstance(dimension, int) or dimension < 1:
            raise ConfigError(f"dimension must be a positive integer, got {dimension!r}")
        self._dimension = dimension
        self.query_prefix = query_prefix
        self._max_tokens = max_tokens

    def get_config(self) -> dict[str, Any]:
        return {
            "dimension": self._dimension,
            "query_prefix": self.query_prefix,
            "max_tokens": self._max_tokens,
            **super().get_config(),
        }

    def max_tokens(self) -> int | None:
        return self._max_tokens

    def count_tokens(self, texts: Documents, *, query: bool = False) -> list[int] | None:
        if self._max_tokens is None:
            return None
        prefix = self.query_prefix if query else ""
        return [len((prefix + text).split()) for text in texts]

    def embed_batch(self, texts: Documents, *, query: bool = False) -> np.ndarray:
        prefix = self.query_prefix if query else ""
        return np.stack([self._vector(prefix + text) for text in texts])

    def _vector(self, text: str) -> np.ndarray:
        if self._max_tokens is not None:
            text = " ".join(text.split()[: self._max_tokens])
        seed = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little")
        vector = np.random.default_rng(seed).standard_normal(self._dimension, dtype=np.float32)
        return vector / np.linalg.norm(vector)
