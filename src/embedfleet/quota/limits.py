"""The budget itself: configured limits, and the ledger that books them on timelines.

Providers enforce per-minute limits over short windows (a 600/min limit is often
enforced as 10/s), so a minute's budget must never go out in one burst. The
ledger therefore keeps a *timeline* per dimension (GCRA, the generic cell rate
algorithm) instead of a counter per minute: with 300 requests/min each request
books the next free 0.2 s slot, and a request of ``n`` tokens books ``n``
token-intervals. Requests leave evenly spaced at the configured rate, whatever
the number of threads or replicas asking.

The ledger answers with delays, not absolute times, because in a fleet it runs
in another process (the quota actor, :mod:`embedfleet.quota.shared`) whose
monotonic clock means nothing to the caller.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from embedfleet.errors import ConfigError
from embedfleet.quota.learning import RateLearner, Report

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


#: With a learned rate, slots are booked at most this far ahead: a process asking for
#: more is told when to come back. Slots booked at a rate keep it, so a queue of them
#: booked long ahead would hold the rate back for that long once the rate grows.
BOOK_AHEAD_SECONDS = 1.0


@dataclass(frozen=True)
class LedgerState:
    """What every process must know of the shared budget, as of the ledger's answer
    (times are delays from that moment: the ledger's clock means nothing elsewhere)."""

    paused_for: float = 0.0  # remaining pause, seconds
    epoch: int = 0  # increments whenever the learned rate drops: older slots are void
    request_interval: float = 0.0  # seconds between request slots; 0: not paced
    token_interval: float = 0.0  # seconds per token; 0: not paced
    failing_for: float | None = None  # since the first failure after the last success


@dataclass(frozen=True)
class SlotGrant:
    """Slots granted by the ledger, as delays from the moment it answered, with the
    budget's state at that moment. ``requests == 0`` when some were asked for: none
    can be booked yet, ask again after ``request_delay``."""

    requests: int
    request_delay: float  # first request slot
    request_interval: float  # spacing of the following ones (0: not paced)
    tokens: int
    token_delay: float  # when the granted tokens start
    paused_for: float  # remaining pause, seconds
    epoch: int = 0
    token_interval: float = 0.0
    failing_for: float | None = None


class QuotaLedger:
    """The shared budget: one GCRA timeline per paced dimension, plus a pause.

    With configured limits the timelines run at exactly those rates. With none, the
    rates are learned (:class:`~embedfleet.quota.learning.RateLearner`) from what the
    processes report: successes and advertised limits ride along with the leases and
    checks they make anyway, and a 429 (:meth:`throttled`) arrives at once.
    """

    def __init__(self, limits: RateLimits, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._next_request = 0.0
        self._next_token = 0.0
        self._paused_until = 0.0
        self._failing_since: float | None = None
        self.limits = limits
        self.learner = RateLearner(clock())
        self.counts = {
            "leases": 0,
            "requests": 0,
            "tokens": 0,
            "pauses": 0,
            "succeeded": 0,
            "throttled": 0,
            "failed": 0,
        }

    def configure(self, limits: RateLimits) -> None:
        """Adopt new limits (the newest client's configuration wins)."""
        with self._lock:
            self.limits = limits

    def lease(self, requests: int, tokens: int, report: Report | None = None) -> SlotGrant:
        """Book ``requests`` request slots and ``tokens`` tokens on the timelines."""
        with self._lock:
            now = self._clock()
            self._observe(report, now)
            floor = max(now, self._paused_until)
            request_start = token_start = floor
            request_interval, token_interval = self._intervals(now)
            ahead = self._next_request - floor
            if not self.limits.limited and requests and ahead > BOOK_AHEAD_SECONDS:
                requests = tokens = 0  # booked far enough ahead: come back (see BOOK_AHEAD)
                request_start = self._next_request - BOOK_AHEAD_SECONDS
            if request_interval and requests:
                request_start = max(floor, self._next_request)
                self._next_request = request_start + requests * request_interval
            if token_interval and tokens:
                token_start = max(floor, self._next_token)
                self._next_token = token_start + tokens * token_interval
            self.counts["leases"] += 1
            self.counts["requests"] += requests
            self.counts["tokens"] += tokens
            return SlotGrant(
                requests=requests,
                request_delay=request_start - now,
                request_interval=request_interval,
                tokens=tokens,
                token_delay=token_start - now,
                paused_for=max(0.0, self._paused_until - now),
                epoch=self.learner.epoch,
                token_interval=token_interval,
                failing_for=self._failing_for(now),
            )

    def check(self, report: Report | None = None) -> LedgerState:
        """The budget's state (pause, epoch, rates), taking ``report`` into account."""
        with self._lock:
            now = self._clock()
            self._observe(report, now)
            request_interval, token_interval = self._intervals(now)
            return LedgerState(
                paused_for=max(0.0, self._paused_until - now),
                epoch=self.learner.epoch,
                request_interval=request_interval,
                token_interval=token_interval,
                failing_for=self._failing_for(now),
            )

    def throttled(self, seconds: float, epoch: int, report: Report | None = None) -> None:
        """A 429 on a request sent in ``epoch``: everyone waits ``seconds``, and without
        configured limits the learned rate drops (once per epoch)."""
        with self._lock:
            now = self._clock()
            self._observe(report, now)
            self.counts["throttled"] += 1
            self._paused_until = max(self._paused_until, now + seconds)
            self.counts["pauses"] += 1
            if self._failing_since is None:
                self._failing_since = now
            if not self.limits.limited and self.learner.throttled(epoch, now):
                # slots booked ahead at the old rate are void: replicas drop them
                self._next_request = min(self._next_request, max(now, self._paused_until))

    def pause(self, seconds: float) -> None:
        """Nobody sends before ``seconds`` from now (a 429's Retry-After)."""
        with self._lock:
            self._paused_until = max(self._paused_until, self._clock() + seconds)
            self.counts["pauses"] += 1

    def paused_for(self) -> float:
        with self._lock:
            return max(0.0, self._paused_until - self._clock())

    def stats(self) -> dict[str, Any]:
        """Counts, configured limits, and what was learned (``learned``, per minute)."""
        with self._lock:
            self.learner.tick(self._clock())
            return {**self.counts, "limits": self.limits, "learned": self.learner.describe()}

    def _intervals(self, now: float) -> tuple[float, float]:
        """Seconds per request and per token, configured or learned (0: not paced)."""
        if self.limits.limited:
            rpm, tpm = self.limits.requests_per_minute, self.limits.tokens_per_minute
            return (60.0 / rpm if rpm else 0.0), (60.0 / tpm if tpm else 0.0)
        self.learner.tick(now)
        rate, token_rate = self.learner.rate, self.learner.token_rate
        return (1.0 / rate if rate else 0.0), (1.0 / token_rate if token_rate else 0.0)

    def _observe(self, report: Report | None, now: float) -> None:
        if not report:
            return
        self.counts["succeeded"] += report.successes
        self.counts["failed"] += report.failures
        if report.successes:
            self._failing_since = None
        elif report.failures and self._failing_since is None:
            self._failing_since = now
        if not self.limits.limited:
            self.learner.observed(report, now)

    def _failing_for(self, now: float) -> float | None:
        return None if self._failing_since is None else now - self._failing_since


def quota_summary(stats: dict[str, Any], since: dict[str, Any] | None = None) -> dict[str, Any]:
    """A budget's :meth:`QuotaLedger.stats` as a run reports them (JSON): the rates it
    paced to and where they came from (``configured``, ``headers``, ``429s``, or
    ``unpaced``: no limit met yet), and the answers counted after ``since`` (an
    earlier summary of the same budget), with the share answered 429."""
    before = since or {}
    counts = {
        "throttled": stats.get("throttled", 0) - before.get("answered_429", 0),
        "failed": stats.get("failed", 0) - before.get("failed", 0),
    }
    answers = sum(stats.get(key, 0) for key in _ANSWERS) - before.get("answers", 0)
    limits: RateLimits = stats["limits"]
    if limits.limited:
        source, rpm, tpm = "configured", limits.requests_per_minute, limits.tokens_per_minute
    else:
        learned = stats["learned"]
        source = learned["source"]
        rpm, tpm = learned["requests_per_minute"], learned["tokens_per_minute"]
    return {
        "source": source,
        "requests_per_minute": None if rpm is None else round(rpm, 1),
        "tokens_per_minute": None if tpm is None else round(tpm),
        "answers": answers,
        "answered_429": counts["throttled"],
        "share_429": round(counts["throttled"] / answers, 4) if answers else 0.0,
        "failed": counts["failed"],
    }


_ANSWERS = ("succeeded", "throttled", "failed")
