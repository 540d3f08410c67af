"""The shipped long-document set, and what chunking buys on it: with chunks, more queries
find their document among the top five than with one (truncated) vector per document."""

from __future__ import annotations

import pytest

from embedfleet.embedding_functions import DefaultEmbeddingFunction
from embedfleet.retrieval_eval import evaluate, load_long_retrieval


@pytest.fixture(scope="module")
def labelled(repo_root):
    return load_long_retrieval(repo_root / "data" / "long_retrieval")


def test_the_set_is_long_natural_documents_with_answers_in_their_second_half(labelled):
    assert 15 <= len(labelled.documents) <= 30 and len(labelled.queries) >= 30
    assert all(1500 <= len(text.split()) <= 5000 for text in labelled.documents.values())
    for query in labelled.queries:
        [relevant] = query["relevant"]
        text = labelled.documents[relevant]
        assert text.count(query["evidence"]) == 1, query["id"]
        assert text.index(query["evidence"]) > len(text) / 2, query["id"]


@pytest.mark.real_model
def test_chunked_documents_are_found_more_often_than_truncated_ones(labelled):
    function = DefaultEmbeddingFunction(precision="fp32")
    whole = evaluate(function, labelled, ks=(5,))
    chunked = evaluate(function, labelled, chunking={}, ks=(5,))
    assert chunked.vectors > 5 * whole.vectors
    assert chunked.recall[5] > whole.recall[5]
    assert chunked.recall[5] >= 0.9
