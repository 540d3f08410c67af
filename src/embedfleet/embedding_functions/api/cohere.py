"""Cohere's v2 ``POST /embed``.

Cohere's models embed a text differently depending on what it is for, so the
input type travels with every request: ``search_document`` for documents,
``search_query`` for queries, or whatever the caller configured. Vectors are
asked for as floats, the one type every caller can use; at most 96 texts go in
one request."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from embedfleet.embedding_functions.api.base import HttpEmbeddingFunction, HttpOptions
from embedfleet.embedding_functions.api.transport import ApiRequest
from embedfleet.embedding_functions.base import Documents
from embedfleet.embedding_functions.registry import register
from embedfleet.errors import ConfigError, ProviderError

if TYPE_CHECKING:
    from typing_extensions import Unpack

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
        **options: Unpack[HttpOptions],
    ) -> None:
        if truncate not in TRUNCATE:
            raise ConfigError(f"truncate must be one of {TRUNCATE}, got {truncate!r}")
        super().__init__(api_key_env_var=api_key_env_var, **options)
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

    def build_request(self, texts: Documents, *, query: bool) -> ApiRequest:
        body = {
            "model": self.model_name,
            "texts": texts,
            "input_type": "search_query" if query else self.input_type,
            "embedding_types": ["float"],
            "truncate": self.truncate,
        }
        return ApiRequest("embed", body)

    def parse_vectors(self, payload: Any) -> list[list[float]]:
        try:
            return payload["embeddings"]["float"]
        except (KeyError, TypeError) as exc:
            raise ProviderError("Cohere answered without embeddings.float") from exc
