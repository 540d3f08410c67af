"""One process's view of a shared budget: slots leased in chunks, spent locally.

Asking the ledger for every request would make a fleet's quota actor a round
trip per request, so a process leases about LEASE_SECONDS of slots at a time and
sleeps each request until its own slot. Two things keep those local slots
honest: slots left unused for STALE_SECONDS are dropped, so late slots never add
up to a burst beyond what a one-second bucket absorbs; and the ledger is asked
at least every PAUSE_CHECK_SECONDS whether a 429 elsewhere paused the budget, in
which case the slots the pause spoiled are dropped and this process waits too.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

from embedfleet.quota.limits import Clock, RateLimits, SlotGrant

#: How much quota a process leases at once, in seconds of the configured rate.
LEASE_SECONDS = 0.5
#: Leased slots unused for this long are dropped, not saved up into a burst.
STALE_SECONDS = 0.25
#: How often a process asks the ledger whether another process's 429 paused it.
PAUSE_CHECK_SECONDS = 0.25


class Ledger(Protocol):
    """The calls a Pacer makes: a :class:`~embedfleet.quota.limits.QuotaLedger` in this
    process, or the quota actor (:class:`~embedfleet.quota.shared.RemoteLedger`)."""

    def lease(self, requests: int, tokens: int) -> SlotGrant: ...

    def pause(self, seconds: float) -> None: ...

    def paused_for(self) -> float: ...


class Pacer:
    """Blocks each request until its slot; one per process and quota key."""

    def __init__(
        self,
        ledger: Ledger,
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
            grant = self._ledger.lease(self._chunk_requests if need_requests else 0, extra)
            self._note_pause(now + grant.paused_for)  # may spoil what is left: loop again
            if need_requests:
                first = now + grant.request_delay
                self._slots.extend(
                    first + index * grant.request_interval for index in range(grant.requests)
                )
            if need_tokens:
                # the leftover was booked earlier: this request spends it, then the start
                # of the new grant, and goes when the new grant starts
                token_time = now + grant.token_delay
                from_grant = need - self._tokens_left
                if from_grant > extra:  # a pause spoiled the leftover; book the rest
                    need -= self._tokens_left + extra
                    self._tokens_left = 0
                    continue
                self._token_cursor = token_time + from_grant * self._token_interval
                self._tokens_left = extra - from_grant
                need = 0
        if need:  # enough was left from earlier grants
            token_time = self._token_cursor
            self._token_cursor += need * self._token_interval
            self._tokens_left -= need
        request_time = self._slots.popleft() if rpm is not None else now
        return max(request_time, token_time, self._paused_until)
