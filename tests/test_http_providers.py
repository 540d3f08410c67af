"""HTTP providers over real HTTP against fakes on 127.0.0.1: wire format, batching
at the provider's limit, retries, typed errors, keys that never leak."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("httpx")

from embedfleet.embedding_functions import HuggingFaceEmbeddingServer, build
from embedfleet.errors import (
    AuthenticationError,
    BadRequestError,
    ConfigError,
    ProviderError,
    RateLimitError,
    TextTooLongError,
)
from tests.fakes import tei
from tests.fakes.server import FakeServer, Fault

CANARY = "sk-canary-7f3e-never-print-me"
TEXTS = [f"text number {index} " * (1 + index % 3) for index in range(70)]


@pytest.fixture
def tei_server():
    server = FakeServer(tei.answer, api_key=CANARY)
    yield server
    server.stop()


@pytest.fixture
def ef(tei_server, monkeypatch):
    monkeypatch.setenv("TEI_TEST_KEY", CANARY)
    return HuggingFaceEmbeddingServer(
        f"{tei_server.url}/embed", api_key_env_var="TEI_TEST_KEY", retry_backoff_seconds=0.01
    )


def test_documents_are_embedded_over_http_in_order(ef, tei_server):
    vectors = ef(TEXTS)
    np.testing.assert_allclose(np.stack(vectors), tei.expected_vectors(TEXTS), rtol=1e-6)
    first = tei_server.requests[0]
    assert first.path == "/embed" and first.headers["authorization"] == f"Bearer {CANARY}"
    assert first.body["normalize"] is True and first.body["truncate"] is True


def test_requests_are_split_at_the_documented_batch_limit(ef, tei_server):
    ef.batch_size = 100
    ef(TEXTS)
    sizes = [len(request.body["inputs"]) for request in tei_server.requests]
    assert max(sizes) == tei.MAX_CLIENT_BATCH_SIZE and sum(sizes) == len(TEXTS)


def test_429_is_retried_after_the_servers_delay(ef, tei_server):
    tei_server.faults.extend([Fault(429, b'{"error":"busy"}', {"retry-after-ms": "20"})] * 2)
    waits = []
    ef._sleep = waits.append
    assert len(ef(["a", "b"])) == 2
    assert waits == [0.02, 0.02] and len(tei_server.requests) == 3


def test_500_and_truncated_json_are_retried_with_backoff(ef, tei_server):
    tei_server.faults.extend([Fault(500, b"oops"), Fault(200, b"[[0.1, 0.2")])
    waits = []
    ef._sleep = waits.append
    np.testing.assert_allclose(ef(["a"])[0], tei.expected_vectors(["a"])[0], rtol=1e-6)
    assert len(waits) == 2 and all(0 < wait <= 0.02 for wait in waits)


def test_retries_run_out_into_a_typed_error(ef, tei_server):
    ef.max_retries = 2
    ef._sleep = lambda seconds: None
    tei_server.faults.extend([Fault(429, b'{"error":"slow down"}')] * 3)
    with pytest.raises(RateLimitError, match="429 after 3 tries") as caught:
        ef(["a"])
    assert caught.value.status == 429
    tei_server.faults.extend([Fault(503, b"down")] * 3)
    with pytest.raises(ProviderError, match="503 after 3 tries"):
        ef(["b"])


def test_401_is_not_retried_and_names_the_variable(ef, tei_server, monkeypatch):
    monkeypatch.setenv("TEI_TEST_KEY", "sk-wrong-key")
    with pytest.raises(AuthenticationError, match="check TEI_TEST_KEY"):
        ef(["a"])
    assert len(tei_server.requests) == 1


def test_bad_input_is_not_retried(ef, tei_server):
    with pytest.raises(BadRequestError, match=r"refused the input \(400\).*not allowed"):
        ef(["fine", "POISON"])
    assert len(tei_server.requests) == 1


def test_a_wrong_number_of_vectors_is_an_error_not_a_gap(ef, tei_server):
    tei_server.faults.append(Fault(200, json.dumps([[0.1, 0.2]]).encode()))
    with pytest.raises(ProviderError, match="got 1 vectors for 2 texts"):
        ef(["a", "b"])


def test_a_missing_key_names_the_variable_to_set(tei_server, monkeypatch):
    monkeypatch.delenv("TEI_MISSING_KEY", raising=False)
    ef = HuggingFaceEmbeddingServer(f"{tei_server.url}/embed", api_key_env_var="TEI_MISSING_KEY")
    with pytest.raises(ConfigError, match="set the environment variable TEI_MISSING_KEY"):
        ef(["a"])


def test_the_key_never_appears_in_config_repr_or_errors(tei_server, monkeypatch):
    ef = HuggingFaceEmbeddingServer(
        f"{tei_server.url}/embed", api_key=CANARY, max_retries=0, retry_backoff_seconds=0.01
    )
    assert CANARY not in json.dumps(ef.get_config()) and CANARY not in repr(ef)
    echo = json.dumps({"error": f"bad key {CANARY}"}).encode()
    tei_server.faults.extend([Fault(401, echo), Fault(500, echo)])
    for error in (AuthenticationError, ProviderError):
        with pytest.raises(error) as caught:
            ef(["a"])
        assert CANARY not in str(caught.value) and "***" in str(caught.value)


def test_config_round_trip_rebuilds_the_same_function(ef):
    rebuilt = build("huggingface_server", json.loads(json.dumps(ef.get_config())))
    assert rebuilt.get_config() == ef.get_config()
    np.testing.assert_array_equal(np.stack(rebuilt(["x", "y"])), np.stack(ef(["x", "y"])))


def test_unreachable_server_is_a_provider_error_after_retries():
    ef = HuggingFaceEmbeddingServer(
        "http://127.0.0.1:9/embed", max_retries=1, retry_backoff_seconds=0.01, timeout=2
    )
    with pytest.raises(ProviderError, match="unreachable after 2 tries"):
        ef(["a"])


def test_a_job_sends_poison_rows_to_rejects_and_embeds_the_rest(local_ray, tmp_path):
    import embedfleet
    from embedfleet.job import Job, JobSpec

    server = FakeServer(tei.answer)  # no key: local Ray workers keep the driver's old env
    try:
        rows = [{"id": f"r{index}", "text": f"row {index}"} for index in range(40)]
        rows[17]["text"] = "POISON"
        source = tmp_path / "rows.jsonl"
        source.write_text("".join(json.dumps(row) + "\n" for row in rows))
        spec = JobSpec.from_dict(
            {
                "source": {"uri": str(source), "id_column": "id"},
                "embedding": {
                    "provider": "huggingface_server",
                    "config": {"url": f"{server.url}/embed", "retry_backoff_seconds": 0.01},
                },
                "fleet": {"replicas": 2},
                "output": {"uri": str(tmp_path / "out"), "rows_per_shard": 1000},
            }
        )
        result = Job(spec).run(progress=False)
    finally:
        server.stop()
    assert result.complete and (result.embedded, result.rejected) == (39, 1)
    table = embedfleet.read(str(tmp_path / "out")).to_table()
    vectors = dict(zip(table["id"].to_pylist(), table["embedding"].to_pylist(), strict=True))
    assert "r17" not in vectors and len(vectors) == 39
    np.testing.assert_allclose(vectors["r3"], tei.expected_vectors(["row 3"])[0], rtol=1e-6)
    import pyarrow.parquet as pq

    (rejects_file,) = (tmp_path / "out").glob("snapshots/*/_rejects/*.parquet")
    rejects = pq.read_table(rejects_file).to_pylist()
    assert rejects[0]["id"] == "r17" and "input is not allowed" in rejects[0]["reason"]


# ---------------------------------------------------------------- OpenAI, through the SDK
from embedfleet.embedding_functions import OpenAIEmbeddingFunction  # noqa: E402
from tests.fakes import openai_api  # noqa: E402


@pytest.fixture
def openai_server():
    server = FakeServer(openai_api.answer, api_key=CANARY)
    yield server
    server.stop()


@pytest.fixture
def openai_ef(openai_server, monkeypatch):
    monkeypatch.setenv("OPENAI_TEST_KEY", CANARY)

    def make(**options):
        return OpenAIEmbeddingFunction(
            "text-embedding-3-small",
            api_base=f"{openai_server.url}/v1",
            api_key_env_var="OPENAI_TEST_KEY",
            retry_backoff_seconds=0.01,
            **options,
        )

    return make


@pytest.mark.parametrize("encoding_format", ["base64", "float"])
def test_openai_embeds_over_the_sdk_in_both_encodings(openai_ef, openai_server, encoding_format):
    ef = openai_ef(encoding_format=encoding_format, dimensions=12)
    vectors = ef(TEXTS[:5])
    np.testing.assert_allclose(np.stack(vectors), openai_api.expected_vectors(TEXTS[:5]), rtol=1e-6)
    request = openai_server.requests[0]
    assert request.path == "/v1/embeddings"
    assert request.headers["authorization"] == f"Bearer {CANARY}"
    assert request.body["model"] == "text-embedding-3-small"
    assert request.body["encoding_format"] == encoding_format and request.body["dimensions"] == 12


def test_openai_retries_once_in_the_shared_layer_not_in_the_sdk(openai_ef, openai_server):
    ef = openai_ef()
    waits = []
    ef._sleep = waits.append
    openai_server.faults.extend(
        [Fault(429, b'{"error": {"message": "slow"}}', {"retry-after-ms": "30"})]
    )
    assert len(ef(["a"])) == 1
    assert waits == [0.03] and len(openai_server.requests) == 2


def test_openai_401_is_an_authentication_error_without_the_key(
    openai_ef, openai_server, monkeypatch
):
    monkeypatch.setenv("OPENAI_TEST_KEY", "sk-wrong-" + CANARY[::-1])
    ef = openai_ef()
    with pytest.raises(AuthenticationError, match="check OPENAI_TEST_KEY") as caught:
        ef(["a"])
    assert len(openai_server.requests) == 1 and CANARY[::-1] not in str(caught.value)


def test_openai_bad_input_is_a_bad_request_error(openai_ef):
    with pytest.raises(BadRequestError, match="input is not allowed"):
        openai_ef()(["POISON"])


def test_azure_requests_go_to_the_deployment_with_the_api_version(openai_server, monkeypatch):
    monkeypatch.setenv("AZURE_TEST_KEY", CANARY)
    ef = OpenAIEmbeddingFunction(
        "text-embedding-3-small",
        api_type="azure",
        api_base=openai_server.url,
        api_version="2024-10-21",
        deployment_id="my-embeddings",
        api_key_env_var="AZURE_TEST_KEY",
    )
    openai_server.api_key = None  # Azure sends the key as api-key, not a bearer token
    assert len(ef(["a", "b"])) == 2
    request = openai_server.requests[0]
    assert request.path.startswith("/openai/deployments/my-embeddings/embeddings")
    assert "api-version=2024-10-21" in request.path
    assert request.headers["api-key"] == CANARY


# ---------------------------------------------------------------- Cohere v2
from embedfleet.embedding_functions import CohereEmbeddingFunction  # noqa: E402
from tests.fakes import cohere  # noqa: E402


@pytest.fixture
def cohere_server():
    server = FakeServer(cohere.answer, api_key=CANARY)
    yield server
    server.stop()


@pytest.fixture
def cohere_ef(cohere_server, monkeypatch):
    monkeypatch.setenv("COHERE_TEST_KEY", CANARY)
    return CohereEmbeddingFunction(
        api_base=f"{cohere_server.url}/v2", api_key_env_var="COHERE_TEST_KEY", batch_size=500
    )


def test_cohere_documents_and_queries_use_their_input_types(cohere_ef, cohere_server):
    documents = cohere_ef(TEXTS[:4])
    queries = cohere_ef.embed_query(TEXTS[:4])
    expected_documents = cohere.expected_vectors(TEXTS[:4], "search_document")
    np.testing.assert_allclose(np.stack(documents), expected_documents, rtol=1e-6)
    expected_queries = cohere.expected_vectors(TEXTS[:4], "search_query")
    np.testing.assert_allclose(np.stack(queries), expected_queries, rtol=1e-6)
    first = cohere_server.requests[0].body
    assert first["model"] == "embed-v4.0" and first["embedding_types"] == ["float"]
    assert first["truncate"] == "END"


def test_cohere_requests_hold_at_most_96_texts(cohere_ef, cohere_server):
    texts = [f"t{index}" for index in range(200)]
    assert len(cohere_ef(texts)) == 200
    assert [len(request.body["texts"]) for request in cohere_server.requests] == [96, 96, 8]


def test_cohere_wrong_key_is_an_authentication_error(cohere_ef, monkeypatch):
    monkeypatch.setenv("COHERE_TEST_KEY", "wrong")
    with pytest.raises(AuthenticationError, match="check COHERE_TEST_KEY"):
        cohere_ef(["a"])


def test_openai_requests_stay_within_300k_tokens(openai_ef, openai_server):
    ef = openai_ef(batch_size=2048)
    texts = [f"{index} " + "lorem ipsum " * 600 for index in range(400)]  # ~1.2k+ tokens each
    assert len(ef(texts)) == len(texts)
    sent = [request.body["input"] for request in openai_server.requests]
    assert len(sent) >= 2  # one request could hold 2048 inputs, but not their tokens
    assert all(sum(ef.request_tokens(inputs)) <= 300_000 for inputs in sent)
    assert sorted(text for inputs in sent for text in inputs) == sorted(texts)


def test_openai_texts_over_8192_tokens_are_cut_or_refused_by_index(openai_ef, openai_server):
    long_text = "long " + "word " * 40_000
    ef = openai_ef()
    ef(["short", long_text])
    sent = next(text for text in openai_server.requests[0].body["input"] if text != "short")
    assert long_text.startswith(sent) and ef.request_tokens([sent])[0] <= 8192
    assert ef.stats.truncated == 1
    with pytest.raises(TextTooLongError, match="document at index 1 "):
        openai_ef(on_long="error")(["short", long_text])


def test_a_429_without_retry_after_waits_for_the_exhausted_limits_reset(ef, tei_server):
    reset = {
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "1m2.5s",
        "x-ratelimit-remaining-tokens": "5000",
        "x-ratelimit-reset-tokens": "6m0s",  # not exhausted: not the one to wait for
    }
    tei_server.faults.extend([Fault(429, b'{"error":"busy"}', reset), Fault(429, b"{}", {})])
    waits = []
    ef._sleep = waits.append
    ef.pacer().pause = lambda seconds: None  # the wait is checked, not actually waited
    assert len(ef(["a"])) == 1
    assert waits[0] == pytest.approx(62.5)
    assert 0 < waits[1] <= 0.02  # no hint at all: the exponential backoff


def test_openai_truncated_json_is_retried_like_any_unreadable_answer(openai_ef, openai_server):
    ef = openai_ef()
    ef._sleep = lambda seconds: None
    openai_server.faults.append(Fault(200, b'{"object": "list", "data": [{"emb'))
    np.testing.assert_allclose(ef(["a"])[0], openai_api.expected_vectors(["a"])[0], rtol=1e-6)
    assert len(openai_server.requests) == 2


def test_a_keyless_compatible_server_never_gets_the_openai_key(openai_server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", CANARY)  # set for api.openai.com, not for this server
    openai_server.api_key = None
    ef = OpenAIEmbeddingFunction(api_base=f"{openai_server.url}/v1", api_key_env_var=None)
    assert len(ef(["a"])) == 1
    assert CANARY not in openai_server.requests[0].headers["authorization"]


def test_no_part_of_an_error_chain_holds_the_key(openai_ef, openai_server):
    import traceback

    echo = json.dumps({"error": {"message": f"Incorrect API key provided: {CANARY}"}}).encode()
    openai_server.faults.append(Fault(401, echo))
    with pytest.raises(AuthenticationError) as caught:
        openai_ef()(["a"])
    assert CANARY not in "".join(traceback.format_exception(caught.value))
