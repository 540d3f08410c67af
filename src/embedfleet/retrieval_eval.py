"""Document-level retrieval over long documents, with and without chunking.

The measure behind the chunking section of ``docs/benchmarks.md``,
``scripts/bench_chunking.py``, ``notebooks/compare_models.ipynb`` and
``tests/test_chunking_retrieval.py``, on the labelled set in ``data/long_retrieval/``
(long natural documents; every query's answer lies in the second half of its document):

* **whole**: one vector per document, as a job without ``[chunking]`` makes it (the model
  reads the first ``max_seq_length`` tokens; the rest is truncated);
* **chunked**: one vector per chunk (:func:`embedfleet.job.chunking.chunk`); a document
  scores as its best chunk.

recall@k is the share of a query's relevant documents among the top ``k`` *distinct*
documents, averaged over the queries.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from embedfleet.embedding_functions.base import EmbeddingFunction
from embedfleet.job.chunking import chunk


@dataclass
class LabelledSet:
    """Documents by id, and queries (``text``, ``relevant`` document ids)."""

    documents: dict[str, str]
    queries: list[dict[str, Any]]


@dataclass
class RetrievalResult:
    recall: dict[int, float]  # k -> recall@k
    vectors: int  # document-side vectors embedded (documents or chunks)
    seconds: float  # embedding the documents
    chunk_seconds: float = 0.0  # cutting them into chunks
    ranks: list[list[str]] = field(default_factory=list)  # per query, documents best first


def load_long_retrieval(folder: str | Path) -> LabelledSet:
    """``docs/<id>.md`` (the id is the file name) and ``queries.jsonl``."""
    folder = Path(folder)
    documents = {
        path.stem: path.read_text(encoding="utf-8") for path in sorted(folder.glob("docs/*.md"))
    }
    lines = (folder / "queries.jsonl").read_text(encoding="utf-8").splitlines()
    return LabelledSet(documents, [json.loads(line) for line in lines if line.strip()])


def evaluate(
    function: EmbeddingFunction,
    labelled: LabelledSet,
    *,
    chunking: dict[str, Any] | None = None,
    ks: tuple[int, ...] = (1, 5),
) -> RetrievalResult:
    """recall@k of ``function`` on ``labelled``: documents whole (``chunking=None``) or cut
    by :func:`chunk` with these keyword arguments (``{}``: the defaults)."""
    ids = list(labelled.documents)
    texts = [labelled.documents[id_] for id_ in ids]
    owners, pieces, chunk_seconds = list(range(len(ids))), texts, 0.0
    if chunking is not None:
        started = time.perf_counter()
        found = chunk(texts, function, **chunking)
        chunk_seconds = time.perf_counter() - started
        owners = [number for number, chunks in enumerate(found) for _ in chunks]
        pieces = [piece.text for chunks in found for piece in chunks]
    started = time.perf_counter()
    vectors = np.stack(function(pieces))
    seconds = time.perf_counter() - started
    queries = np.stack(function.embed_query([query["text"] for query in labelled.queries]))
    scores = _unit(queries) @ _unit(vectors).T  # queries x pieces
    best = np.full((len(queries), len(ids)), -np.inf)
    np.maximum.at(best.T, np.asarray(owners), scores.T)  # a document: its best piece
    ranks = [[ids[index] for index in np.argsort(-row, kind="stable")] for row in best]
    recall = {}
    for k in ks:
        hits = [
            len(set(query["relevant"]) & set(ranked[:k])) / len(query["relevant"])
            for query, ranked in zip(labelled.queries, ranks, strict=True)
        ]
        recall[k] = float(np.mean(hits))
    return RetrievalResult(recall, len(pieces), seconds, chunk_seconds, ranks)


def _unit(matrix: np.ndarray) -> np.ndarray:
    return matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)
