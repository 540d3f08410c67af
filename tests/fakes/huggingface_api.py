"""Hugging Face Inference Providers (hf-inference), feature extraction:
POST /hf-inference/models/{model}/pipeline/feature-extraction.

A model whose name contains "token-level" answers one vector per (whitespace)
token of each input, like a model without a pooling layer.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from embedfleet.testing import HashEmbeddingFunction

MAX_INPUTS = 32
POISON_MESSAGE = "Input is not allowed"
_PATH = re.compile(r"^/hf-inference/models/(.+)/pipeline/feature-extraction$")
_vectors = HashEmbeddingFunction(dimension=16, query_prefix="")


def expected_vectors(texts: list[str], kind: str | None = None) -> list[list[float]]:
    return [vector.tolist() for vector in _vectors(texts)]


def token_vectors(text: str) -> list[list[float]]:
    return expected_vectors([f"{index}|{token}" for index, token in enumerate(text.split())])


def expected_pooled(texts: list[str], normalize: bool = True) -> list[list[float]]:
    pooled = []
    for text in texts:
        mean = np.mean(token_vectors(text), axis=0)
        pooled.append((mean / np.linalg.norm(mean) if normalize else mean).tolist())
    return pooled


def texts_of(body: Any) -> list[str]:
    return body["inputs"]


def kinds_of(body: Any) -> set[str | None]:
    return {None}  # no task types: queries and documents are embedded alike


def answer(path: str, body: Any) -> tuple[int, Any]:
    match = _PATH.match(path)
    if match is None:
        return 404, {"error": f"Model {path} does not exist"}
    if not isinstance(body, dict) or "inputs" not in body:
        return 400, {"error": "missing field `inputs`"}
    inputs = body["inputs"] if isinstance(body["inputs"], list) else [body["inputs"]]
    if len(inputs) > MAX_INPUTS:
        return 413, {"error": f"batch size {len(inputs)} > maximum allowed batch size {MAX_INPUTS}"}
    if "POISON" in inputs:
        return 400, {"error": POISON_MESSAGE}
    if "token-level" in match.group(1):
        return 200, [token_vectors(text) for text in inputs]
    return 200, expected_vectors(inputs)
