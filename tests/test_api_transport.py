"""The transport seam: a provider's requests go through one ``send(request)`` that
returns the answer or raises ``HttpFailure``, so anything that answers ``send``
can stand in for the network, and the shared policy (keys, retries, typed errors)
applies to it unchanged. The official OpenAI SDK is one such transport."""

from __future__ import annotations

import pickle
import traceback
from typing import Any

import pytest

pytest.importorskip("httpx")
pytest.importorskip("openai")

import httpx
import openai

from embedfleet.embedding_functions import HttpEmbeddingFunction, OpenAIEmbeddingFunction
from embedfleet.embedding_functions.api import (
    ApiRequest,
    HttpFailure,
    HttpxTransport,
    Transport,
)
from embedfleet.embedding_functions.api.openai import OpenAISdkTransport
from embedfleet.embedding_functions.api.transport import Answered
from embedfleet.errors import AuthenticationError, BadRequestError, ProviderError, RateLimitError
from tests.fakes import tei
from tests.fakes.providers import CANARY
from tests.fakes.server import FakeServer, Fault


class InMemoryTransport:
    """Answers every request with one vector per text (its length, twice), or with the
    failures queued in ``failures`` first."""

    made = 0

    def __init__(self) -> None:
        InMemoryTransport.made += 1
        self.sent: list[ApiRequest] = []
        self.failures: list[HttpFailure] = []

    def send(self, request: ApiRequest) -> Any:
        self.sent.append(request)
        if self.failures:
            raise self.failures.pop(0)
        return {"vectors": [[len(text), len(text)] for text in request.body["texts"]]}


class InMemoryEmbeddingFunction(HttpEmbeddingFunction):
    """A provider whose requests never touch a network."""

    max_inputs_per_request = 2
    default_api_base = "memory://embeddings"

    def build_request(self, texts: list[str], *, query: bool) -> ApiRequest:
        return ApiRequest("query" if query else "document", {"texts": texts})

    def parse_vectors(self, payload: Any) -> list[Any]:
        return payload["vectors"]

    def make_transport(self) -> Transport:
        return InMemoryTransport()


@pytest.fixture
def ef(monkeypatch):
    monkeypatch.setenv("MEMORY_TEST_KEY", CANARY)
    function = InMemoryEmbeddingFunction(
        api_key_env_var="MEMORY_TEST_KEY", retry_backoff_seconds=0.01, max_concurrency=1
    )
    return function


def test_a_provider_embeds_through_its_own_transport(ef):
    vectors = ef(["a", "bbb", "cc"])
    assert [vector.tolist() for vector in vectors] == [[1, 1], [3, 3], [2, 2]]
    sent = ef.transport().sent
    assert [request.body["texts"] for request in sent] == [["a", "cc"], ["bbb"]]  # 2 per request
    assert {request.path for request in sent} == {"document"}
    assert all(request.headers == {"Authorization": f"Bearer {CANARY}"} for request in sent)
    ef.embed_query(["q"])
    assert sent[-1].path == "query"


def test_the_transport_is_made_once_per_process_and_never_pickled(ef):
    made = InMemoryTransport.made
    ef(["a"])
    ef(["b"])
    assert InMemoryTransport.made == made + 1
    copy = pickle.loads(pickle.dumps(ef))
    assert copy._transport is None
    copy(["c"])
    assert InMemoryTransport.made == made + 2 and copy.transport() is not ef.transport()


def test_the_shared_retry_policy_applies_to_any_transport(ef):
    waits = []
    ef._sleep = waits.append
    ef.transport().failures.extend(
        [HttpFailure(429, {"retry-after": "0.05"}, "busy"), HttpFailure(None, {}, "no answer")]
    )
    # the 429's wait, spread; then the first backoff (429s do not count towards it)
    assert len(ef(["a"])) == 1 and 0.05 <= waits[0] <= 0.075 and 0.005 <= waits[1] <= 0.01
    ef.transport().failures.append(HttpFailure(400, {}, f"no: {CANARY}"))
    with pytest.raises(BadRequestError, match=r"memory://embeddings/document refused") as caught:
        ef(["b"])
    assert CANARY not in str(caught.value) and "no: ***" in str(caught.value)
    ef.max_retry_seconds = 0
    ef.transport().failures.extend([HttpFailure(429, {}, "busy")] * 2)
    with pytest.raises(RateLimitError, match="429 after 1 try"):
        ef(["c"])


def test_a_provider_that_cannot_read_an_answer_gets_it_again(ef):
    answers = iter([HttpFailure(200, {}, "unreadable vectors"), None])

    def parse(payload: Any) -> list[Any]:
        failure = next(answers)
        if failure is not None:
            raise failure
        return payload["vectors"]

    ef.parse_vectors = parse
    assert len(ef(["a"])) == 1 and len(ef.transport().sent) == 2


def test_a_provider_error_while_reading_is_not_retried(ef):
    def parse(payload: Any) -> list[Any]:
        raise ProviderError("answered without vectors")

    ef.parse_vectors = parse
    with pytest.raises(ProviderError, match="without vectors"):
        ef(["a"])
    assert len(ef.transport().sent) == 1


