"""INSTRUCTOR-style models: the instruction steers the vector but is not pooled.

A subclass because two things differ from a plain prompted model: the
instruction is always a literal prefix (never a prompt name the model defines),
and the model's mean pooling is told to leave the prompt's tokens out, as
INSTRUCTOR was trained.
"""

from __future__ import annotations

from typing import Any

from embedfleet.embedding_functions.base import DEFAULT_BATCH_SIZE
from embedfleet.embedding_functions.local.sentence_transformer import (
    DEFAULT_MAX_BATCH_TOKENS,
    SentenceTransformerEmbeddingFunction,
)
from embedfleet.embedding_functions.registry import register


@register("instructor")
class InstructorEmbeddingFunction(SentenceTransformerEmbeddingFunction):
    """INSTRUCTOR-style models: an instruction is prepended but left out of the pooling.

    ``instruction`` prefixes documents, ``query_instruction`` (falling back to
    ``instruction``) prefixes queries; as in INSTRUCTOR, the mean pooling sees
    only the text's own tokens.
    """

    def __init__(
        self,
        model_name: str = "hkunlp/instructor-base",
        *,
        instruction: str | None = None,
        query_instruction: str | None = None,
        device: str = "auto",
        normalize_embeddings: bool = True,
        batch_size: int = DEFAULT_BATCH_SIZE,
        max_batch_tokens: int | None = DEFAULT_MAX_BATCH_TOKENS,
        precision: str = "auto",
        max_seq_length: int | None = None,
        revision: str | None = None,
        on_long: str = "truncate",
    ) -> None:
        super().__init__(
            model_name,
            revision=revision,
            device=device,
            normalize_embeddings=normalize_embeddings,
            batch_size=batch_size,
            max_batch_tokens=max_batch_tokens,
            precision=precision,
            max_seq_length=max_seq_length,
            query_prompt=query_instruction if query_instruction is not None else instruction,
            document_prompt=instruction,
            on_long=on_long,
        )
        self.instruction = instruction
        self.query_instruction = query_instruction

    def _pooling_include_prompt(self) -> bool:
        return False

    def _prompt(self, *, query: bool, prompts: dict[str, str] | None = None) -> dict[str, str]:
        prompt = self.query_prompt if query else self.document_prompt
        return {"prompt": prompt} if prompt else {}

    def get_config(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "instruction": self.instruction,
            "query_instruction": self.query_instruction,
            "device": self.device,
            "normalize_embeddings": self.normalize_embeddings,
            "batch_size": self.batch_size,
            "max_batch_tokens": self.max_batch_tokens,
            "precision": self.requested_precision,
            "max_seq_length": self.max_seq_length,
            "revision": self.revision,
            "on_long": self.on_long,
        }
