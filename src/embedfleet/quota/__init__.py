"""Quotas for API providers: paced requests/min and tokens/min, shared pauses, AIMD.

Providers enforce per-minute limits over short windows (a 600/min limit is often
enforced as 10/s), so a minute's budget must never go out in one burst. The
budget here is a *timeline* per dimension (GCRA, the generic cell rate
algorithm): with 300 requests/min each request books the next free 0.2 s slot,
and a request of ``n`` tokens books ``n`` token-intervals. Requests therefore
leave evenly spaced at the configured rate, whatever the number of threads or
replicas asking.

Three pieces::

    QuotaLedger          the budget itself: both timelines and the pause-until
                         time (in-process, or inside the QuotaActor)
    Pacer                one process's view: leases slots from the ledger in
                         chunks of about LEASE_SECONDS, spends them locally,
                         and sleeps until each request's slot
    AdaptiveConcurrency  in-flight requests per process: slow start, then
                         additive increase; halved on every 429 (AIMD)

In a fleet every replica of one provider shares one ledger through a named Ray
actor in the ``embedfleet`` namespace, keyed by provider + api_base + model +
a hash of the key (never the key). A replica leases a chunk of slots at a time
(LEASE_SECONDS of quota), so the actor is not a per-request round trip; slots
a replica leaves unused for STALE_SECONDS are dropped, so late slots never
add up to a burst beyond what a one-second bucket absorbs. A 429 pauses the
ledger until the server's Retry-After time: every other replica asks the
ledger about pauses at least every PAUSE_CHECK_SECONDS, drops the slots the
pause spoiled, and waits too.
"""

from __future__ import annotations

import hashlib
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from embedfleet.errors import ConfigError

#: How much quota a process leases at once, in seconds of the configured rate.
LEASE_SECONDS = 0.5
#: Leased slots unused for this long are dropped, not saved up into a burst.
STALE_SECONDS = 0.25
#: How often a process asks the ledger whether another process's 429 paused it.
PAUSE_CHECK_SECONDS = 0.25
#: Where quota actors live, so every job and fleet on a cluster finds the same one.
QUOTA_NAMESPACE = "embedfleet"
#: A quota actor nobody has called for this long exits (a per-minute budget's state is
#: stale long before): a long-lived cluster keeps no actor per key forever, and the next
#: caller with that key creates a fresh one.
QUOTA_IDLE_SECONDS = 3600.0

Clock = Callable[[], float]


@dataclass(frozen=True)
class RateLimits:
    """Configured limits; ``None`` means unlimited in that dimension."""

    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None

    def __post_init__(self) -> None:
        for name in ("requests_per_minute", "tokens_per_minute"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not value > 0):
                raise ConfigError(f"max_{name} must be a positive number or None, got {value!r}")

    @property
    def limited(self) -> bool:
        return self.requests_per_minute is not None or self.tokens_per_minute is not None


@dataclass(frozen=True)
class Lease:
    """Slots granted by the ledger, as delays from the moment it answered."""

    requests: int
    request_delay: float  # first request slot
    request_interval: float  # spacing of the following ones
    tokens: int
    token_delay: float  # when the leased tokens start
    paused_for: float  # remaining pause, seconds


