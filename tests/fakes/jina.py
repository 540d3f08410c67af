"""Jina AI: POST /v1/embeddings."""

from __future__ import annotations

from functools import cache
from typing import Any

from embedfleet.testing import HashEmbeddingFunction

MAX_INPUTS = 2048
DEFAULT_DIMENSION = 12
POISON_MESSAGE = "Input is not allowed"


@cache
def _vectors(dimension: int) -> HashEmbeddingFunction:
    return HashEmbeddingFunction(dimension=dimension, query_prefix="")


def expected_vectors(
    texts: list[str], task: str | None, dimensions: int | None = None
) -> list[list[float]]:
    function = _vectors(dimensions or DEFAULT_DIMENSION)
    return [vector.tolist() for vector in function([f"{task}|{text}" for text in texts])]


def texts_of(body: Any) -> list[str]:
    return body["input"]


def kinds_of(body: Any) -> set[str | None]:
    return {body.get("task")}


def answer(path: str, body: Any) -> tuple[int, Any]:
    if path != "/v1/embeddings" or not isinstance(body, dict):
        return 404, {"detail": "Not Found"}
    inputs = body.get("input")
    inputs = [inputs] if isinstance(inputs, str) else inputs
    if not inputs or not body.get("model"):
        return 400, {"detail": "'input' and 'model' are required"}
    if len(inputs) > MAX_INPUTS:
        return 400, {"detail": f"Too many inputs: at most {MAX_INPUTS} per request"}
    if "POISON" in inputs:
        return 400, {"detail": POISON_MESSAGE}
    if body.get("embedding_type", "float") != "float":
        return 400, {"detail": "this fake answers float embeddings only"}
    vectors = expected_vectors(inputs, body.get("task"), body.get("dimensions"))
    data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)]
    data.reverse()  # the index, not the position, says which input a vector is for
    tokens = sum(len(text.split()) for text in inputs)
    return 200, {
        "model": body["model"],
        "object": "list",
        "usage": {"total_tokens": tokens, "prompt_tokens": tokens},
        "data": data,
    }
