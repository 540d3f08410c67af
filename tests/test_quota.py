"""Quotas: paced timelines, leases shared by several processes, pauses, AIMD.

The pacing logic runs on a fake clock (sleeping advances it), so the checks are
exact and instant; the shared Ray actor and the 429 pause are checked with a
real fleet against a real HTTP server.
"""

from __future__ import annotations

import itertools
import threading
import time

import pytest

from embedfleet.errors import ConfigError
from embedfleet.quota import (
    PAUSE_CHECK_SECONDS,
    QUOTA_NAMESPACE,
    AdaptiveConcurrency,
    Pacer,
    QuotaLedger,
    RateLimits,
    quota_key,
)
from embedfleet.quota.shared import RemoteLedger
from tests.fakes.clock import FakeClock


def pacers(limits: RateLimits, count: int, clock: FakeClock) -> list[Pacer]:
    """``count`` processes sharing one ledger (as a fleet's replicas share an actor)."""
    ledger = QuotaLedger(limits, clock=clock)
    return [Pacer(ledger, limits, clock=clock, sleep=clock.sleep) for _ in range(count)]


def max_in_window(times: list[float], window: float) -> int:
    times = sorted(times)
    best, start = 0, 0
    for end, moment in enumerate(times):
        while moment - times[start] >= window - 1e-9:
            start += 1
        best = max(best, end - start + 1)
    return best


def test_requests_leave_evenly_spaced_at_the_configured_rate():
    clock = FakeClock()
    (pacer,) = pacers(RateLimits(requests_per_minute=600), 1, clock)
    sent = []
    for _ in range(50):
        pacer.acquire()
        sent.append(clock.now)
    gaps = [later - earlier for earlier, later in itertools.pairwise(sent)]
    assert min(gaps) == pytest.approx(0.1) and max(gaps) == pytest.approx(0.1)
    assert max_in_window(sent, 1.0) == 10  # never a minute's budget in a burst