# ---------------------------------------------------------------- the httpx transport
@pytest.fixture
def tei_server():
    server = FakeServer(tei.answer)
    yield server
    server.stop()


def test_the_httpx_transport_posts_json_and_returns_the_decoded_answer(tei_server):
    transport = HttpxTransport(tei_server.url, timeout=5)
    answer = transport.send(ApiRequest("embed", {"inputs": ["a"]}, {"X-Test": "1"}))
    assert isinstance(answer, Answered)  # with its headers, for the quota
    assert answer.payload == tei.expected_vectors(["a"])
    assert answer.headers["content-type"] == "application/json"
    (request,) = tei_server.requests
    assert request.path == "/embed" and request.headers["x-test"] == "1"


def test_the_httpx_transport_reports_every_failure_as_an_http_failure(tei_server):
    transport = HttpxTransport(f"{tei_server.url}/embed", timeout=5)
    tei_server.faults.extend(
        [Fault(429, b"slow down", {"retry-after": "3"}), Fault(200, b"[[0.1, 0.")]
    )
    with pytest.raises(HttpFailure) as caught:
        transport.send(ApiRequest("", {"inputs": ["a"]}))
    failure = caught.value
    assert (failure.status, failure.headers["retry-after"], failure.detail) == (
        429,
        "3",
        "slow down",
    )
    with pytest.raises(HttpFailure) as caught:
        transport.send(ApiRequest("", {"inputs": ["a"]}))
    assert (caught.value.status, caught.value.detail) == (200, "unreadable JSON")
    with pytest.raises(HttpFailure) as caught:
        HttpxTransport("http://127.0.0.1:9", timeout=2).send(ApiRequest("", {}))
    assert caught.value.status is None and "ConnectError" in caught.value.detail


# ---------------------------------------------------------------- the OpenAI SDK transport
class FakeClient:
    """Stands in for ``openai.OpenAI``: ``embeddings.create`` raises or answers."""

    def __init__(self, outcome: Any) -> None:
        self.outcome = outcome
        self.calls: list[dict[str, Any]] = []
        self.embeddings = self

    def create(self, **kwargs: Any) -> Any:
        self.calls.append(kwargs)
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return self.outcome


def sdk_request() -> Any:
    return httpx.Request("POST", "https://api.example/v1/embeddings")


def sdk_status_error(status: int, headers: dict[str, str]) -> Any:
    response = httpx.Response(status, headers=headers, request=sdk_request())
    cls = openai.RateLimitError if status == 429 else openai.AuthenticationError
    return cls(f"Incorrect API key provided: {CANARY}", response=response, body=None)


def test_the_sdk_transport_sends_the_body_as_the_sdks_arguments():
    client = FakeClient(outcome="the response")
    body = {"input": ["a"], "model": "m", "encoding_format": "base64", "dimensions": 8}
    assert OpenAISdkTransport(client).send(ApiRequest("", body)) == "the response"
    assert client.calls == [body]


@pytest.mark.parametrize(
    ("error", "status", "detail"),
    [
        (lambda: sdk_status_error(429, {"retry-after-ms": "30"}), 429, "Incorrect API key"),
        (lambda: sdk_status_error(401, {}), 401, "Incorrect API key"),
        (lambda: openai.APIConnectionError(request=sdk_request()), None, "APIConnectionError"),
        (lambda: openai.APITimeoutError(request=sdk_request()), None, "APITimeoutError"),
        (lambda: ValueError("Expecting value"), 200, "unreadable answer: ValueError"),
    ],
    ids=["429", "401", "connection", "timeout", "truncated-json"],
)
def test_the_sdk_transport_maps_failures_without_chaining_them(error, status, detail):
    with pytest.raises(HttpFailure) as caught:
        OpenAISdkTransport(FakeClient(error())).send(ApiRequest("", {"input": ["a"]}))
    failure = caught.value
    assert failure.status == status and detail in failure.detail
    assert failure.__cause__ is None and failure.__suppress_context__
    if status == 429:
        assert failure.headers["retry-after-ms"] == "30"  # the shared layer's wait


def test_the_sdks_exception_never_reaches_the_error_a_user_sees(monkeypatch):
    monkeypatch.setenv("OPENAI_TEST_KEY", CANARY)
    ef = OpenAIEmbeddingFunction(
        api_base="https://api.example/v1", api_key_env_var="OPENAI_TEST_KEY", max_retries=0
    )
    client = FakeClient(sdk_status_error(401, {}))
    monkeypatch.setattr(ef, "make_transport", lambda: OpenAISdkTransport(client))
    with pytest.raises(AuthenticationError, match="check OPENAI_TEST_KEY") as caught:
        ef(["a"])
    assert len(client.calls) == 1
    assert CANARY not in "".join(traceback.format_exception(caught.value))


def test_openai_damaged_base64_is_an_unreadable_answer_retried():
    ef = OpenAIEmbeddingFunction(api_key="k")
    damaged = openai.types.CreateEmbeddingResponse.model_construct(
        data=[openai.types.Embedding.model_construct(embedding="not base64!", index=0)]
    )
    with pytest.raises(HttpFailure) as caught:
        ef.parse_vectors(damaged)
    assert caught.value.status == 200 and "unreadable vectors" in caught.value.detail
