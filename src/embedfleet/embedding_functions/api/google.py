"""Google's Gemini API ``POST /models/{model}:batchEmbedContents``.

Gemini has no body for a list of texts: a batch is a list of sub-requests, one
per text, each naming the model and the task type it is embedded for (so
documents and queries of one retrieval setup match), at most 100 per call. A bad
key comes back as a 400, which is why this provider recognises it by reason.

Gemini sends no rate-limit headers; a 429 RESOURCE_EXHAUSTED says in its body how
long to wait (``google.rpc.RetryInfo.retryDelay``) and which quota ran out
(``google.rpc.QuotaFailure``, with its per-minute ``quotaValue`` when given): both
are read here, so the quota waits as asked and paces to the stated limit."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from embedfleet.embedding_functions.api.base import HttpEmbeddingFunction, HttpOptions
from embedfleet.embedding_functions.api.retry import duration
from embedfleet.embedding_functions.api.transport import ApiRequest, HttpFailure
from embedfleet.embedding_functions.base import Documents, check_positive_int
from embedfleet.embedding_functions.registry import register
from embedfleet.errors import ConfigError, ProviderError
from embedfleet.quota import AdvertisedLimits

if TYPE_CHECKING:
    from typing_extensions import Unpack

TASK_TYPES = (
    "TASK_TYPE_UNSPECIFIED",
    "RETRIEVAL_QUERY",
    "RETRIEVAL_DOCUMENT",
    "SEMANTIC_SIMILARITY",
    "CLASSIFICATION",
    "CLUSTERING",
    "QUESTION_ANSWERING",
    "FACT_VERIFICATION",
    "CODE_RETRIEVAL_QUERY",
)


@register("google_generative_ai")
class GoogleGenerativeAiEmbeddingFunction(HttpEmbeddingFunction):
    """Gemini embeddings. ``task_type`` is used for documents (default
    ``RETRIEVAL_DOCUMENT``); ``embed_query`` sends ``RETRIEVAL_QUERY`` in its place,
    and any other task type for both. ``dimension`` is sent as
    ``outputDimensionality`` when set. The key goes in ``x-goog-api-key``.
    """

    max_inputs_per_request = 100
    default_api_base = "https://generativelanguage.googleapis.com/v1beta"

    def __init__(
        self,
        model_name: str = "gemini-embedding-001",
        *,
        task_type: str = "RETRIEVAL_DOCUMENT",
        dimension: int | None = None,
        api_key_env_var: str = "GEMINI_API_KEY",
        **options: Unpack[HttpOptions],
    ) -> None:
        if task_type not in TASK_TYPES:
            raise ConfigError(f"task_type must be one of {TASK_TYPES}, got {task_type!r}")
        check_positive_int("dimension", dimension)
        super().__init__(api_key_env_var=api_key_env_var, **options)
        self.model_name = model_name
        self.task_type = task_type
        self.output_dimensionality = dimension
        self._dimension = dimension

    def get_config(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "task_type": self.task_type,
            "dimension": self.output_dimensionality,
            **super().get_config(),
        }

    def refused_credentials(self, status: int, detail: str) -> bool:
        """Google answers a bad key with 400 INVALID_ARGUMENT, reason API_KEY_INVALID."""
        return status == 400 and "API_KEY_INVALID" in detail

    def server_wait(self, failure: HttpFailure) -> float | None:
        """Retry-After if sent, else a 429's ``RetryInfo.retryDelay`` ("26s")."""
        wait = super().server_wait(failure)
        if wait is None and failure.status == 429:
            for item in _error_details(failure.detail):
                if str(item.get("@type", "")).endswith("google.rpc.RetryInfo"):
                    wait = duration(str(item.get("retryDelay", "")))
        return wait

    def advertised_limits(
        self, headers: Any, failure: HttpFailure | None = None
    ) -> AdvertisedLimits | None:
        """A 429's ``QuotaFailure`` violations of per-minute request or token quotas that
        state their ``quotaValue`` (per-day ones are quotas to wait out, not rates)."""
        if failure is None or failure.status != 429:
            return super().advertised_limits(headers)
        requests = tokens = None
        for item in _error_details(failure.detail):
            for violation in item.get("violations") or []:
                quota_id = str(violation.get("quotaId", ""))
                try:
                    value = float(violation["quotaValue"])
                except (KeyError, TypeError, ValueError):
                    continue
                if "PerMinute" not in quota_id or value <= 0:
                    continue
                if "Token" in quota_id:
                    tokens = value if tokens is None else min(tokens, value)
                elif "Request" in quota_id:
                    requests = value if requests is None else min(requests, value)
        limits = AdvertisedLimits(requests, tokens)
        return limits if limits else super().advertised_limits(headers)

    def headers(self) -> dict[str, str]:
        key = self.api_key()
        return {"x-goog-api-key": key} if key else {}

    def build_request(self, texts: Documents, *, query: bool) -> ApiRequest:
        model = self.model_name.removeprefix("models/")
        task_type = self.task_type
        if query and task_type == "RETRIEVAL_DOCUMENT":
            task_type = "RETRIEVAL_QUERY"
        extra = {}
        if self.output_dimensionality is not None:
            extra["outputDimensionality"] = self.output_dimensionality
        requests = [
            {
                "model": f"models/{model}",
                "content": {"parts": [{"text": text}]},
                "taskType": task_type,
                **extra,
            }
            for text in texts
        ]
        return ApiRequest(f"models/{model}:batchEmbedContents", {"requests": requests})

    def parse_vectors(self, payload: Any) -> list[list[float]]:
        try:
            return [embedding["values"] for embedding in payload["embeddings"]]
        except (KeyError, TypeError) as exc:
            raise ProviderError("Gemini answered without embeddings[].values") from exc


def _error_details(detail: str) -> list[dict[str, Any]]:
    """The ``error.details`` of a Google error body (or of the first of a list of them)."""
    try:
        body = json.loads(detail)
    except ValueError:
        return []
    if isinstance(body, list) and body:
        body = body[0]
    error = body.get("error") if isinstance(body, dict) else None
    details = error.get("details") if isinstance(error, dict) else None
    return [item for item in details if isinstance(item, dict)] if isinstance(details, list) else []
