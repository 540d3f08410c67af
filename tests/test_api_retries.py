"""The retry policy every API provider shares: what is retried and how long it waits
(the server's Retry-After, retry-after-ms or x-ratelimit-reset-*, else exponential
backoff with jitter), and the typed error that ends it."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import numpy as np
import pytest

pytest.importorskip("httpx")

from embedfleet.embedding_functions import HuggingFaceEmbeddingServer
from embedfleet.embedding_functions.api import retry
from embedfleet.errors import (
    AuthenticationError,
    BadRequestError,
    ProviderError,
    RateLimitError,
)
from tests.fakes import huggingface_api, tei
from tests.fakes.providers import (  # noqa: F401 - fixtures
    PROVIDERS,
    each_provider,
    make_fixture,
    only,
    server_fixture,
)
from tests.fakes.server import FakeServer, Fault


# ---------------------------------------------------------------- what is retried, and how long
@each_provider
def test_429_is_retried_after_the_servers_delay(provider, make, server):
    server.faults.extend([Fault(429, b'{"error":"busy"}', {"retry-after-ms": "20"})] * 2)
    ef = make()
    waits = []
    ef._sleep = waits.append
    assert len(ef(["a", "b"])) == 2
    assert len(server.requests) == 3  # the SDK retries nothing
    # the server's wait, spread at random so that requests refused together come back apart
    assert len(waits) == 2 and all(0.02 <= wait <= 0.03 for wait in waits)


@each_provider
def test_500_and_truncated_json_are_retried_with_backoff(provider, make, server):
    server.faults.extend([Fault(500, b"oops"), Fault(200, b'[[0.1, 0.2, {"emb')])
    ef = make()
    waits = []
    ef._sleep = waits.append
    np.testing.assert_allclose(ef(["a"])[0], provider.expected_vectors(["a"])[0], rtol=1e-6)
    assert len(waits) == 2 and all(0 < wait <= 0.02 for wait in waits)
    assert len(server.requests) == 3


@each_provider
def test_401_is_not_retried_and_500_is(provider, make, server):
    ef = make()
    ef._sleep = lambda seconds: None
    server.faults.append(Fault(500, b'{"error": "boom"}'))
    assert len(ef(["a"])) == 1 and len(server.requests) == 2
    server.faults.append(Fault(401, b'{"error": "bad key"}'))
    with pytest.raises(AuthenticationError, match=f"check {provider.env_var}"):
        ef(["b"])
    assert len(server.requests) == 3


@each_provider
def test_a_429_without_retry_after_waits_for_the_exhausted_limits_reset(provider, make, server):
    reset = {
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "1m2.5s",
        "x-ratelimit-remaining-tokens": "5000",
        "x-ratelimit-reset-tokens": "6m0s",  # not exhausted: not the one to wait for
    }
    server.faults.extend([Fault(429, b'{"error":"busy"}', reset), Fault(429, b"{}", {})])
    ef = make()
    waits = []
    ef._sleep = waits.append
    ef.pacer().throttled = lambda *args: False  # the wait is checked, not actually waited
    assert len(ef(["a"])) == 1
    assert 62.5 <= waits[0] <= 62.5 * 1.5
    assert 0 < waits[1] <= 0.02  # no hint at all: the exponential backoff


@only("gemini")
def test_gemini_resource_exhausted_is_retried(provider, make, server):
    error = {"error": {"code": 429, "message": "Quota exceeded", "status": "RESOURCE_EXHAUSTED"}}
    server.faults.append(Fault(429, json.dumps(error).encode(), {"retry-after": "0"}))
    ef = make()
    waits = []
    ef._sleep = waits.append
    assert len(ef(["a"])) == 1 and waits == [0.0] and len(server.requests) == 2


@only("huggingface")
def test_huggingface_model_loading_503_is_retried(provider, make, server):
    loading = {"error": "Model acme/x is currently loading", "estimated_time": 20.0}
    server.faults.append(Fault(503, json.dumps(loading).encode()))
    ef = make()
    waits = []
    ef._sleep = waits.append
    np.testing.assert_allclose(ef(["a"]), huggingface_api.expected_vectors(["a"]), rtol=1e-6)
    assert len(waits) == 1 and len(server.requests) == 2


# ---------------------------------------------------------------- the typed error that ends it
@each_provider
def test_retries_run_out_into_a_typed_error(provider, make, server):
    ef = make(max_retry_seconds=0)  # no patience at all: nothing is retried
    ef._sleep = lambda seconds: None
    server.faults.append(Fault(429, b'{"error":"slow down"}'))
    with pytest.raises(RateLimitError, match="429 after 1 try") as caught:
        ef(["a"])
    assert caught.value.status == 429 and caught.value.retryable
    assert "max_retry_seconds=0" in str(caught.value)
    ef = make(max_retries=2)  # 429s are never counted; other failures are, when asked
    ef._sleep = lambda seconds: None
    server.faults.extend([Fault(429, b'{"error":"slow down"}')] * 3)
    server.faults.extend([Fault(503, b"down")] * 3)
    with pytest.raises(ProviderError, match="503 after 6 tries") as caught:
        ef(["b"])
    assert caught.value.retryable and not caught.value.unavailable
    assert len(server.requests) == 7


@each_provider
def test_bad_input_is_a_bad_request_error_with_the_providers_message(provider, make, server):
    with pytest.raises(BadRequestError, match=r"refused the input \(400\)") as caught:
        make()(["fine", "POISON"])
    assert provider.fake.POISON_MESSAGE in str(caught.value) and caught.value.status == 400
    assert len(server.requests) == 1


@only("gemini")
def test_gemini_bad_key_is_an_authentication_error_not_bad_input(provider, make, server):
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


@each_provider
def test_an_unreachable_server_is_a_provider_error_after_retries(provider, monkeypatch):
    monkeypatch.setenv(provider.env_var, "k")
    ef = provider.build("http://127.0.0.1:9", max_retries=1, timeout=2)
    with pytest.raises(ProviderError, match="unreachable after 2 tries"):
        ef(["a"])


def test_a_job_sends_poison_rows_to_rejects_and_embeds_the_rest(local_ray, tmp_path):
    import pyarrow.parquet as pq

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
    (rejects_file,) = (tmp_path / "out").glob("snapshots/*/_rejects/*.parquet")
    rejects = pq.read_table(rejects_file).to_pylist()
    assert rejects[0]["id"] == "r17" and tei.POISON_MESSAGE in rejects[0]["reason"]


# ---------------------------------------------------------------- the policy on its own
@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"retry-after-ms": "250"}, 0.25),
        ({"retry-after-ms": "250", "retry-after": "9"}, 0.25),  # the finer one wins
        ({"retry-after-ms": "soon", "retry-after": "9"}, 9.0),
        ({"retry-after": "2.5"}, 2.5),
        ({"retry-after": "-3"}, 0.0),
        ({"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "20ms"}, 0.02),
        ({"x-ratelimit-reset-requests": "1h2m3.5s"}, 3723.5),  # remaining unknown: exhausted
        ({"x-ratelimit-remaining-requests": "3", "x-ratelimit-reset-requests": "1s"}, None),
        ({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "7"}, 7.0),
        ({"retry-after": "whenever"}, None),
        ({}, None),
    ],
)
def test_the_servers_wait_is_read_from_its_headers(headers, seconds):
    assert retry.retry_after(headers) == (None if seconds is None else pytest.approx(seconds))


def test_retry_after_as_an_http_date_is_the_time_until_then():
    then = datetime.now(timezone.utc) + timedelta(seconds=30)
    assert retry.retry_after({"retry-after": format_datetime(then, usegmt=True)}) == (
        pytest.approx(30, abs=1.5)
    )


@pytest.mark.parametrize("attempt", range(8))
def test_backoff_doubles_within_jitter_and_is_capped(attempt):
    ceiling = min(retry.MAX_BACKOFF_SECONDS, 0.5 * 2**attempt)
    waits = [retry.backoff(attempt, 0.5) for _ in range(50)]
    assert all(ceiling / 2 <= wait <= ceiling for wait in waits)
    assert len(set(waits)) > 1  # jittered: replicas failing together retry apart


@pytest.mark.parametrize(
    ("status", "retryable"),
    [
        *[(status, True) for status in (None, 200, 408, 409, 425, 429, 500, 501, 503, 599)],
        *[(status, False) for status in (400, 401, 403, 404, 413, 422)],
    ],
)
def test_what_is_worth_another_try(status, retryable):
    assert retry.is_retryable(status) is retryable


def test_a_tei_server_without_a_key_is_named_in_auth_errors_by_the_argument(monkeypatch):
    server = FakeServer(tei.answer, api_key="sk-needed")
    try:
        ef = HuggingFaceEmbeddingServer(f"{server.url}/embed")
        with pytest.raises(AuthenticationError, match="check the api_key argument"):
            ef(["a"])
    finally:
        server.stop()
