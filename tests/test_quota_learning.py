"""API quotas nobody configured: the provider's real limit is learned, and a job never
fails on 429s.

The learner and the ledger run on a fake clock (exact and instant); what providers
announce is read from real headers and bodies; the behaviour a user sees is checked
with real 2-replica jobs on a local Ray against :class:`~embedfleet.testing.RateLimitedServer`
(a real HTTP server on 127.0.0.1 enforcing requests/minute), with rates and storms
scaled down to seconds.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("httpx")

import embedfleet
from embedfleet.embedding_functions import (
    GoogleGenerativeAiEmbeddingFunction,
    HuggingFaceEmbeddingServer,
    OpenAIEmbeddingFunction,
)
from embedfleet.embedding_functions.api import HttpFailure, HttpxTransport
from embedfleet.embedding_functions.api.ratelimits import advertised_limits, policy_per_minute
from embedfleet.embedding_functions.api.transport import Answered, ApiRequest
from embedfleet.errors import (
    AuthenticationError,
    BatchFailedError,
    ProviderError,
    RateLimitError,
)
from embedfleet.job.result import JobResult, describe_quota
from embedfleet.job.retries import (
    AGAIN,
    FAILED,
    SHARD_ATTEMPTS,
    STOPPED,
    ShardRetries,
    provider_failure,
)
from embedfleet.job.shards import Piece, Shard
from embedfleet.quota import (
    AdvertisedLimits,
    Pacer,
    QuotaLedger,
    RateLearner,
    RateLimits,
    Report,
    learning,
    quota_summary,
)
from embedfleet.testing import RateLimitedServer
from tests.fakes import openai_api, tei
from tests.fakes.clock import FakeClock
from tests.fakes.server import FakeServer, Fault


# ---------------------------------------------------------------------- the learner
def busy_interval(learner: RateLearner, clock: FakeClock) -> None:
    """One interval in which every slot of the rate was used, and nothing refused."""
    assert learner.rate is not None
    learner.observed(Report(successes=round(learner.rate * learning.INTERVAL_SECONDS)), clock())
    clock.now += learning.INTERVAL_SECONDS
    learner.tick(clock())


def test_nothing_is_paced_until_the_first_429_which_paces_below_the_accepted_rate():
    clock = FakeClock()
    learner = RateLearner(clock())
    learner.observed(Report(successes=20), clock())
    clock.now += 1.0
    learner.tick(clock())
    assert learner.rate is None and learner.source == "unpaced"
    assert learner.throttled(0, clock())
    assert learner.rate == pytest.approx(20 * learning.DECREASE)  # 20 succeeded in 1 s
    assert learner.source == "429s" and learner.epoch == 1


def test_the_first_429s_rate_is_measured_again_once_late_reports_are_in():
    clock = FakeClock()
    learner = RateLearner(clock())
    learner.observed(Report(successes=5), clock())  # one replica's report came in ...
    clock.now += 1.0
    learner.throttled(0, clock())
    assert learner.rate == pytest.approx(5 * learning.DECREASE)
    learner.observed(Report(successes=15), clock.now - 0.1)  # ... the other's just after
    clock.now += learning.REPORT_LAG_SECONDS
    learner.tick(clock())
    assert learner.rate == pytest.approx(20 * learning.DECREASE)


def test_a_burst_of_429s_from_requests_already_sent_decreases_once():
    clock = FakeClock()
    learner = RateLearner(clock())
    learner.observed(Report(successes=40), clock())
    clock.now += 2.0
    assert learner.throttled(0, clock())
    rate = learner.rate
    for _ in range(20):  # the rest of the burst: sent in epoch 0
        assert not learner.throttled(0, clock())
    assert not learner.throttled(1, clock())  # the new epoch, before every replica heard
    assert learner.rate == rate and learner.decreases == 1
    clock.now += learning.DECREASE_GAP_SECONDS
    assert learner.throttled(1, clock())  # still too fast: decrease again
    assert learner.rate == pytest.approx(rate * learning.DECREASE)


def test_a_used_rate_climbs_back_to_the_peak_then_probes_past_it_and_an_idle_one_stays():
    clock = FakeClock()
    learner = RateLearner(clock())
    learner.observed(Report(successes=20), clock())
    clock.now += 1.0
    learner.throttled(0, clock())  # peak 20/s, rate 14/s
    clock.now += learning.REPORT_LAG_SECONDS
    learner.tick(clock())
    clock.now += 3 * learning.INTERVAL_SECONDS  # idle: nothing to learn from
    learner.tick(clock())
    assert learner.rate == pytest.approx(14.0)
    rates = []
    for _ in range(8):
        busy_interval(learner, clock)
        rates.append(learner.rate)
    assert rates[0] == pytest.approx(17.0)  # half way back to the peak
    assert rates[1] == pytest.approx(18.5)
    assert all(later > earlier for earlier, later in itertools.pairwise(rates))
    assert rates[-1] > 20 * 1.3  # past the peak it probes, faster and faster: a raised limit
    learner.observed(Report(successes=1), clock())  # a quiet interval: no growth
    clock.now += learning.INTERVAL_SECONDS
    learner.tick(clock())
    assert learner.rate == rates[-1]


def test_the_rate_never_falls_below_the_floor():
    clock = FakeClock()
    learner = RateLearner(clock())
    for epoch in range(200):
        learner.throttled(epoch, clock())
        clock.now += learning.DECREASE_GAP_SECONDS
    assert learner.rate == pytest.approx(learning.FLOOR_RATE)


def test_advertised_limits_are_paced_to_at_once_with_a_margin_and_never_exceeded():
    clock = FakeClock()
    learner = RateLearner(clock())
    learner.advertise(AdvertisedLimits(requests_per_minute=600, tokens_per_minute=60_000))
    assert learner.rate == pytest.approx(10 * learning.HEADER_MARGIN)
    assert learner.token_rate == pytest.approx(1000 * learning.HEADER_MARGIN)
    assert learner.source == "headers"
    for _ in range(10):
        busy_interval(learner, clock)
    assert learner.rate == pytest.approx(10 * learning.HEADER_MARGIN)  # the ceiling


# ---------------------------------------------------------------------- ledger and pacer
def test_the_ledger_learns_from_reports_and_paces_every_process_to_it():
    clock = FakeClock()
    ledger = QuotaLedger(RateLimits(), clock=clock)
    first, second = (Pacer(ledger, RateLimits(), clock=clock, sleep=clock.sleep) for _ in range(2))
    assert first.acquire() == 0 and second.acquire() == 0  # nothing learned: unpaced
    headers = AdvertisedLimits(requests_per_minute=300)
    first.succeeded(headers)  # new limits go to the ledger at once
    assert ledger.check().request_interval == pytest.approx(60 / (300 * learning.HEADER_MARGIN))
    clock.now += 0.3  # the other process's next check
    sent = []
    for _ in range(20):  # it never saw the headers: it paces to what the ledger learned
        second.acquire()
        sent.append(clock.now)
    spacing = (sent[-1] - sent[0]) / (len(sent) - 1)
    assert spacing == pytest.approx(60 / (300 * learning.HEADER_MARGIN), rel=0.01)


def test_a_decrease_voids_the_slots_a_process_holds_at_the_old_rate():
    clock = FakeClock()
    ledger = QuotaLedger(RateLimits(), clock=clock)
    pacer = Pacer(ledger, RateLimits(), clock=clock, sleep=clock.sleep)
    pacer.succeeded(AdvertisedLimits(requests_per_minute=6000))  # 95/s: chunks of ~48
    pacer.acquire()
    held, interval = len(pacer._slots), ledger.check().request_interval
    assert held > 10
    epoch = pacer.epoch
    assert pacer.throttled(0.0, epoch)
    assert not pacer.throttled(0.0, epoch)  # one per epoch and process
    clock.now += 0.3  # the next check hears of the new epoch
    pacer.acquire()
    assert pacer.epoch == epoch + 1 and ledger.check().request_interval > interval
    assert len(pacer._slots) < held - 1  # the old slots are gone, new ones are fewer


def test_configured_limits_are_kept_exactly_whatever_is_reported():
    clock = FakeClock()
    ledger = QuotaLedger(RateLimits(requests_per_minute=600), clock=clock)
    ledger.check(Report(successes=5, advertised=AdvertisedLimits(requests_per_minute=60)))
    ledger.throttled(0.1, 0)
    clock.now += 5
    assert ledger.check().request_interval == pytest.approx(0.1) and ledger.check().epoch == 0
    summary = quota_summary(ledger.stats())
    assert summary["source"] == "configured" and summary["requests_per_minute"] == 600
    assert (summary["answers"], summary["answered_429"]) == (6, 1)


def test_the_budget_failing_for_a_while_is_shared_and_a_success_ends_it():
    clock = FakeClock()
    ledger = QuotaLedger(RateLimits(), clock=clock)
    first, second = (Pacer(ledger, RateLimits(), clock=clock, sleep=clock.sleep) for _ in range(2))
    first.failed()
    first.acquire()  # its report reaches the ledger
    clock.now += 3.0
    second.acquire()  # and the other process hears since when the budget fails
    assert second.failing_for() == pytest.approx(3.0)
    first.succeeded()
    clock.now += 0.5
    first.acquire()
    clock.now += 0.5
    second.acquire()
    assert second.failing_for() == 0.0


# ---------------------------------------------------------------------- what providers say
@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        (
            {
                "x-ratelimit-limit-requests": "3000",
                "x-ratelimit-remaining-requests": "2999",
                "x-ratelimit-reset-requests": "20ms",
                "x-ratelimit-limit-tokens": "1000000",
                "x-ratelimit-remaining-tokens": "999990",
                "x-ratelimit-reset-tokens": "0s",
            },
            AdvertisedLimits(3000, 1_000_000),
        ),
        ({"x-ratelimit-remaining-requests": "9"}, None),  # Jina: remaining only, no rate
        ({"ratelimit-policy": '"burst";q=100;w=60, "daily";q=1000;w=86400'}, AdvertisedLimits(100)),
        ({"ratelimit-policy": "600;w=300"}, AdvertisedLimits(120)),
        ({"retry-after": "2"}, None),
        ({}, None),
    ],
)
def test_the_limits_an_answer_states_are_read_per_minute(headers, expected):
    assert advertised_limits(headers) == expected


def test_a_policy_without_a_window_states_no_rate():
    assert policy_per_minute("100") is None and policy_per_minute('"x";q=5;w=0') is None


def test_gemini_429s_say_how_long_to_wait_and_which_per_minute_quota_ran_out():
    ef = GoogleGenerativeAiEmbeddingFunction(api_key="k")
    error = {
        "error": {
            "code": 429,
            "status": "RESOURCE_EXHAUSTED",
            "details": [
                {
                    "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                    "violations": [
                        {"quotaId": "EmbedContentRequestsPerMinutePerProjectPerModel"},
                        {"quotaId": "EmbedContentRequestsPerDayPerProject", "quotaValue": "1000"},
                        {"quotaId": "EmbedContentRequestsPerMinutePerUser", "quotaValue": "150"},
                        {"quotaId": "EmbedTextInputTokensPerMinute", "quotaValue": "30000"},
                    ],
                },
                {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "26s"},
            ],
        }
    }
    failure = HttpFailure(429, {}, json.dumps(error))
    assert ef.server_wait(failure) == pytest.approx(26.0)
    assert ef.advertised_limits({}, failure) == AdvertisedLimits(150, 30_000)
    assert ef.server_wait(HttpFailure(429, {"retry-after": "3"}, "{}")) == 3.0
    assert ef.advertised_limits({}, HttpFailure(503, {}, json.dumps(error))) is None


def test_both_transports_hand_the_answers_headers_to_the_quota():
    headers = {"x-ratelimit-limit-requests": "3000", "x-ratelimit-limit-tokens": "1000000"}
    body = json.dumps(openai_api.answer("/v1/embeddings", {"input": ["a"], "model": "m"})[1])
    server = FakeServer(openai_api.answer)
    try:
        server.faults.append(Fault(200, body.encode(), headers))
        answer = HttpxTransport(server.url, timeout=5).send(ApiRequest("v1/embeddings", {}))
        assert isinstance(answer, Answered) and answer.headers["x-ratelimit-limit-requests"] == (
            "3000"
        )
        server.faults.append(Fault(200, body.encode(), headers))  # through the OpenAI SDK
        ef = OpenAIEmbeddingFunction("m", api_base=f"{server.url}/v1", api_key="sk-test")
        assert len(ef(["a"])) == 1
    finally:
        server.stop()
    quota = ef.quota_stats()
    assert quota is not None and quota["source"] == "headers"
    assert quota["requests_per_minute"] == pytest.approx(3000 * learning.HEADER_MARGIN)
    assert quota["tokens_per_minute"] == pytest.approx(1e6 * learning.HEADER_MARGIN)


# ---------------------------------------------------------------------- patience
def test_a_429_is_never_counted_against_max_retries():
    server = FakeServer(tei.answer)
    try:
        server.faults.extend([Fault(429, b"{}", {"retry-after-ms": "1"})] * 4)
        ef = HuggingFaceEmbeddingServer(f"{server.url}/embed", max_retries=1)
        assert len(ef(["a"])) == 1 and len(server.requests) == 5
    finally:
        server.stop()


def test_a_budget_failing_for_max_retry_seconds_ends_in_an_unavailable_error():
    server = FakeServer(tei.answer)
    try:
        server.faults.extend([Fault(503, b'{"error":"down"}')] * 1000)
        ef = HuggingFaceEmbeddingServer(
            f"{server.url}/embed", max_retry_seconds=0.4, retry_backoff_seconds=0.02
        )
        with pytest.raises(ProviderError, match=r"503 after \d+ tries over 0\.\d s") as caught:
            ef(["a"])
        assert caught.value.retryable and caught.value.unavailable
        assert "max_retry_seconds=0.4" in str(caught.value)
        assert 3 <= len(server.requests) < 30  # retried with backoff, not hammered
    finally:
        server.stop()


def test_the_shared_layer_finds_the_provider_error_under_the_fleets_and_rays_wrappers():
    error = RateLimitError("429", status=429, retryable=True, unavailable=True)
    wrapped = BatchFailedError("batch 3 failed", batch_index=3, cause=error)

    class RayTaskError(Exception):
        cause = wrapped

    assert provider_failure(RayTaskError()) is error and provider_failure(ValueError()) is None


def test_a_failed_shard_is_tried_again_stopped_on_or_failed_by_its_error():
    shard = Shard.of("memory://", (Piece("f.jsonl", "jsonl", "bytes", 0, 10, 10),))
    result, retries = JobResult("run", "snapshots/run", complete=False), ShardRetries()
    storm = ProviderError("503 after 5 tries", status=503, retryable=True)
    assert [retries.verdict(shard, storm, result) for _ in range(SHARD_ATTEMPTS)] == [
        AGAIN,
        AGAIN,
        FAILED,
    ]
    assert result.shard_retries == SHARD_ATTEMPTS - 1
    refused = AuthenticationError("401: check KEY", status=401)
    assert retries.verdict(shard, BatchFailedError("b", batch_index=0, cause=refused), result) == (
        FAILED
    )
    assert retries.verdict(shard, OSError("disk full"), result) == FAILED
    down = RateLimitError("429 over 600 s without a success", status=429, retryable=True)
    down.unavailable = True
    assert retries.verdict(shard, down, result) == STOPPED
    assert result.provider_stopped == str(down)


def test_the_summary_says_what_the_provider_allowed():
    quota = {
        "source": "429s",
        "requests_per_minute": 1187.4,
        "tokens_per_minute": None,
        "answers": 620,
        "answered_429": 19,
        "share_429": 0.0306,
        "failed": 0,
    }
    assert describe_quota(quota) == (
        "1,187 requests/min (learned from 429s); 3.1% of 620 requests answered 429"
    )


# ---------------------------------------------------------------------- jobs on Ray
RPM = 1200  # 20 requests/s: scaled down from minutes to seconds
LEARNED_AFTER = 3.0  # seconds after the first 429 (or the first answer) that learning takes


def job_spec(
    tmp_path: Path, server: RateLimitedServer, rows: int, shard_rows: int = 100, **config: object
) -> Path:
    """A job spec (TOML) embedding ``rows`` rows, 2 per request, on 2 replicas, in shards
    of ``shard_rows``."""
    source = tmp_path / "rows.jsonl"
    if not source.exists():
        source.write_text(
            "".join(json.dumps({"id": f"r{i}", "text": f"row {i}"}) + "\n" for i in range(rows))
        )
    config = {"url": server.url, "batch_size": 2, "retry_backoff_seconds": 0.05, **config}
    sections = {
        "source": {"uri": str(source), "id_column": "id"},
        "embedding": {"provider": "huggingface_server"},
        "embedding.config": config,
        "fleet": {"replicas": 2, "num_cpus": 0},
        "output": {"uri": str(tmp_path / "out"), "rows_per_shard": shard_rows},
    }
    spec = tmp_path / "job.toml"
    spec.write_text(
        "".join(
            f"[{name}]\n"
            + "".join(f"{key} = {json.dumps(value)}\n" for key, value in table.items())
            for name, table in sections.items()
        )
    )
    return spec


def run_job(tmp_path: Path, server: RateLimitedServer, rows: int, **options: Any):
    from embedfleet.job import Job

    return Job.from_toml(job_spec(tmp_path, server, rows, **options)).run(progress=False)


def accepted_rate(server: RateLimitedServer, since: float) -> float:
    """Requests/s accepted after ``since``, up to the 90th percentile of them (the
    last shards of a job leave the replicas idle in turn)."""
    times = sorted(moment for moment in server.accepted_at if moment >= since)
    end = times[int(len(times) * 0.9)]
    return sum(1 for moment in times if moment <= end) / (end - since)


@pytest.mark.usefixtures("local_ray")
def test_a_job_learns_an_unannounced_limit_from_429s(tmp_path, capsys):
    from embedfleet.cli import main

    server = RateLimitedServer(RPM)
    try:
        result = run_job(tmp_path, server, rows=600)
    finally:
        server.stop()
    assert result.complete and result.embedded == 600
    assert set(server.embedded.values()) == {1} and len(server.embedded) == 600
    share = server.refused / (server.accepted + server.refused)
    learned = min(server.refused_at) + LEARNED_AFTER
    rate = accepted_rate(server, learned) / (RPM / 60)
    print(f"429 share {share:.3f}, rate once learned {rate:.3f} of the limit")
    assert share <= 0.20
    assert rate >= 0.70
    assert result.quota is not None and result.quota["source"] == "429s"
    assert result.quota["answered_429"] >= 1 and result.quota["share_429"] <= 0.20
    main(["status", str(tmp_path / "out")])
    assert "learned from 429s" in capsys.readouterr().out


@pytest.mark.usefixtures("local_ray")
def test_a_job_paces_to_the_limit_the_provider_announces(tmp_path, capsys):
    from embedfleet.cli import EXIT_OK, main

    server = RateLimitedServer(RPM, rate_limit_headers=True)
    report = tmp_path / "report.json"
    try:
        spec = job_spec(tmp_path, server, rows=600)
        assert main(["run", str(spec), "--report", str(report)]) == EXIT_OK
    finally:
        server.stop()
    assert set(server.embedded.values()) == {1} and len(server.embedded) == 600
    share = server.refused / (server.accepted + server.refused)
    rate = accepted_rate(server, min(server.accepted_at) + LEARNED_AFTER) / (RPM / 60)
    print(f"429 share {share:.3f}, rate once learned {rate:.3f} of the limit")
    assert share <= 0.02
    assert rate >= 0.90
    quota = json.loads(report.read_text())["quota"]
    assert quota["source"] == "headers"
    assert quota["requests_per_minute"] == pytest.approx(RPM * learning.HEADER_MARGIN)
    summary = capsys.readouterr().out
    assert "learned from the provider's rate-limit headers" in summary
    assert f"{RPM * learning.HEADER_MARGIN:,.0f} requests/min" in summary


@pytest.mark.usefixtures("local_ray")
def test_a_storm_shorter_than_max_retry_seconds_is_ridden_out(tmp_path):
    server = RateLimitedServer(RPM, storm_after=30, storm_seconds=1.5)
    try:
        result = run_job(tmp_path, server, rows=200, shard_rows=20, max_retry_seconds=5)
    finally:
        server.stop()
    assert server.stormed > 0 and result.complete and not result.failed_shards
    assert set(server.embedded.values()) == {1} and len(server.embedded) == 200


@pytest.mark.usefixtures("local_ray")
def test_a_storm_longer_than_max_retry_seconds_stops_the_job_resumably(tmp_path, capsys):
    from embedfleet.cli import EXIT_FAILED, main

    # Shards of 5 requests, about 8 in flight: the first ones commit before the storm.
    server = RateLimitedServer(RPM, storm_after=60, storm_seconds=60)
    report = tmp_path / "report.json"
    try:
        spec = job_spec(tmp_path, server, rows=200, shard_rows=10, max_retry_seconds=1.5)
        assert main(["run", "--quiet", str(spec), "--report", str(report)]) == EXIT_FAILED
        stopped = json.loads(report.read_text())
        server.storm_window = None  # the provider is back
        resumed = run_job(tmp_path, server, rows=200, shard_rows=10, max_retry_seconds=1.5)
    finally:
        server.stop()
    assert not stopped["complete"] and not stopped["failed_shards"]
    assert stopped["embedded"] > 0 and stopped["shards_remaining"] > 0  # some committed
    error = capsys.readouterr().err
    for said in ("HuggingFaceEmbeddingServer", "503", "max_retry_seconds=1.5"):
        assert said in stopped["provider_stopped"] and said in error  # the provider, the cause
    assert "stopped: " in error and "re-run to resume" in error
    assert resumed.complete and resumed.resumed == stopped["embedded"]
    assert resumed.embedded + resumed.resumed == 200
    ids = embedfleet.read(str(tmp_path / "out")).to_table()["id"].to_pylist()
    assert sorted(ids) == sorted(f"r{index}" for index in range(200))  # each row once


@pytest.mark.usefixtures("local_ray")
def test_a_shard_failing_on_a_retryable_error_is_tried_again_later_in_the_run(tmp_path):
    from embedfleet.job import Job, JobSpec

    server = FakeServer(tei.answer)  # no key: local Ray workers keep the driver's old env
    server.faults.append(Fault(500, b'{"error": "oops"}'))  # max_retries=0: the shard fails
    try:
        source = tmp_path / "rows.jsonl"
        source.write_text(
            "".join(json.dumps({"id": f"r{i}", "text": f"t{i}"}) + "\n" for i in range(40))
        )
        spec = JobSpec.from_dict(
            {
                "source": {"uri": str(source), "id_column": "id"},
                "embedding": {
                    "provider": "huggingface_server",
                    "config": {"url": f"{server.url}/embed", "max_retries": 0},
                },
                "fleet": {"replicas": 2, "num_cpus": 0},
                "output": {"uri": str(tmp_path / "out")},
            }
        )
        result = Job(spec).run(progress=False)
    finally:
        server.stop()
    assert result.complete and result.embedded == 40 and not result.failed_shards
    assert result.shard_retries == 1
