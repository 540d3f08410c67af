"""Gemini, Hugging Face Inference Providers and Jina over real HTTP against fakes on
127.0.0.1: wire format, task types for documents and queries, splitting at the
documented limit, keys, config round-trips and typed errors."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import numpy as np
import pytest

pytest.importorskip("httpx")

from embedfleet.embedding_functions import (
    GoogleGenerativeAiEmbeddingFunction,
    HuggingFaceEmbeddingFunction,
    JinaEmbeddingFunction,
    build,
)
from embedfleet.errors import AuthenticationError, BadRequestError, ConfigError, ProviderError
from tests.fakes import gemini, huggingface_api, jina
from tests.fakes.server import FakeServer, Fault

CANARY = "key-canary-5d1c-never-print-me"
TEXTS = [f"text number {index} " * (1 + index % 3) for index in range(7)]


@dataclass
class Case:
    """One provider: its class, its fake and how it speaks."""

    cls: type
    fake: ModuleType
    registry_name: str
    env_var: str
    base_path: str  # appended to the fake's URL to make api_base
    path: str  # the path every request goes to
    limit: int  # documented inputs per request
    auth_header: str
    auth_value: str  # with {key}
    document_kind: Any
    query_kind: Any
    kwargs: dict[str, Any] = field(default_factory=dict)
    checks_bearer: bool = True  # FakeServer checks bearer tokens only


CASES = {
    "gemini": Case(
        GoogleGenerativeAiEmbeddingFunction,
        gemini,
        "google_generative_ai",
        "GEMINI_TEST_KEY",
        "/v1beta",
        "/v1beta/models/gemini-embedding-001:batchEmbedContents",
        100,
        "x-goog-api-key",
        "{key}",
        "RETRIEVAL_DOCUMENT",
        "RETRIEVAL_QUERY",
        checks_bearer=False,
    ),
    "huggingface": Case(
        HuggingFaceEmbeddingFunction,
        huggingface_api,
        "huggingface",
        "HF_TEST_TOKEN",
        "/hf-inference",
        "/hf-inference/models/sentence-transformers/all-MiniLM-L6-v2/pipeline/feature-extraction",
        32,
        "authorization",
        "Bearer {key}",
        None,
        None,
    ),
    "jina": Case(
        JinaEmbeddingFunction,
        jina,
        "jina",
        "JINA_TEST_KEY",
        "/v1",
        "/v1/embeddings",
        2048,
        "authorization",
        "Bearer {key}",
        "retrieval.passage",
        "retrieval.query",
        kwargs={"task": "retrieval.passage"},
    ),
}


@pytest.fixture(params=sorted(CASES))
def case(request) -> Case:
    return CASES[request.param]


@pytest.fixture
def server(case):
    server = FakeServer(case.fake.answer, api_key=CANARY if case.checks_bearer else None)
    yield server
    server.stop()


@pytest.fixture
def make(case, server, monkeypatch):
    monkeypatch.setenv(case.env_var, CANARY)

    def make(**options):
        options = {**case.kwargs, "retry_backoff_seconds": 0.01, **options}
        return case.cls(
            api_base=f"{server.url}{case.base_path}", api_key_env_var=case.env_var, **options
        )

    return make


def test_vectors_come_back_in_order(case, make, server):
    vectors = make()(TEXTS)
    expected = case.fake.expected_vectors(TEXTS, case.document_kind)
    np.testing.assert_allclose(np.stack(vectors), expected, rtol=1e-6)
    (request,) = server.requests
    assert request.path == case.path and sorted(case.fake.texts_of(request.body)) == sorted(TEXTS)


def test_documents_and_queries_send_their_task(case, make, server):
    ef = make()
    documents, queries = ef(TEXTS[:3]), ef.embed_query(TEXTS[:3])
    expected = case.fake.expected_vectors(TEXTS[:3], case.document_kind)
    np.testing.assert_allclose(np.stack(documents), expected, rtol=1e-6)
    expected = case.fake.expected_vectors(TEXTS[:3], case.query_kind)
    np.testing.assert_allclose(np.stack(queries), expected, rtol=1e-6)
    sent = [case.fake.kinds_of(request.body) for request in server.requests]
    assert sent == [{case.document_kind}, {case.query_kind}]


def test_requests_are_split_at_the_documented_limit(case, make, server):
    texts = [f"t{index}" for index in range(2 * case.limit + 5)]
    vectors = make(batch_size=len(texts), max_concurrency=1)(texts)
    expected = case.fake.expected_vectors(texts, case.document_kind)
    np.testing.assert_allclose(np.stack(vectors), expected, rtol=1e-6)
    sizes = [len(case.fake.texts_of(request.body)) for request in server.requests]
    assert sizes == [case.limit, case.limit, 5]


def test_one_request_over_the_limit_is_refused_by_the_fake(case):
    texts = [f"t{index}" for index in range(case.limit + 1)]
    ef = case.cls(api_key="k")
    assert case.fake.answer(case.path, ef.request(texts, query=False)[1])[0] in (400, 413)
    assert case.fake.answer(case.path, ef.request(texts[:-1], query=False)[1])[0] == 200


def test_the_key_comes_from_the_env_var_in_the_providers_header(case, make, server):
    make()(["a"])
    headers = server.requests[0].headers
    assert headers[case.auth_header] == case.auth_value.format(key=CANARY)
    if case.auth_header != "authorization":
        assert "authorization" not in headers


def test_a_missing_env_var_is_a_config_error_naming_it(case, server, monkeypatch):
    monkeypatch.delenv("EMBEDFLEET_MISSING_KEY", raising=False)
    ef = case.cls(
        api_base=f"{server.url}{case.base_path}", api_key_env_var="EMBEDFLEET_MISSING_KEY"
    )
    with pytest.raises(ConfigError, match="set the environment variable EMBEDFLEET_MISSING_KEY"):
        ef(["a"])
    assert server.requests == []


def test_the_default_env_var_and_api_base(case):
    ef = case.cls()
    config = ef.get_config()
    assert config["api_key_env_var"] == case.cls.__init__.__kwdefaults__["api_key_env_var"]
    assert config["api_base"] == case.cls.default_api_base.rstrip("/")
    assert config["api_base"].startswith("https://")


def test_config_round_trips_through_build_without_the_key(case, make, server):
    ef = make()
    config = json.loads(json.dumps(ef.get_config()))
    assert CANARY not in json.dumps(config) and CANARY not in repr(ef)
    assert not [key for key in config if "key" in key.lower() and not key.endswith("_env_var")]
    rebuilt = build(case.registry_name, config)
    assert type(rebuilt) is case.cls and rebuilt.get_config() == ef.get_config()
    np.testing.assert_array_equal(np.stack(rebuilt(["x", "y"])), np.stack(ef(["x", "y"])))


def test_bad_input_is_a_bad_request_error_with_the_providers_message(case, make, server):
    with pytest.raises(BadRequestError, match=r"refused the input \(400\)") as caught:
        make()(["fine", "POISON"])
    assert case.fake.POISON_MESSAGE in str(caught.value) and caught.value.status == 400
    assert len(server.requests) == 1


def test_a_wrong_number_of_vectors_is_an_error(case, make, server):
    ef = make()
    _, short_answer = case.fake.answer(case.path, ef.request(["a"], query=False)[1])
    server.faults.append(Fault(200, json.dumps(short_answer).encode()))
    with pytest.raises(ProviderError, match="got 1 vectors for 2 texts"):
        ef(["a", "b"])


# ---------------------------------------------------------------- Gemini
@pytest.mark.parametrize("case", [CASES["gemini"]], ids=["gemini"])
def test_gemini_sends_one_sub_request_per_text_with_the_model(case, make, server):
    ef = GoogleGenerativeAiEmbeddingFunction(
        "models/gemini-embedding-001",
        api_base=f"{server.url}/v1beta",
        api_key_env_var="GEMINI_TEST_KEY",
    )
    ef(["a", "b"])
    body = server.requests[0].body
    assert server.requests[0].path == CASES["gemini"].path
    assert body["requests"][1] == {
        "model": "models/gemini-embedding-001",
        "content": {"parts": [{"text": "b"}]},
        "taskType": "RETRIEVAL_DOCUMENT",
    }


@pytest.mark.parametrize("case", [CASES["gemini"]], ids=["gemini"])
def test_gemini_dimension_is_sent_as_output_dimensionality(case, make, server):
    ef = make(dimension=6)
    vectors = ef(["a", "b"])
    assert ef.dimension == 6 and ef.get_config()["dimension"] == 6
    np.testing.assert_allclose(
        np.stack(vectors), gemini.expected_vectors(["a", "b"], "RETRIEVAL_DOCUMENT", 6), rtol=1e-6
    )
    assert {r["outputDimensionality"] for r in server.requests[0].body["requests"]} == {6}


@pytest.mark.parametrize("case", [CASES["gemini"]], ids=["gemini"])
def test_gemini_other_task_types_are_kept_for_queries(case, make, server):
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


@pytest.mark.parametrize("case", [CASES["gemini"]], ids=["gemini"])
def test_gemini_resource_exhausted_is_retried(case, make, server):
    error = {"error": {"code": 429, "message": "Quota exceeded", "status": "RESOURCE_EXHAUSTED"}}
    server.faults.append(Fault(429, json.dumps(error).encode(), {"retry-after": "0"}))
    ef = make()
    waits = []
    ef._sleep = waits.append
    assert len(ef(["a"])) == 1 and waits == [0.0] and len(server.requests) == 2


@pytest.mark.parametrize("case", [CASES["gemini"]], ids=["gemini"])
def test_gemini_bad_key_is_an_authentication_error_not_bad_input(case, make, server):
    error = {
        "error": {
            "code": 400,
            "message": "API key not valid. Please pass a valid API key.",
            "status": "INVALID_ARGUMENT",
            "details": [{"reason": "API_KEY_INVALID"}],
        }
    }
    server.faults.append(Fault(400, json.dumps(error).encode()))
    with pytest.raises(AuthenticationError, match="check GEMINI_TEST_KEY"):
        make()(["a", "b"])
    assert len(server.requests) == 1


def test_401_is_not_retried_and_500_is(case, make, server):
    ef = make()
    ef._sleep = lambda seconds: None
    server.faults.append(Fault(500, b'{"error": "boom"}'))
    assert len(ef(["a"])) == 1 and len(server.requests) == 2
    server.faults.append(Fault(401, b'{"error": "bad key"}'))
    with pytest.raises(AuthenticationError, match=f"check {case.env_var}"):
        ef(["b"])
    assert len(server.requests) == 3


# ---------------------------------------------------------------- Hugging Face
@pytest.mark.parametrize("case", [CASES["huggingface"]], ids=["huggingface"])
@pytest.mark.parametrize("normalize", [True, False])
def test_huggingface_mean_pools_token_level_output(case, make, server, normalize):
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
    (vector,) = ef.vectors([tokens])
    np.testing.assert_allclose(vector, np.array([2 / 3, 2 / 3]) / np.linalg.norm([2 / 3, 2 / 3]))
    assert ef.vectors([[0.5, 0.5]]) == [[0.5, 0.5]]
    with pytest.raises(ProviderError, match="expected a list of vectors"):
        ef.vectors({"error": "nope"})


@pytest.mark.parametrize("case", [CASES["huggingface"]], ids=["huggingface"])
def test_huggingface_model_loading_503_is_retried(case, make, server):
    loading = {"error": "Model acme/x is currently loading", "estimated_time": 20.0}
    server.faults.append(Fault(503, json.dumps(loading).encode()))
    ef = make()
    waits = []
    ef._sleep = waits.append
    np.testing.assert_allclose(ef(["a"]), huggingface_api.expected_vectors(["a"]), rtol=1e-6)
    assert len(waits) == 1 and len(server.requests) == 2


# ---------------------------------------------------------------- Jina
OPTIONAL = ("task", "dimensions", "late_chunking", "normalized")


@pytest.mark.parametrize("case", [CASES["jina"]], ids=["jina"])
def test_jina_sends_optional_fields_only_when_set(case, make, server):
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


@pytest.mark.parametrize("case", [CASES["jina"]], ids=["jina"])
@pytest.mark.parametrize(
    ("task", "document_task", "query_task"),
    [
        (None, "retrieval.passage", "retrieval.query"),
        ("retrieval.passage", "retrieval.passage", "retrieval.query"),
        ("text-matching", "text-matching", "text-matching"),
    ],
)
def test_jina_query_task(case, make, server, task, document_task, query_task):
    ef = make(task=task)
    ef(["a"])
    ef.embed_query(["a"])
    sent = [jina.kinds_of(request.body) for request in server.requests]
    assert sent == [{document_task}, {query_task}]


def test_jina_refuses_late_chunking_it_cannot_honour():
    with pytest.raises(ConfigError, match="late_chunking"):
        JinaEmbeddingFunction(late_chunking=True, api_key="x")


@pytest.mark.parametrize("case", [CASES["jina"]], ids=["jina"])
def test_jina_models_without_task_adapters_get_no_task(case, make, server):
    ef = make(model_name="jina-embeddings-v2-base-en", task=None)
    ef.embed_query(["a"])
    assert "task" not in server.requests[0].body