def test_replicas_sharing_a_ledger_never_exceed_the_rate_together():
    clock = FakeClock()
    ledger = QuotaLedger(RateLimits(requests_per_minute=300), clock=clock)
    # many threads waiting at once: nobody's sleep moves the clock, each gets its slot
    replicas = [
        Pacer(ledger, RateLimits(requests_per_minute=300), clock=clock, sleep=lambda _: None)
        for _ in range(4)
    ]
    sent = []
    for turn in range(200):  # replicas ask in an irregular order
        sent.append(clock.now + replicas[(turn * 7 + turn // 3) % 4].acquire())
    assert len(set(sent)) == 200  # every request has a slot of its own
    # 300/min = one per 0.2 s; slots leased but not (yet) used leave at most a lease's gap
    assert 199 * 0.2 - 1e-6 <= max(sent) - min(sent) <= (199 + 4 * 3) * 0.2
    assert max_in_window(sent, 1.0) == 5


def test_tokens_per_minute_paces_by_the_size_of_each_request():
    clock = FakeClock()
    (pacer,) = pacers(RateLimits(tokens_per_minute=6000), 1, clock)  # 100 tokens/s
    start = clock.now
    for _ in range(20):
        pacer.acquire(tokens=50)
    # 20 x 50 = 1000 tokens booked; the last request starts once 950 went before it
    assert clock.now - start == pytest.approx(9.5, abs=0.3)


def test_a_request_larger_than_a_lease_still_goes_out_in_turn():
    clock = FakeClock()
    (pacer,) = pacers(RateLimits(tokens_per_minute=600), 1, clock)  # 10 tokens/s
    start = clock.now
    pacer.acquire(tokens=100)
    pacer.acquire(tokens=100)
    assert clock.now - start == pytest.approx(10.0, abs=0.5)


def test_a_pause_holds_every_process_on_the_ledger():
    clock = FakeClock()
    first, second = pacers(RateLimits(requests_per_minute=6000), 2, clock)
    first.acquire()
    second.acquire()
    first.pause(3.0)  # a 429 with Retry-After: 3
    paused_at = clock.now
    sent = []
    for _ in range(60):
        second.acquire()
        sent.append(clock.now)
    during_pause = [moment for moment in sent if moment < paused_at + 3.0]
    # the other process learns of the pause at its next check, and waits it out
    assert all(moment <= paused_at + PAUSE_CHECK_SECONDS for moment in during_pause)
    assert len(during_pause) < len(sent)


def test_without_limits_a_pause_is_still_shared():
    clock = FakeClock()
    first, second = pacers(RateLimits(), 2, clock)
    assert second.acquire() == 0  # unlimited: no wait
    first.pause(2.0)
    clock.now += 0.5  # after a pause check interval the other process learns of it
    waited = second.acquire()
    assert waited == pytest.approx(1.5)


def test_limits_must_be_positive():
    with pytest.raises(ConfigError, match="max_requests_per_minute"):
        RateLimits(requests_per_minute=0)
    with pytest.raises(ConfigError, match="max_tokens_per_minute"):
        RateLimits(tokens_per_minute=-5)


def test_concurrency_starts_small_grows_and_halves_on_429():
    limiter = AdaptiveConcurrency(16)
    assert limiter.limit == 1
    for _ in range(5):
        limiter.succeeded()
    assert limiter.limit == 6  # slow start: one more per success
    limiter.throttled()
    assert limiter.limit == 3
    for _ in range(3):
        limiter.succeeded()
    assert 3 < limiter.limit < 4.1  # congestion avoidance: about one per round of 3
    for _ in range(500):
        limiter.succeeded()
    assert limiter.limit == 16  # never above the cap
    fixed = AdaptiveConcurrency(4, adaptive=False)
    fixed.throttled()
    assert fixed.limit == 4


def test_concurrency_slots_bound_requests_in_flight():
    limiter = AdaptiveConcurrency(2, adaptive=False)
    inside, most = 0, 0
    lock = threading.Lock()
    release = threading.Event()
    entered = threading.Semaphore(0)

    def work() -> None:
        nonlocal inside, most
        with limiter.slot():
            with lock:
                inside += 1
                most = max(most, inside)
            entered.release()
            release.wait(timeout=10)
            with lock:
                inside -= 1

    threads = [threading.Thread(target=work) for _ in range(5)]
    for thread in threads:
        thread.start()
    entered.acquire(timeout=10)
    entered.acquire(timeout=10)
    assert not entered.acquire(timeout=0.2)  # a third cannot enter while two are inside
    release.set()
    for thread in threads:
        thread.join(timeout=10)
    assert most == 2


def test_quota_key_never_contains_the_key_and_separates_budgets():
    secret = "sk-canary-quota-0001"
    name = quota_key("openai", "https://api.example/v1", "text-embedding-3-small", secret)
    assert secret not in name and "canary" not in name
    other_key = quota_key("openai", "https://api.example/v1", "text-embedding-3-small", "sk-2")
    other_model = quota_key("openai", "https://api.example/v1", "text-embedding-3-large", secret)
    assert len({name, other_key, other_model}) == 3
    assert name == quota_key("openai", "https://api.example/v1", "text-embedding-3-small", secret)
    assert QUOTA_NAMESPACE == "embedfleet"


# ---------------------------------------------------------------------- real server, real Ray
@pytest.fixture
def limited_server():
    from embedfleet.testing import RateLimitedServer

    servers = []

    def start(requests_per_minute: float) -> RateLimitedServer:
        servers.append(RateLimitedServer(requests_per_minute))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


def test_a_paced_fleet_shares_one_named_actor_and_is_never_refused(local_ray, limited_server):
    import embedfleet
    from embedfleet.embedding_functions import HuggingFaceEmbeddingServer

    server = limited_server(1200)  # 20/s, the bucket holds 20
    ef = HuggingFaceEmbeddingServer(server.url, max_requests_per_minute=1200, batch_size=4)
    texts = [f"paced text {index}" for index in range(160)]  # 40 requests
    with embedfleet.remote(ef, replicas=2, name="quota-shared") as fleet:
        assert len(fleet(texts)) == len(texts)
    actor = local_ray.get_actor(
        quota_key("huggingface_server", server.url, None, None), namespace=QUOTA_NAMESPACE
    )
    stats = local_ray.get(actor.stats.remote())
    assert stats["requests"] >= 40  # both replicas booked their slots on this one actor
    assert stats["leases"] < stats["requests"]  # in chunks, not a round trip per request
    assert server.refused == 0
    assert set(server.embedded.values()) == {1} and set(server.embedded) == set(texts)


def test_a_429_pauses_the_shared_budget_and_nothing_is_lost(local_ray, limited_server):
    import embedfleet
    from embedfleet.embedding_functions import HuggingFaceEmbeddingServer

    server = limited_server(600)  # the client believes in four times more
    ef = HuggingFaceEmbeddingServer(
        server.url, max_requests_per_minute=2400, batch_size=2, max_retries=20
    )
    texts = [f"over quota {index}" for index in range(120)]
    with embedfleet.remote(ef, replicas=2, name="quota-paused") as fleet:
        vectors = fleet(texts)
    assert len(vectors) == len(texts) and server.refused > 0
    actor = local_ray.get_actor(
        quota_key("huggingface_server", server.url, None, None), namespace=QUOTA_NAMESPACE
    )
    assert local_ray.get(actor.stats.remote())["pauses"] >= 1
    assert set(server.embedded.values()) == {1} and set(server.embedded) == set(texts)


def test_without_limits_concurrency_backs_off_on_429_in_process(limited_server):
    from embedfleet.embedding_functions import HuggingFaceEmbeddingServer

    server = limited_server(600)
    ef = HuggingFaceEmbeddingServer(server.url, batch_size=1, max_concurrency=8, max_retries=30)
    texts = [f"unlimited {index}" for index in range(60)]
    assert len(ef(texts)) == len(texts)
    assert set(server.embedded.values()) == {1} and set(server.embedded) == set(texts)
    assert server.refused > 0  # 60 instant requests against 10/s: the bucket ran dry
    assert not ef._concurrency._slow_start  # so a 429 ended slow start and halved the window


def test_a_pause_while_both_limits_are_set_never_loses_a_slot():
    clock = FakeClock()
    limits = RateLimits(requests_per_minute=600, tokens_per_minute=6000)
    first, second = pacers(limits, 2, clock)
    second.acquire(10)  # holds request slots and a little token budget
    first.pause(5.0)  # another replica's 429
    paused_at = clock.now
    second.acquire(100)  # needs more tokens: a token lease that reports the pause
    assert clock.now >= paused_at + 5.0 - 1e-9
    for _ in range(20):  # and keeps going, at both rates
        second.acquire(50)
    assert clock.now - paused_at == pytest.approx(5.0 + 21 * 50 / 100, abs=1.0)


def test_an_idle_quota_actor_exits_and_the_next_caller_gets_a_fresh_one(local_ray):
    from embedfleet.quota import shared_ledger

    limits = RateLimits(requests_per_minute=6000)
    key = "quota-idle-test"
    actor = shared_ledger(key, limits, idle_seconds=2.0)
    ledger = RemoteLedger(key, limits)  # what a replica holds: the same actor, by name
    timer = threading.Event()
    in_use_until = time.monotonic() + 4.0  # twice the idle time, with calls 0.25 s apart
    while time.monotonic() < in_use_until:
        local_ray.get(actor.lease.remote(1, 0))
        timer.wait(0.25)
    assert local_ray.get(actor.stats.remote())["leases"] >= 8  # kept while in use
    deadline = time.monotonic() + 60.0
    while True:  # then idle: it exits by itself
        try:
            local_ray.get_actor(key, namespace=QUOTA_NAMESPACE)
        except ValueError:
            break
        assert time.monotonic() < deadline, "an idle quota actor did not exit"
        timer.wait(0.2)
    ledger.lease(1, 0)  # a process still holding the old handle: it creates a fresh one
    fresh = local_ray.get_actor(key, namespace=QUOTA_NAMESPACE)
    assert local_ray.get(fresh.stats.remote())["leases"] == 1  # a new budget, not the old
    local_ray.kill(fresh)
