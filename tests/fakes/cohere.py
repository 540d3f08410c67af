"""Cohere v2: POST /v2/embed."""

from __future__ import annotations

from typing import Any

from embedfleet.testing import HashEmbeddingFunction

MAX_TEXTS = 96
POISON_MESSAGE = "invalid request: text is not allowed"
_vectors = HashEmbeddingFunction(dimension=10, query_prefix="")


def expected_vectors(texts: list[str], input_type: str) -> list[list[float]]:
    return [vector.tolist() for vector in _vectors([f"{input_type}|{text}" for text in texts])]


def texts_of(body: Any) -> list[str]:
    return body["texts"]


def kinds_of(body: Any) -> set[str]:
    return {body["input_type"]}


def answer(path: str, body: Any) -> tuple[int, Any]:
    if path != "/v2/embed" or not isinstance(body, dict):
        return 404, {"message": "not found"}
    texts, input_type = body.get("texts"), body.get("input_type")
    if not texts or not input_type or not body.get("model"):
        return 400, {"message": "texts, input_type and model are required"}
    if len(texts) > MAX_TEXTS:
        return 400, {
            "message": f"invalid request: total number of texts must be at most {MAX_TEXTS}"
        }
    if "POISON" in texts:
        return 400, {"message": POISON_MESSAGE}
    types = body.get("embedding_types") or ["float"]
    return 200, {
        "id": "fake",
        "embeddings": {kind: expected_vectors(texts, input_type) for kind in types},
        "texts": texts,
        "meta": {"billed_units": {"input_tokens": sum(len(t.split()) for t in texts)}},
    }
