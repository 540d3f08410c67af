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
class SlotGrant:
    """Slots granted by the ledger, as delays from the moment it answered."""

    requests: int
    request_delay: float  # first request slot
    request_interval: float  # spacing of the following ones
    tokens: int
    token_delay: float  # when the granted tokens start
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

    def lease(self, requests: int, tokens: int) -> SlotGrant:
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
            return SlotGrant(
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
