"""Jina AI's ``POST /v1/embeddings``: float vectors, a task adapter per request,
at most 2048 inputs per request."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from embedfleet.embedding_functions.base import Documents
from embedfleet.embedding_functions.http import HttpEmbeddingFunction, HttpOptions
from embedfleet.embedding_functions.registry import register
from embedfleet.errors import ConfigError, ProviderError

if TYPE_CHECKING:
    from typing_extensions import Unpack

#: Tasks after which ``embed_query`` sends ``retrieval.query`` instead.
QUERY_TASK = "retrieval.query"
_DOCUMENT_TASKS = (None, "retrieval.passage")
#: Models with task adapters; older ones (v2) refuse a ``task`` field.
_TASK_MODELS = ("jina-embeddings-v3", "jina-embeddings-v4")


@register("jina")
class JinaEmbeddingFunction(HttpEmbeddingFunction):
    """Jina embeddings. ``task`` is sent for documents (nothing when None);
    ``embed_query`` sends ``retrieval.query`` when ``task`` is
    ``retrieval.passage``, or None on a model with task adapters (v3, v4), else
    the configured task. ``dimensions``,
    ``late_chunking`` and ``normalized`` are sent only when set.
    """

    max_inputs_per_request = 2048
    default_api_base = "https://api.jina.ai/v1"

    def __init__(
        self,
        model_name: str = "jina-embeddings-v3",
        *,
        task: str | None = None,
        dimensions: int | None = None,
        late_chunking: bool | None = None,
        normalized: bool | None = None,
        api_key_env_var: str = "JINA_API_KEY",
        **options: Unpack[HttpOptions],
    ) -> None:
        if dimensions is not None and (
            not isinstance(dimensions, int) or isinstance(dimensions, bool) or dimensions < 1
        ):
            raise ConfigError(f"dimensions must be a positive integer, got {dimensions!r}")
        super().__init__(api_key_env_var=api_key_env_var, **options)
        self.model_name = model_name
        self.task = task
        self.dimensions = dimensions
        self.late_chunking = late_chunking
        self.normalized = normalized
        self._dimension = dimensions

    def get_config(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "task": self.task,
            "dimensions": self.dimensions,
            "late_chunking": self.late_chunking,
            "normalized": self.normalized,
            **super().get_config(),
        }

    def request(self, texts: Documents, *, query: bool) -> tuple[str, dict[str, Any]]:
        adapters = self.task is not None or self.model_name.startswith(_TASK_MODELS)
        swap = query and adapters and self.task in _DOCUMENT_TASKS
        task = QUERY_TASK if swap else self.task
        body: dict[str, Any] = {"model": self.model_name, "input": texts, "embedding_type": "float"}
        optional = {
            "task": task,
            "dimensions": self.dimensions,
            "late_chunking": self.late_chunking,
            "normalized": self.normalized,
        }
        body.update({name: value for name, value in optional.items() if value is not None})
        return "embeddings", body

    def vectors(self, payload: Any) -> list[list[float]]:
        try:
            data = sorted(payload["data"], key=lambda item: item["index"])
            return [item["embedding"] for item in data]
        except (KeyError, TypeError) as exc:
            raise ProviderError("Jina answered without data[].embedding") from exc
