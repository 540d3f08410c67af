"""Hugging Face Inference Providers, feature-extraction task:
``POST {api_base}/models/{model}/pipeline/feature-extraction``.

This serves any Hub model without a server of one's own, and Hub models differ:
those without a pooling layer answer one vector per token. Those are mean-pooled
here, so every model gives one vector per text."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from embedfleet.embedding_functions.api.base import HttpEmbeddingFunction, HttpOptions
from embedfleet.embedding_functions.api.transport import ApiRequest
from embedfleet.embedding_functions.base import Documents
from embedfleet.embedding_functions.registry import register
from embedfleet.errors import ProviderError

if TYPE_CHECKING:
    from typing_extensions import Unpack


@register("huggingface")
class HuggingFaceEmbeddingFunction(HttpEmbeddingFunction):
    """A Hub model served by Hugging Face's hf-inference provider (bearer ``HF_TOKEN``).

    Body ``{"inputs": [...], "normalize": bool, "truncate": bool}``; answer: one
    item per input, a vector, or (for models without a pooling layer) one vector
    per token, which is mean-pooled here (and L2-normalized when ``normalize``).
    A 503 "model is currently loading" is retried by the shared layer.
    """

    # Not documented for the router; 32 is conservative, TEI's default
    # --max-client-batch-size, which hf-inference's embedding models run behind.
    max_inputs_per_request = 32
    default_api_base = "https://router.huggingface.co/hf-inference"

    def __init__(
        self,
        model_name: str = "sentence-transformers/all-MiniLM-L6-v2",
        *,
        api_key_env_var: str = "HF_TOKEN",
        normalize: bool = True,
        truncate: bool = True,
        **options: Unpack[HttpOptions],
    ) -> None:
        super().__init__(api_key_env_var=api_key_env_var, **options)
        self.model_name = model_name
        self.normalize = normalize
        self.truncate = truncate

    def get_config(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "normalize": self.normalize,
            "truncate": self.truncate,
            **super().get_config(),
        }

    def build_request(self, texts: Documents, *, query: bool) -> ApiRequest:
        path = f"models/{self.model_name}/pipeline/feature-extraction"
        body = {"inputs": texts, "normalize": self.normalize, "truncate": self.truncate}
        return ApiRequest(path, body)

    def parse_vectors(self, payload: Any) -> list[list[float]]:
        if not isinstance(payload, list):
            raise ProviderError(
                f"Hugging Face answered {type(payload).__name__}, expected a list of vectors"
            )
        return [self._pooled(item, index) for index, item in enumerate(payload)]

    def _pooled(self, item: Any, index: int) -> list[float]:
        """A sentence vector as is; token vectors (2-D or deeper) mean-pooled."""
        if not isinstance(item, list) or not item:
            raise ProviderError(
                f"Hugging Face answered {item!r:.80} for input {index}, expected a vector"
            )
        if not isinstance(item[0], list):
            return item
        tokens = np.asarray(item, dtype=np.float64)
        pooled = tokens.reshape(-1, tokens.shape[-1]).mean(axis=0)
        if self.normalize:
            norm = float(np.linalg.norm(pooled))
            pooled = pooled / norm if norm > 0 else pooled
        return [float(value) for value in pooled]
