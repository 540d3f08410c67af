"""How many requests one process keeps in flight, when nobody said how many.

Without a configured rate limit the right concurrency is unknown, and a fixed
guess either wastes the provider's capacity or earns a stream of 429s. TCP faces
the same problem with its window, so this borrows its answer: AIMD (additive
increase, multiplicative decrease).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from embedfleet.errors import ConfigError


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
