"""OpenAI's POST /v1/embeddings (also what Azure and compatible servers speak)."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np

from embedfleet.testing import HashEmbeddingFunction

MAX_INPUTS = 2048
POISON_MESSAGE = "input is not allowed"
_vectors = HashEmbeddingFunction(dimension=12, query_prefix="")


def expected_vectors(texts: list[str], kind: str | None = None) -> list[list[float]]:
    return [vector.tolist() for vector in _vectors(texts)]


def texts_of(body: Any) -> list[str]:
    return body["input"]


def kinds_of(body: Any) -> set[str | None]:
    return {None}  # no task types: queries and documents are embedded alike


def refusal(presented: str | None) -> Any:
    """OpenAI's 401, which quotes the key it refused (the real API masks most of it)."""
    key = (presented or "").removeprefix("Bearer ")
    return {
        "error": {
            "message": f"Incorrect API key provided: {key}",
            "type": "invalid_request_error",
            "code": "invalid_api_key",
        }
    }


def answer(path: str, body: Any) -> tuple[int, Any]:
    if not path.split("?")[0].endswith("/embeddings") or not isinstance(body, dict):
        return 404, {"error": {"message": "not found", "type": "invalid_request_error"}}
    inputs = body.get("input")
    inputs = [inputs] if isinstance(inputs, str) else inputs
    if not inputs or "model" not in body:
        return 400, {
            "error": {
                "message": "'input' and 'model' are required",
                "type": "invalid_request_error",
            }
        }
    if len(inputs) > MAX_INPUTS:
        return 400, {
            "error": {"message": f"at most {MAX_INPUTS} inputs", "type": "invalid_request_error"}
        }
    if "POISON" in inputs:
        return 400, {"error": {"message": POISON_MESSAGE, "type": "invalid_request_error"}}
    vectors = expected_vectors(inputs)
    if body.get("encoding_format") == "base64":
        encoded = [base64.b64encode(np.asarray(v, dtype="<f4").tobytes()).decode() for v in vectors]
    else:
        encoded = vectors
    data = [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(encoded)]
    data.reverse()  # the API does not promise order; the index does
    tokens = sum(len(text.split()) for text in inputs)
    return 200, {
        "object": "list",
        "data": data,
        "model": body["model"],
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
