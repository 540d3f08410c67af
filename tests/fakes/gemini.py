"""Gemini API: POST /v1beta/models/{model}:batchEmbedContents.

The key travels in ``x-goog-api-key``, which FakeServer does not check (it knows
bearer tokens only): run it with ``api_key=None`` and check the recorded header.
"""

from __future__ import annotations

import re
from functools import cache
from typing import Any

from embedfleet.testing import HashEmbeddingFunction

MAX_REQUESTS = 100
DEFAULT_DIMENSION = 10
POISON_MESSAGE = "Request contains an invalid argument."
_PATH = re.compile(r"^/v1beta/models/([^/:]+):batchEmbedContents$")


@cache
def _vectors(dimension: int) -> HashEmbeddingFunction:
    return HashEmbeddingFunction(dimension=dimension, query_prefix="")


def expected_vectors(
    texts: list[str], task_type: str, dimension: int | None = None
) -> list[list[float]]:
    function = _vectors(dimension or DEFAULT_DIMENSION)
    return [vector.tolist() for vector in function([f"{task_type}|{text}" for text in texts])]


def texts_of(body: Any) -> list[str]:
    return [request["content"]["parts"][0]["text"] for request in body["requests"]]


def kinds_of(body: Any) -> set[str]:
    return {request.get("taskType") for request in body["requests"]}


def _error(code: int, message: str, status: str) -> tuple[int, Any]:
    return code, {"error": {"code": code, "message": message, "status": status}}


def answer(path: str, body: Any) -> tuple[int, Any]:
    match = _PATH.match(path)
    if match is None or not isinstance(body, dict):
        return _error(404, f"Method not found: {path}", "NOT_FOUND")
    requests = body.get("requests")
    if not requests:
        return _error(400, "* BatchEmbedContentsRequest.requests: is required", "INVALID_ARGUMENT")
    if len(requests) > MAX_REQUESTS:
        message = (
            "* BatchEmbedContentsRequest.requests: at most "
            f"{MAX_REQUESTS} requests can be in one batch"
        )
        return _error(400, message, "INVALID_ARGUMENT")
    vectors = []
    for request in requests:
        if request.get("model") != f"models/{match.group(1)}":
            message = "Model names in the requests must match the model in the URL."
            return _error(400, message, "INVALID_ARGUMENT")
        try:
            text = request["content"]["parts"][0]["text"]
        except (KeyError, IndexError, TypeError):
            return _error(400, "* content.parts: is required", "INVALID_ARGUMENT")
        if text == "POISON":
            return _error(400, POISON_MESSAGE, "INVALID_ARGUMENT")
        task_type = request.get("taskType", "TASK_TYPE_UNSPECIFIED")
        dimension = request.get("outputDimensionality")
        vectors.extend(expected_vectors([text], task_type, dimension))
    return 200, {"embeddings": [{"values": vector} for vector in vectors]}
