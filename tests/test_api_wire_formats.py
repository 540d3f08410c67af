"""Each provider's documented request and answer, against its fake on 127.0.0.1:
where requests go, what their bodies hold, task types for documents and queries,
and how vectors are read back (in input order, decoded, pooled)."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("httpx")

from embedfleet.embedding_functions import (
    CohereEmbeddingFunction,
    GoogleGenerativeAiEmbeddingFunction,
    HuggingFaceEmbeddingFunction,
    JinaEmbeddingFunction,
)
from embedfleet.errors import ConfigError, ProviderError
from tests.fakes import gemini, huggingface_api, jina, openai_api, tei
from tests.fakes.providers import (  # noqa: F401 - fixtures
    CANARY,
    PROVIDERS,
    TEXTS,
    each_provider,
    make_fixture,
    only,
    server_fixture,
)
from tests.fakes.server import Fault


# ---------------------------------------------------------------- every provider
@each_provider
def test_vectors_come_back_in_input_order(provider, make, server):
    vectors = make()(TEXTS[:7])
    np.testing.assert_allclose(np.stack(vectors), provider.expected_vectors(TEXTS[:7]), rtol=1e-6)
    (request,) = server.requests
    assert request.path == provider.path
    assert sorted(provider.fake.texts_of(request.body)) == sorted(TEXTS[:7])


@each_provider
def test_documents_and_queries_send_their_task(provider, make, server):
    ef = make()
    documents, queries = ef(TEXTS[:3]), ef.embed_query(TEXTS[:3])
    expected = provider.expected_vectors(TEXTS[:3])
    np.testing.assert_allclose(np.stack(documents), expected, rtol=1e-6)
    expected = provider.expected_vectors(TEXTS[:3], query=True)
    np.testing.assert_allclose(np.stack(queries), expected, rtol=1e-6)
    sent = [provider.fake.kinds_of(request.body) for request in server.requests]
    assert sent == [{provider.document_kind}, {provider.query_kind}]


@each_provider
def test_a_wrong_number_of_vectors_is_an_error_not_a_gap(provider, make, server):
    ef = make()
    _, short_answer = provider.fake.answer(provider.path, ef.build_request(["a"], query=False).body)
    server.faults.append(Fault(200, json.dumps(short_answer).encode()))
    with pytest.raises(ProviderError, match="got 1 vectors for 2 texts"):
        ef(["a", "b"])


# ---------------------------------------------------------------- TEI
@only("huggingface_server")
def test_tei_sends_normalize_and_truncate_with_the_bearer_key(provider, make, server):
    vectors = make()(TEXTS)
    np.testing.assert_allclose(np.stack(vectors), tei.expected_vectors(TEXTS), rtol=1e-6)
    first = server.requests[0]
    assert first.path == "/embed" and first.headers["authorization"] == f"Bearer {CANARY}"
    assert first.body["normalize"] is True and first.body["truncate"] is True


# ---------------------------------------------------------------- OpenAI, through the SDK
@only("openai")
@pytest.mark.parametrize("encoding_format", ["base64", "float"])
def test_openai_embeds_over_the_sdk_in_both_encodings(provider, make, server, encoding_format):
    ef = make(encoding_format=encoding_format, dimensions=12)
    vectors = ef(TEXTS[:5])
    np.testing.assert_allclose(np.stack(vectors), openai_api.expected_vectors(TEXTS[:5]), rtol=1e-6)
    request = server.requests[0]
    assert request.path == "/v1/embeddings"
    assert request.headers["authorization"] == f"Bearer {CANARY}"
    assert request.body["model"] == "text-embedding-3-small"
    assert request.body["encoding_format"] == encoding_format and request.body["dimensions"] == 12


@only("azure")
def test_azure_requests_go_to_the_deployment_with_the_api_version(provider, make, server):
    ef = make()
    assert len(ef(["a", "b"])) == 2
    request = server.requests[0]
    assert request.path.startswith("/openai/deployments/my-embeddings/embeddings")
    assert "api-version=2024-10-21" in request.path
    assert request.headers["api-key"] == CANARY  # Azure's header, not a bearer token
    assert request.body["model"] == "my-embeddings"


# ---------------------------------------------------------------- Cohere v2
@only("cohere")
def test_cohere_sends_the_model_float_embeddings_and_truncate(provider, make, server):
    make(batch_size=500)(TEXTS[:4])
    first = server.requests[0].body
    assert first["model"] == "embed-v4.0" and first["embedding_types"] == ["float"]
    assert first["truncate"] == "END"


def test_cohere_rejects_an_unknown_truncate():
    with pytest.raises(ConfigError, match="truncate must be one of"):
        CohereEmbeddingFunction(truncate="MIDDLE", api_key="k")


# ---------------------------------------------------------------- Gemini
@only("gemini")
def test_gemini_sends_one_sub_request_per_text_with_the_model(provider, make, server):
    ef = make(model_name="models/gemini-embedding-001")
    ef(["a", "b"])
    body = server.requests[0].body
    assert server.requests[0].path == PROVIDERS["gemini"].path
    assert body["requests"][1] == {
        "model": "models/gemini-embedding-001",
        "content": {"parts": [{"text": "b"}]},
        "taskType": "RETRIEVAL_DOCUMENT",
    }


@only("gemini")
def test_gemini_dimension_is_sent_as_output_dimensionality(provider, make, server):
    ef = make(dimension=6)
    vectors = ef(["a", "b"])
    assert ef.dimension == 6 and ef.get_config()["dimension"] == 6
    np.testing.assert_allclose(
        np.stack(vectors), gemini.expected_vectors(["a", "b"], "RETRIEVAL_DOCUMENT", 6), rtol=1e-6
    )
    assert {r["outputDimensionality"] for r in server.requests[0].body["requests"]} == {6}


@only("gemini")
def test_gemini_other_task_types_are_kept_for_queries(provider, make, server):
    ef = make(task_type="SEMANTIC_SIMILARITY")
    ef(["a"])
    ef.embed_query(["a"])
    sent = [gemini.kinds_of(request.body) for request in server.requests]
    assert sent == [{"SEMANTIC_SIMILARITY"}, {"SEMANTIC_SIMILARITY"}]


def test_gemini_rejects_an_unknown_task_type_and_bad_dimension():
    with pytest.raises(ConfigError, match="task_type must be one of"):
        GoogleGenerativeAiEmbeddingFunction(task_type="retrieval_document")
    with pytest.raises(ConfigError, match="dimension must be a positive integer"):
        GoogleGenerativeAiEmbeddingFunction(dimension=0)


# ---------------------------------------------------------------- Hugging Face
@only("huggingface")
@pytest.mark.parametrize("normalize", [True, False])
def test_huggingface_mean_pools_token_level_output(provider, make, server, normalize):
    ef = make(model_name="acme/token-level-encoder", normalize=normalize)
    texts = ["one two three", "four", "five six"]
    vectors = ef(texts)
    expected = huggingface_api.expected_pooled(texts, normalize=normalize)
    np.testing.assert_allclose(np.stack(vectors), expected, rtol=1e-5)
    request = server.requests[0]
    assert (
        request.path == "/hf-inference/models/acme/token-level-encoder/pipeline/feature-extraction"
    )
    assert sorted(request.body.pop("inputs")) == sorted(texts)  # sent sorted by length
    assert request.body == {"normalize": normalize, "truncate": True}


def test_huggingface_token_level_output_of_one_input_is_not_read_as_many():
    ef = HuggingFaceEmbeddingFunction(api_key="k")
    tokens = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]
    (vector,) = ef.parse_vectors([tokens])
    np.testing.assert_allclose(vector, np.array([2 / 3, 2 / 3]) / np.linalg.norm([2 / 3, 2 / 3]))
    assert ef.parse_vectors([[0.5, 0.5]]) == [[0.5, 0.5]]
    with pytest.raises(ProviderError, match="expected a list of vectors"):
        ef.parse_vectors({"error": "nope"})


# ---------------------------------------------------------------- Jina
OPTIONAL = ("task", "dimensions", "late_chunking", "normalized")


@only("jina")
def test_jina_sends_optional_fields_only_when_set(provider, make, server):
    make(task=None, model_name="jina-embeddings-v2-base-en")(["a"])
    body = server.requests[0].body
    assert body == {
        "model": "jina-embeddings-v2-base-en",
        "input": ["a"],
        "embedding_type": "float",
        "truncate": True,
    }
    ef = make(task="text-matching", dimensions=8, late_chunking=False, normalized=False)
    vectors = ef(["a", "b"])
    body = server.requests[1].body
    assert {name: body[name] for name in OPTIONAL} == {
        "task": "text-matching",
        "dimensions": 8,
        "late_chunking": False,
        "normalized": False,
    }
    assert ef.dimension == 8
    np.testing.assert_allclose(
        np.stack(vectors), jina.expected_vectors(["a", "b"], "text-matching", 8), rtol=1e-6
    )


@only("jina")
@pytest.mark.parametrize(
    ("task", "document_task", "query_task"),
    [
        (None, "retrieval.passage", "retrieval.query"),
        ("retrieval.passage", "retrieval.passage", "retrieval.query"),
        ("text-matching", "text-matching", "text-matching"),
    ],
)
def test_jina_query_task(provider, make, server, task, document_task, query_task):
    ef = make(task=task)
    ef(["a"])
    ef.embed_query(["a"])
    sent = [jina.kinds_of(request.body) for request in server.requests]
    assert sent == [{document_task}, {query_task}]


def test_jina_refuses_late_chunking_it_cannot_honour():
    with pytest.raises(ConfigError, match="late_chunking"):
        JinaEmbeddingFunction(late_chunking=True, api_key="x")


@only("jina")
def test_jina_models_without_task_adapters_get_no_task(provider, make, server):
    ef = make(model_name="jina-embeddings-v2-base-en", task=None)
    ef.embed_query(["a"])
    assert "task" not in server.requests[0].body


@only("jina")
def test_jina_asks_to_truncate_only_when_on_long_says_so(provider, make, server):
    make(on_long="error")(["a"])
    assert server.requests[0].body["truncate"] is False
