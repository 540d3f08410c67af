"""A Hugging Face text-embeddings-inference (TEI) server: ``POST /embed``.

For teams that run their own server: it has no public default, so the URL is the
full endpoint, and a key is optional (TEI runs without one unless given
``--api-key``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from embedfleet.embedding_functions.api.base import HttpEmbeddingFunction, HttpOptions
from embedfleet.embedding_functions.api.transport import ApiRequest
from embedfleet.embedding_functions.base import Documents
from embedfleet.embedding_functions.registry import register
from embedfleet.errors import ConfigError, ProviderError

if TYPE_CHECKING:
    from typing_extensions import Unpack


@register("huggingface_server")
class HuggingFaceEmbeddingServer(HttpEmbeddingFunction):
    """TEI's native route. ``url`` is the full endpoint (``http://host:8080/embed``).

    Body ``{"inputs": [...], "normalize": bool, "truncate": bool}``; answer: one
    list of floats per input. TEI's default ``--max-client-batch-size`` is 32.
    """

    max_inputs_per_request = 32

    def __init__(
        self,
        url: str,
        *,
        api_key_env_var: str | None = None,
        normalize: bool = True,
        truncate: bool = True,
        **options: Unpack[HttpOptions],
    ) -> None:
        if "api_base" in options:
            raise ConfigError(
                "HuggingFaceEmbeddingServer takes url (the full endpoint), not api_base"
            )
        options.setdefault("batch_size", self.max_inputs_per_request)
        super().__init__(api_base=url, api_key_env_var=api_key_env_var, **options)
        self.normalize = normalize
        self.truncate = truncate

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        return {
            "url": config.pop("api_base"),
            **config,
            "normalize": self.normalize,
            "truncate": self.truncate,
        }

    def build_request(self, texts: Documents, *, query: bool) -> ApiRequest:
        body = {"inputs": texts, "normalize": self.normalize, "truncate": self.truncate}
        return ApiRequest("", body)

    def parse_vectors(self, payload: Any) -> list[list[float]]:
        if not isinstance(payload, list):
            raise ProviderError(
                f"TEI answered {type(payload).__name__}, expected a list of vectors"
            )
        return payload
