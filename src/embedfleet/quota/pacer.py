"""One process's view of a shared budget: slots leased in chunks, spent locally.

Asking the ledger for every request would make a fleet's quota actor a round
trip per request, so a process leases about LEASE_SECONDS of slots at a time and
sleeps each request until its own slot. Two things keep those local slots
honest: slots left unused for STALE_SECONDS are dropped, so late slots never add
up to a burst beyond what a one-second bucket absorbs; and the ledger is asked
at least every PAUSE_CHECK_SECONDS whether a 429 elsewhere paused the budget or
lowered its learned rate (a new epoch), in which case the slots that spoiled are
dropped and this process waits too.

The same check carries this process's report (successes, failures, advertised
limits) to the ledger, so learning costs no extra round trip; only a 429 is sent
at once (:meth:`Pacer.throttled`), because every replica should slow down now.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

from embedfleet.quota.learning import AdvertisedLimits, Report
from embedfleet.quota.limits import Clock, LedgerState, RateLimits, SlotGrant

#: How much quota a process leases at once, in seconds of the configured rate.
LEASE_SECONDS = 0.5
#: Leased slots unused for this long are dropped, not saved up into a burst.
STALE_SECONDS = 0.25
#: How often a process asks the ledger whether another process's 429 paused it (and
#: reports what it saw).
PAUSE_CHECK_SECONDS = 0.25


class Ledger(Protocol):
    """The calls a Pacer makes: a :class:`~embedfleet.quota.limits.QuotaLedger` in this
    process, or the quota actor (:class:`~embedfleet.quota.shared.RemoteLedger`)."""

    def lease(self, requests: int, tokens: int, report: Report | None = None) -> SlotGrant: ...

    def check(self, report: Report | None = None) -> LedgerState: ...

    def throttled(self, seconds: float, epoch: int, report: Report | None = None) -> None: ...

    def pause(self, seconds: float) -> None: ...


class Pacer:
    """Blocks each request until its slot; one per process and quota key.

    It also keeps this process's side of learning: what it saw since its last report
    (:meth:`succeeded`, :meth:`failed`), the epoch its slots belong to, and since when
    the budget has been failing (:meth:`failing_for`, merged with the ledger's view).
    """

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
        self._tokens_left = 0
        self._paused_until = 0.0
        self._pause_checked = float("-inf")
        self.epoch = 0
        self._throttled_epoch = -1
        self._successes = 0
        self._failures = 0
        self._advertised: AdvertisedLimits | None = None
        self._advertised_sent: AdvertisedLimits | None = None
        self._failing_since: float | None = None
        self._book_again = 0.0
        self.configure(limits)

    def configure(self, limits: RateLimits) -> None:
        with self._lock:
            self.limits = limits
            rpm, tpm = limits.requests_per_minute, limits.tokens_per_minute
            self._set_intervals(60.0 / rpm if rpm else 0.0, 60.0 / tpm if tpm else 0.0)
            self._slots.clear()
            self._tokens_left = 0

    def acquire(self, tokens: int = 0) -> float:
        """Wait until a request of ``tokens`` tokens may be sent; returns the wait.

        A slot of an epoch that ended while waiting for it (the learned rate dropped)
        is given up for one at the new rate."""
        waited = 0.0
        while True:
            with self._lock:
                wait_until = self._reserve(max(0, tokens))
                now, epoch = self._clock(), self.epoch
            if wait_until is None:  # the ledger booked far enough ahead: ask again then
                pause = max(0.001, min(PAUSE_CHECK_SECONDS, self._book_again - now))
            else:
                pause = max(0.0, wait_until - now)
            if pause > 0:
                self._sleep(pause)
                waited += pause
            if wait_until is not None and (self.epoch == epoch or not pause):
                return waited

    def pause(self, seconds: float) -> None:
        """A 429 said wait: this process, and through the ledger every other, waits."""
        with self._lock:
            self._note_pause(self._clock() + seconds)
        self._ledger.pause(seconds)

    # ------------------------------------------------------------------ what was seen
    def succeeded(self, advertised: AdvertisedLimits | None = None) -> None:
        """A request was answered: reported with the next lease or check (at once when
        it brought limits not seen before: every replica should pace to them now)."""
        with self._lock:
            self._successes += 1
            self._failing_since = None
            if not advertised:
                return
            self._advertised = advertised
            if advertised == self._advertised_sent:
                return
            self._advertised_sent = advertised
            self._pause_checked = self._clock()
            self._adopt(self._pause_checked, self._ledger.check(self._take_report()))

    def failed(self, advertised: AdvertisedLimits | None = None) -> None:
        """A request failed with something other than a 429 (or got no answer)."""
        with self._lock:
            self._failures += 1
            if self._failing_since is None:
                self._failing_since = self._clock()
            if advertised:
                self._advertised = advertised

    def throttled(
        self, seconds: float, epoch: int, advertised: AdvertisedLimits | None = None
    ) -> bool:
        """A 429 on a request sent in ``epoch`` (read :attr:`epoch` after ``acquire``):
        every process waits ``seconds``, and the ledger learns of it now. Returns
        whether it is this process's first 429 of the current epoch (the others are
        echoes of the same excess, from requests already in flight)."""
        with self._lock:
            now = self._clock()
            self._note_pause(now + seconds)
            if self._failing_since is None:
                self._failing_since = now
            if advertised:
                self._advertised = advertised
            first = epoch == self.epoch and epoch != self._throttled_epoch
            if first:
                self._throttled_epoch = epoch
            report = self._take_report()
            self._ledger.throttled(seconds, epoch, report)
            if self._request_interval == 0 and not self.limits.limited:
                # nothing paced yet: hear the rate the ledger now sets before sending more
                self._pause_checked = now
                self._adopt(now, self._ledger.check())
        return first

    def failing_for(self) -> float:
        """Seconds since the budget last succeeded, counted from the first failure after
        that success (0 while it is not failing), as this process last heard."""
        with self._lock:
            if self._failing_since is None:
                return 0.0
            return max(0.0, self._clock() - self._failing_since)

    # ------------------------------------------------------------------ inside
    def _set_intervals(self, request_interval: float, token_interval: float) -> None:
        self._request_interval = request_interval
        self._token_interval = token_interval
        per_lease = LEASE_SECONDS / request_interval if request_interval else 0
        self._chunk_requests = max(1, round(per_lease))
        tokens_per_lease = LEASE_SECONDS / token_interval if token_interval else 0
        self._chunk_tokens = max(1, round(tokens_per_lease))

    def _take_report(self) -> Report | None:
        if not (self._successes or self._failures or self._advertised):
            return None
        report = Report(self._successes, self._failures, self._advertised)
        self._successes = self._failures = 0
        self._advertised = None
        return report

    def _adopt(self, now: float, state: LedgerState | SlotGrant) -> None:
        """Take in the ledger's view: its pause, its epoch (a new one voids the slots
        held), its rates and since when the budget has been failing."""
        if state.epoch != self.epoch:
            self.epoch = state.epoch
            self._slots.clear()
        self._note_pause(now + state.paused_for)
        if not self.limits.limited:
            self._set_intervals(state.request_interval, state.token_interval)
        if state.failing_for is None:
            self._failing_since = None
        elif self._failing_since is None or now - state.failing_for < self._failing_since:
            self._failing_since = now - state.failing_for

    def _note_pause(self, until: float) -> None:
        if until <= self._paused_until:
            return
        self._paused_until = until
        while self._slots and self._slots[0] < until:  # spoiled by the pause
            self._slots.popleft()
        if self._token_cursor < until:
            self._tokens_left = 0

    def _reserve(self, tokens: int) -> float | None:
        now = self._clock()
        if now - self._pause_checked >= PAUSE_CHECK_SECONDS:  # another process's 429?
            self._pause_checked = now
            self._adopt(now, self._ledger.check(self._take_report()))
        paced_requests = self._request_interval > 0
        paced_tokens = self._token_interval > 0
        if not (paced_requests or paced_tokens):
            return self._paused_until
        stale = now - STALE_SECONDS  # slots left unused while idle are not saved up
        while self._slots and self._slots[0] < stale:
            self._slots.popleft()
        if self._tokens_left and self._token_cursor < stale:
            self._tokens_left = 0
        need = tokens if paced_tokens else 0  # tokens this request still has to book
        token_time = now
        while True:
            need_requests = paced_requests and not self._slots
            need_tokens = need > self._tokens_left
            if not (need_requests or need_tokens):
                break
            extra = max(self._chunk_tokens, need - self._tokens_left) if need_tokens else 0
            grant = self._ledger.lease(
                self._chunk_requests if need_requests else 0, extra, self._take_report()
            )
            self._adopt(now, grant)  # may spoil what is left: loop again
            if need_requests and not grant.requests:  # nothing booked: come back later
                self._book_again = now + grant.request_delay
                return None
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
        request_time = self._slots.popleft() if paced_requests else now
        return max(request_time, token_time, self._paused_until)
