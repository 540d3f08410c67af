"""A deterministic, dependency-free embedding function for tests and benchmarks.

``HashEmbeddingFunction`` turns each text into a unit vector seeded by the
sha256 of the text, so the same text always gets the same vector, in any
process, with nothing but numpy. Register name: ``"hash"``. It exercises every
layer above the model (fleet, jobs, quotas) at full speed.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from embedfleet.embedding_functions.base import DEFAULT_BATCH_SIZE, Documents, EmbeddingFunction
from embedfleet.embedding_functions.registry import register
from embedfleet.embedding_functions.token_counter import TokenCounter
from embedfleet.errors import ConfigError

__all__ = ["HashEmbeddingFunction"]


@register("hash")
class HashEmbeddingFunction(EmbeddingFunction):
    """Vectors from a hash of the text: deterministic, instant, meaningless.

    Its workload is ``"io"``: hashing costs next to nothing, and with
    ``delay_seconds`` it stands in for a slow API (fleet replicas reserve no CPU).

    ``query_prefix`` is prepended to queries so tests can tell
    ``embed_query`` from ``__call__``; ``max_tokens`` (whitespace tokens)
    gives it a limit to exercise ``on_long``.

    Fault injection, for fleet and job tests: a batch holding a text listed in
    ``fail_on`` raises ``ValueError``; a batch holding ``crash_once_on`` kills
    the whole process (``os._exit``) the first time, remembered by creating the
    file ``crash_marker``; ``delay_seconds`` makes every batch that slow
    (a stand-in for a real model, so a test can stop a job half-way).
    """

    workload = "io"

    def __init__(
        self,
        *,
        dimension: int = 64,
        query_prefix: str = "query: ",
        max_tokens: int | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        on_long: str = "truncate",
        fail_on: list[str] | None = None,
        crash_once_on: str | None = None,
        crash_marker: str | None = None,
        delay_seconds: float = 0.0,
    ) -> None:
        super().__init__(batch_size=batch_size, on_long=on_long)
        if not isinstance(dimension, int) or dimension < 1:
            raise ConfigError(f"dimension must be a positive integer, got {dimension!r}")
        self._dimension = dimension
        self.query_prefix = query_prefix
        self._max_tokens = max_tokens
        if crash_once_on is not None and crash_marker is None:
            raise ConfigError("crash_once_on needs crash_marker (a file path)")
        self.fail_on = list(fail_on) if fail_on else None
        self.crash_once_on = crash_once_on
        self.crash_marker = crash_marker
        self.delay_seconds = delay_seconds

    def get_config(self) -> dict[str, Any]:
        return {
            "dimension": self._dimension,
            "query_prefix": self.query_prefix,
            "max_tokens": self._max_tokens,
            "fail_on": self.fail_on,
            "crash_once_on": self.crash_once_on,
            "crash_marker": self.crash_marker,
            "delay_seconds": self.delay_seconds,
            **super().get_config(),
        }

    def max_tokens(self) -> int | None:
        return self._max_tokens

    def token_lengths(self, texts: Documents, *, query: bool = False) -> list[int] | None:
        if self._max_tokens is None:
            return None
        prefix = self.query_prefix if query else ""
        return [len((prefix + text).split()) for text in texts]

    def token_counter(self) -> TokenCounter:
        """Whitespace tokens, as :meth:`token_lengths` counts them, against ``max_tokens``."""
        return TokenCounter.of(
            lambda texts: [len(text.split()) for text in texts], self._max_tokens, "words"
        )

    def embed_batch(self, texts: Documents, *, query: bool = False) -> np.ndarray:
        self._inject_faults(texts)
        prefix = self.query_prefix if query else ""
        return np.stack([self._vector(prefix + text) for text in texts])

    def _inject_faults(self, texts: Documents) -> None:
        if self.delay_seconds:
            time.sleep(self.delay_seconds)  # stands in for a slow model or API
        if self.fail_on:
            bad = [text for text in texts if text in self.fail_on]
            if bad:
                raise ValueError(f"refusing to embed {bad[0]!r} (fail_on)")
        if self.crash_once_on in texts and self.crash_marker is not None:
            marker = Path(self.crash_marker)
            if not marker.exists():
                marker.write_text(str(os.getpid()))
                os._exit(1)

    def _vector(self, text: str) -> np.ndarray:
        if self._max_tokens is not None:
            text = " ".join(text.split()[: self._max_tokens])
        seed = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little")
        vector = np.random.default_rng(seed).standard_normal(self._dimension, dtype=np.float32)
        return vector / np.linalg.norm(vector)
