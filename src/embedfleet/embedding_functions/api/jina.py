"""Jina AI's ``POST /v1/embeddings``.

Jina's v3 and v4 models carry task adapters, so the task travels with each
request and queries get the retrieval adapter that matches their documents'.
Late chunking is refused rather than passed through: it embeds each input in
the context of the others in its request, and batching here (de-duplicated,
length-sorted, split) would make that context arbitrary. At most 2048 inputs go
in one request."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from embedfleet.embedding_functions.api.base import HttpEmbeddingFunction, HttpOptions
from embedfleet.embedding_functions.api.transport import ApiRequest
from embedfleet.embedding_functions.base import Documents, check_positive_int
from embedfleet.embedding_functions.registry import register
from embedfleet.errors import ConfigError, ProviderError

if TYPE_CHECKING:
    from typing_extensions import Unpack

#: Tasks after which ``embed_query`` sends ``retrieval.query`` instead.
QUERY_TASK = "retrieval.query"
DOCUMENT_TASK = "retrieval.passage"
#: Models with task adapters; older ones (v2) refuse a ``task`` field.
_TASK_MODELS = ("jina-embeddings-v3", "jina-embeddings-v4")


@register("jina")
class JinaEmbeddingFunction(HttpEmbeddingFunction):
    """Jina embeddings. ``task`` is sent with documents; with ``task=None`` a model
    with task adapters (v3, v4) gets ``retrieval.passage`` and older models no task.
    ``embed_query`` sends ``retrieval.query`` in place of ``retrieval.passage``, and
    any other task as configured. ``dimensions`` and ``normalized`` are sent only
    when set; ``truncate`` follows ``on_long``. ``late_chunking=True`` is refused:
    it needs requests made of one document's chunks, in order.
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
        check_positive_int("dimensions", dimensions)
        if late_chunking:
            raise ConfigError(
                "late_chunking=True embeds each chunk in the context of the others sent in the "
                "same request; embedfleet de-duplicates, sorts and splits batches, so that "
                "context would be arbitrary. Send one document's chunks with Jina's API directly."
            )
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

    def build_request(self, texts: Documents, *, query: bool) -> ApiRequest:
        task = self.task
        if task is None and self.model_name.startswith(_TASK_MODELS):
            task = DOCUMENT_TASK  # the retrieval pair, so documents and queries match
        if query and task == DOCUMENT_TASK:
            task = QUERY_TASK
        body: dict[str, Any] = {
            "model": self.model_name,
            "input": texts,
            "embedding_type": "float",
            "truncate": self.on_long == "truncate",  # else Jina refuses over-long texts
        }
        optional = {
            "task": task,
            "dimensions": self.dimensions,
            "late_chunking": self.late_chunking,
            "normalized": self.normalized,
        }
        body.update({name: value for name, value in optional.items() if value is not None})
        return ApiRequest("embeddings", body)

    def parse_vectors(self, payload: Any) -> list[list[float]]:
        try:
            data = sorted(payload["data"], key=lambda item: item["index"])
            return [item["embedding"] for item in data]
        except (KeyError, TypeError) as exc:
            raise ProviderError("Jina answered without data[].embedding") from exc
