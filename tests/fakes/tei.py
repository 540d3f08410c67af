"""Hugging Face text-embeddings-inference: POST /embed."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

from embedfleet.testing import HashEmbeddingFunction
from tests.fakes.server import FakeServer

MAX_CLIENT_BATCH_SIZE = 32
POISON_MESSAGE = "input is not allowed"
_vectors = HashEmbeddingFunction(dimension=16, query_prefix="")


def expected_vectors(texts: list[str], kind: str | None = None) -> list[list[float]]:
    return [vector.tolist() for vector in _vectors(texts)]


def texts_of(body: Any) -> list[str]:
    return body["inputs"]


def kinds_of(body: Any) -> set[str | None]:
    return {None}  # no task types: queries and documents are embedded alike


def answer(path: str, body: Any) -> tuple[int, Any]:
    """TEI's documented shapes: a list of vectors, or {"error", "error_type"}."""
    if path != "/embed" or not isinstance(body, dict) or "inputs" not in body:
        return 422, {"error": "missing field `inputs`", "error_type": "Validation"}
    inputs = body["inputs"] if isinstance(body["inputs"], list) else [body["inputs"]]
    if len(inputs) > MAX_CLIENT_BATCH_SIZE:
        message = f"batch size {len(inputs)} > maximum allowed batch size {MAX_CLIENT_BATCH_SIZE}"
        return 413, {"error": message, "error_type": "Validation"}
    if any(text == "POISON" for text in inputs):
        return 400, {"error": POISON_MESSAGE, "error_type": "Validation"}
    return 200, expected_vectors(inputs)


def serving() -> Iterator[FakeServer]:
    """A TEI server on 127.0.0.1 for one test (as a fixture: ``pytest.fixture(serving)``)."""
    server = FakeServer(answer)
    yield server
    server.stop()


def sent_texts(server: FakeServer) -> Counter[str]:
    """How many times each text was sent to ``server``."""
    return Counter(text for request in server.requests for text in request.body["inputs"])
