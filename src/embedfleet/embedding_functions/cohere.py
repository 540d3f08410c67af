"""Cohere's v2 ``POST /embed``: ``search_document`` for documents, ``search_query``
for queries, float vectors, at most 96 texts per request."""

from __future__ import annotations

from typing import Any

from embedfleet.embedding_functions.base import DEFAULT_BATCH_SIZE, Documents
from embedfleet.embedding_functions.http import HttpEmbeddingFunction
from embedfleet.embedding_functions.registry import register
from embedfleet.errors import ConfigError, ProviderError

TRUNCATE = ("NONE", "START", "END")


@register("cohere")
class CohereEmbeddingFunction(HttpEmbeddingFunction):
    """Cohere embed v2. ``input_type`` is used for documents (default
    ``search_document``); ``embed_query`` always sends ``search_query``."""

    max_inputs_per_request = 96
    default_api_base = "https://api.cohere.com/v2"

    def __init__(
        self,
        model_name: str = "embed-v4.0",
        *,
        input_type: str = "search_document",
        truncate: str = "END",
        api_key_env_var: str = "COHERE_API_KEY",
        api_key: str | None = None,
        api_base: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 5,
        retry_backoff_seconds: float = 0.5,
        batch_size: int = DEFAULT_BATCH_SIZE,
        on_long: str = "truncate",
    ) -> None:
        if truncate not in TRUNCATE:
            raise ConfigError(f"truncate must be one of {TRUNCATE}, got {truncate!r}")
        super().__init__(
            api_base=api_base,
            api_key_env_var=api_key_env_var,
            api_key=api_key,
            timeout=timeout,
            max_retries=max_retries,
            retry_backoff_seconds=retry_backoff_seconds,
            batch_size=batch_size,
            on_long=on_long,
        )
        self.model_name = model_name
        self.input_type = input_type
        self.truncate = truncate

    def get_config(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "input_type": self.input_type,
            "truncate": self.truncate,
            **super().get_config(),
        }

    def request(self, texts: Documents, *, query: bool) -> tuple[str, dict[str, Any]]:
        return "embed", {
            "model": self.model_name,
            "texts": texts,
            "input_type": "search_query" if query else self.input_type,
            "embedding_types": ["float"],
            "truncate": self.truncate,
        }

    def vectors(self, payload: Any) -> list[list[float]]:
        try:
            return payload["embeddings"]["float"]
        except (KeyError, TypeError) as exc:
            raise ProviderError("Cohere answered without embeddings.float") from exc