class QuotaLedger:
    """The shared budget: one GCRA timeline per limited dimension, plus a pause."""

    def __init__(self, limits: RateLimits, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._next_request = 0.0
        self._next_token = 0.0
        self._paused_until = 0.0
        self.limits = limits
        self.counts = {"leases": 0, "requests": 0, "tokens": 0, "pauses": 0}

    def configure(self, limits: RateLimits) -> None:
        """Adopt new limits (the newest client's configuration wins)."""
        with self._lock:
            self.limits = limits

    def lease(self, requests: int, tokens: int) -> Lease:
        """Book ``requests`` request slots and ``tokens`` tokens on the timelines."""
        with self._lock:
            now = self._clock()
            floor = max(now, self._paused_until)
            request_start = token_start = floor
            request_interval = 0.0
            rpm, tpm = self.limits.requests_per_minute, self.limits.tokens_per_minute
            if rpm is not None and requests:
                request_interval = 60.0 / rpm
                request_start = max(floor, self._next_request)
                self._next_request = request_start + requests * request_interval
            if tpm is not None and tokens:
                token_start = max(floor, self._next_token)
                self._next_token = token_start + tokens * 60.0 / tpm
            self.counts["leases"] += 1
            self.counts["requests"] += requests
            self.counts["tokens"] += tokens
            return Lease(
                requests=requests,
                request_delay=request_start - now,
                request_interval=request_interval,
                tokens=tokens,
                token_delay=token_start - now,
                paused_for=max(0.0, self._paused_until - now),
            )

    def pause(self, seconds: float) -> None:
        """Nobody sends before ``seconds`` from now (a 429's Retry-After)."""
        with self._lock:
            self._paused_until = max(self._paused_until, self._clock() + seconds)
            self.counts["pauses"] += 1

    def paused_for(self) -> float:
        with self._lock:
            return max(0.0, self._paused_until - self._clock())

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {**self.counts, "limits": self.limits}


class QuotaActor(QuotaLedger):
    """The ledger as a named, detached Ray actor (see :func:`shared_ledger`) that exits
    after ``idle_seconds`` without a call."""

    def __init__(self, limits: RateLimits, idle_seconds: float = QUOTA_IDLE_SECONDS) -> None:
        super().__init__(limits)
        self._idle_seconds = idle_seconds
        self._last_call = time.monotonic()
        threading.Thread(target=self._exit_when_idle, name="quota-idle", daemon=True).start()

    def configure(self, limits: RateLimits) -> None:
        self._last_call = time.monotonic()
        super().configure(limits)

    def lease(self, requests: int, tokens: int) -> Lease:
        self._last_call = time.monotonic()
        return super().lease(requests, tokens)

    def pause(self, seconds: float) -> None:
        self._last_call = time.monotonic()
        super().pause(seconds)

    def paused_for(self) -> float:
        self._last_call = time.monotonic()
        return super().paused_for()

    def _exit_when_idle(self) -> None:
        import ray

        timer = threading.Event()  # never set: waits out the idle time left
        while (idle := time.monotonic() - self._last_call) < self._idle_seconds:
            timer.wait(self._idle_seconds - idle)
        ray.kill(ray.get_runtime_context().current_actor, no_restart=True)


class _LocalLedger:
    """The calls a Pacer makes, answered in this process."""

    def __init__(self, ledger: QuotaLedger) -> None:
        self.ledger = ledger

    def lease(self, requests: int, tokens: int) -> Lease:
        return self.ledger.lease(requests, tokens)

    def pause(self, seconds: float) -> None:
        self.ledger.pause(seconds)

    def paused_for(self) -> float:
        return self.ledger.paused_for()


class _RemoteLedger:
    """The same calls, answered by a QuotaActor (found again by name if it was lost)."""

    def __init__(self, key: str, limits: RateLimits) -> None:
        self.key = key
        self.limits = limits
        self.actor = shared_ledger(key, limits)

    def lease(self, requests: int, tokens: int) -> Lease:
        return self._call("lease", requests, tokens)  # type: ignore[no-any-return]

    def pause(self, seconds: float) -> None:
        self.actor.pause.remote(seconds)  # fire and forget: this process pauses locally too

    def paused_for(self) -> float:
        return self._call("paused_for")  # type: ignore[no-any-return]

    def _call(self, method: str, *args: Any) -> Any:
        import ray
        from ray.exceptions import RayActorError

        for wait in (0.0, 0.2, 1.0):  # its node died, or it exited idle: create it anew
            try:
                return ray.get(getattr(self.actor, method).remote(*args))
            except RayActorError:  # an exiting actor's name may still find it: wait a bit
                time.sleep(wait)
                self.actor = shared_ledger(self.key, self.limits)
        return ray.get(getattr(self.actor, method).remote(*args))


class Pacer:
    """Blocks each request until its slot; one per process and quota key."""

    def __init__(
        self,
        ledger: _LocalLedger | _RemoteLedger,
        limits: RateLimits,
        clock: Clock = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._ledger = ledger
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._slots: deque[float] = deque()
        self._token_cursor = 0.0
        self._token_interval = 0.0
        self._tokens_left = 0
        self._paused_until = 0.0
        self._pause_checked = float("-inf")
        self.configure(limits)

    def configure(self, limits: RateLimits) -> None:
        with self._lock:
            self.limits = limits
            rpm, tpm = limits.requests_per_minute, limits.tokens_per_minute
            self._chunk_requests = max(1, round((rpm or 0) / 60 * LEASE_SECONDS))
            self._chunk_tokens = max(1, round((tpm or 0) / 60 * LEASE_SECONDS))
            self._token_interval = 60.0 / tpm if tpm else 0.0
            self._slots.clear()
            self._tokens_left = 0

    def acquire(self, tokens: int = 0) -> float:
        """Wait until a request of ``tokens`` tokens may be sent; returns the wait."""
        with self._lock:
            wait_until = self._reserve(max(0, tokens))
        wait = wait_until - self._clock()
        if wait > 0:
            self._sleep(wait)
        return max(0.0, wait)

    def pause(self, seconds: float) -> None:
        """A 429 said wait: this process, and through the ledger every other, waits."""
        with self._lock:
            self._note_pause(self._clock() + seconds)
        self._ledger.pause(seconds)

    def _note_pause(self, until: float) -> None:
        if until <= self._paused_until:
            return
        self._paused_until = until
        while self._slots and self._slots[0] < until:  # spoiled by the pause
            self._slots.popleft()
        if self._token_cursor < until:
            self._tokens_left = 0

    def _reserve(self, tokens: int) -> float:
        now = self._clock()
        if now - self._pause_checked >= PAUSE_CHECK_SECONDS:  # another process's 429?
            self._pause_checked = now
            self._note_pause(now + self._ledger.paused_for())
        if not self.limits.limited:
            return self._paused_until
        rpm, tpm = self.limits.requests_per_minute, self.limits.tokens_per_minute
        stale = now - STALE_SECONDS  # slots left unused while idle are not saved up
        while self._slots and self._slots[0] < stale:
            self._slots.popleft()
        if self._tokens_left and self._token_cursor < stale:
            self._tokens_left = 0
        need = tokens if tpm is not None else 0  # tokens this request still has to book
        token_time = now
        while True:
            need_requests = rpm is not None and not self._slots
            need_tokens = need > self._tokens_left
            if not (need_requests or need_tokens):
                break
            extra = max(self._chunk_tokens, need - self._tokens_left) if need_tokens else 0
            lease = self._ledger.lease(self._chunk_requests if need_requests else 0, extra)
            self._note_pause(now + lease.paused_for)  # may spoil what is left: loop again
            if need_requests:
                first = now + lease.request_delay
                self._slots.extend(
                    first + index * lease.request_interval for index in range(lease.requests)
                )
            if need_tokens:
                # the leftover was booked earlier: this request spends it, then the start
                # of the new lease, and goes when the new lease starts
                token_time = now + lease.token_delay
                from_lease = need - self._tokens_left
                if from_lease > extra:  # a pause spoiled the leftover; book the rest
                    need -= self._tokens_left + extra
                    self._tokens_left = 0
                    continue
                self._token_cursor = token_time + from_lease * self._token_interval
                self._tokens_left = extra - from_lease
                need = 0
        if need:  # enough was left from earlier leases
            token_time = self._token_cursor
            self._token_cursor += need * self._token_interval
            self._tokens_left -= need
        request_time = self._slots.popleft() if rpm is not None else now
        return max(request_time, token_time, self._paused_until)


class AdaptiveConcurrency:
    """How many requests one process keeps in flight (AIMD, like TCP's window).

    With no configured rate limit the right concurrency is unknown: start at 1,
    add one per success until the first 429 (slow start), then add ``1/limit``
    per success (one per round) and halve on every 429. ``cap`` bounds it.
    With ``adaptive=False`` the limit is simply ``cap``.
    """

    def __init__(self, cap: int, *, adaptive: bool = True) -> None:
        if not isinstance(cap, int) or isinstance(cap, bool) or cap < 1:
            raise ConfigError(f"max_concurrency must be a positive integer, got {cap!r}")
        self.cap = cap
        self.adaptive = adaptive
        self.limit = 1.0 if adaptive else float(cap)
        self._slow_start = adaptive
        self._in_flight = 0
        self._condition = threading.Condition()

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Hold one in-flight slot for the duration of a request."""
        with self._condition:
            self._condition.wait_for(lambda: self._in_flight < int(self.limit))
            self._in_flight += 1
        try:
            yield
        finally:
            with self._condition:
                self._in_flight -= 1
                self._condition.notify_all()

    def succeeded(self) -> None:
        if not self.adaptive:
            return
        with self._condition:
            step = 1.0 if self._slow_start else 1.0 / self.limit
            self.limit = min(float(self.cap), self.limit + step)
            self._condition.notify_all()

    def throttled(self) -> None:
        if not self.adaptive:
            return
        with self._condition:
            self._slow_start = False
            self.limit = max(1.0, self.limit / 2)


def quota_key(provider: str, api_base: str, model: str | None, api_key: str | None) -> str:
    """A name for one budget: never contains the key, only a hash mixed with the rest."""
    key_hash = hashlib.sha256((api_key or "").encode()).hexdigest()
    material = "\0".join([provider, api_base, model or "", key_hash])
    return f"quota-{provider}-{hashlib.sha256(material.encode()).hexdigest()[:20]}"


_local_ledgers: dict[str, QuotaLedger] = {}
_local_lock = threading.Lock()


def pacer_for(key: str, limits: RateLimits, sleep: Callable[[float], None] = time.sleep) -> Pacer:
    """A Pacer on the shared budget ``key``: the quota actor inside a Ray worker (a fleet
    replica, a job's task), else a ledger shared by this process's functions."""
    if _in_ray_worker():
        return Pacer(_RemoteLedger(key, limits), limits, sleep=sleep)
    with _local_lock:
        ledger = _local_ledgers.get(key)
        if ledger is None:
            ledger = _local_ledgers[key] = QuotaLedger(limits)
        else:
            ledger.configure(limits)
    return Pacer(_LocalLedger(ledger), limits, sleep=sleep)


def _in_ray_worker() -> bool:
    """True in a Ray actor or task process, False in a driver or without Ray."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return False
    return bool(ray.get_runtime_context().worker.mode == ray.WORKER_MODE)


def shared_ledger(key: str, limits: RateLimits, idle_seconds: float = QUOTA_IDLE_SECONDS) -> Any:
    """The named quota actor for ``key``, created by whoever asks first.

    Detached, so it outlives the replica that created it: jobs and fleets that
    come later on the same cluster, with the same key, keep sharing its budget.
    It exits after ``idle_seconds`` without a call (a newly created one only).
    """
    import ray

    actor = (
        ray.remote(QuotaActor)
        .options(
            name=key,
            namespace=QUOTA_NAMESPACE,
            get_if_exists=True,
            lifetime="detached",
            num_cpus=0,
        )
        .remote(limits, idle_seconds)
    )
    actor.configure.remote(limits)
    return actor
