"""The provider's real limit, learned when nobody configured one.

Most users do not know their rate limits (they depend on the account's tier and
change), so the ledger learns them, in one place for every replica sharing a key:

* **from the provider's own headers** where it sends them (OpenAI and Azure send
  ``x-ratelimit-limit-requests`` / ``-tokens`` on every answer): the API layer reads
  them into :class:`AdvertisedLimits`, and the ledger paces at
  ``HEADER_MARGIN`` of the advertised per-minute rate at once;
* **otherwise from the 429s themselves**, on the *request rate* (AIMD as TCP does
  on its window, with BIC's way back up): until the first 429 nothing is paced
  (only the number of requests in flight grows,
  :class:`~embedfleet.quota.concurrency.AdaptiveConcurrency`); a 429 records as
  the *peak* the rate it came at, or the rate the provider was accepting (the
  successes of the last ``SUCCESS_WINDOW_SECONDS``) if lower, and sets the rate to
  ``DECREASE`` x the peak (floor ``FLOOR_RATE``). Each ``INTERVAL_SECONDS`` in which
  the rate was used (answers reported for ``BUSY_SHARE`` of its slots) and nothing
  was refused,
  the rate climbs half way back to the peak (at least ``MIN_STEP_SHARE`` of it), and
  past the peak it probes upwards by a share that starts at ``PROBE_SHARE`` and
  doubles up to ``MAX_PROBE_SHARE``, so a raised limit is found. The first 429's
  peak is measured again ``REPORT_LAG_SECONDS`` later, once every process's
  successes from before it were reported.

A burst of 429s is one signal, not many: each decrease starts a new *epoch*, every
request is tagged with the epoch of its slot, and only a 429 of the current epoch,
at least ``DECREASE_GAP_SECONDS`` after the last decrease (the time every replica
takes to hear of it), decreases the rate again: one decrease per round trip, as TCP
halves once per window. Replicas drop slots of an older epoch.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

#: Requests/s after a first 429 when too few successes were seen to measure a rate.
START_RATE = 2.0
#: The learned rate never goes below one request a minute.
FLOOR_RATE = 1 / 60
#: A 429 of the current epoch multiplies the rate by this.
DECREASE = 0.7
#: Decreases are at least this far apart (replicas hear of one within a pause check).
DECREASE_GAP_SECONDS = 0.5
#: How often the rate may grow, seconds.
INTERVAL_SECONDS = 1.0
#: Below the peak the rate climbs at least this share of the peak per interval.
MIN_STEP_SHARE = 0.02
#: Past the peak the rate grows by this share per interval, doubling each interval ...
PROBE_SHARE = 0.05
#: ... up to this share.
MAX_PROBE_SHARE = 0.25
#: A rate grows only when answers came for this share of its slots (a rate nobody uses
#: says nothing about the provider).
BUSY_SHARE = 0.7
#: Advertised limits are paced to this share (the rest absorbs clock and network jitter).
HEADER_MARGIN = 0.97
#: Successes over this many seconds measure the rate the provider was accepting.
SUCCESS_WINDOW_SECONDS = 2.0
#: Reports arrive this late at most (every process checks in every 0.25 s).
REPORT_LAG_SECONDS = 0.5


@dataclass(frozen=True)
class AdvertisedLimits:
    """Per-minute limits a provider announced (in its headers or a 429's body)."""

    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None

    def __bool__(self) -> bool:
        return self.requests_per_minute is not None or self.tokens_per_minute is not None


@dataclass(frozen=True)
class Report:
    """What one process saw since its last report: answers, and the newest
    advertised limits. Sent along with the leases and checks it makes anyway."""

    successes: int = 0
    failures: int = 0  # answered with an error other than 429, or not at all
    advertised: AdvertisedLimits | None = None

    def __bool__(self) -> bool:
        return bool(self.successes or self.failures or self.advertised)


class RateLearner:
    """The learned request rate (and token rate, from headers) of one budget.

    Not thread-safe: the ledger calls it under its lock. ``now`` is the ledger's
    clock. ``rate`` is None until there is something to pace to.
    """

    def __init__(self, now: float) -> None:
        self.rate: float | None = None  # requests/s; None: not paced (yet)
        self.token_rate: float | None = None  # tokens/s, from advertised limits only
        self.epoch = 0
        self.source = "unpaced"  # then "429s" or "headers"
        self.decreases = 0
        self.peak = 0.0  # the rate the last 429 came at
        self._ceiling: float | None = None  # requests/s the provider advertised (x margin)
        self._probe = 0.0  # past the peak: the share the rate grows by next
        self._first_refusal: float | None = None  # until its rate is measured again
        self._decreased_at = float("-inf")
        self._window_start = now
        self._sent = 0  # answers reported in the current interval
        self._refused_in_window = False
        self._successes: deque[tuple[float, int]] = deque()
        self._first_success: float | None = None

    # ------------------------------------------------------------------ observations
    def observed(self, report: Report, now: float) -> None:
        """Count answers (they measure the accepted rate, and whether the rate is used)
        and adopt advertised limits."""
        self.tick(now)
        self._sent += report.successes + report.failures
        if report.successes:
            self._successes.append((now, report.successes))
            if self._first_success is None:
                self._first_success = now
        if report.advertised:
            self.advertise(report.advertised)

    def advertise(self, limits: AdvertisedLimits) -> None:
        """Pace to what the provider says it allows (a lower limit starts a new epoch)."""
        if limits.tokens_per_minute:
            self.token_rate = limits.tokens_per_minute / 60 * HEADER_MARGIN
        if not limits.requests_per_minute:
            return
        ceiling = limits.requests_per_minute / 60 * HEADER_MARGIN
        if ceiling == self._ceiling:
            return
        lower = self.rate is None or ceiling < self.rate
        self._ceiling = self.peak = ceiling
        self.rate, self.source = ceiling, "headers"
        if lower:
            self.epoch += 1  # slots booked at a higher rate are dropped

    def throttled(self, epoch: int, now: float) -> bool:
        """A 429 on a request sent in ``epoch``: decrease once per epoch (and gap).
        Returns whether it did."""
        self.tick(now)
        self._sent += 1
        self._refused_in_window = True
        if epoch != self.epoch or now - self._decreased_at < DECREASE_GAP_SECONDS:
            return False  # an echo of the excess already acted on
        accepted = self.accepted_rate(now)
        if self.rate is None:  # the first 429: pace from the rate that was succeeding,
            # as far as reports arrived (measured again once they all have)
            self.peak = max(START_RATE / DECREASE, accepted)
            self.source = "429s"
            self._first_refusal = now
        else:  # the provider took no more than it accepted, whatever was sent
            self.peak = min(self.rate, accepted) if accepted else self.rate
        self.rate = max(FLOOR_RATE, self.peak * DECREASE)
        self._probe = 0.0
        self._decreased_at = now
        self.epoch += 1
        self.decreases += 1
        return True

    def tick(self, now: float) -> None:
        """Close every finished interval: grow a rate that was used and not refused."""
        first = self._first_refusal
        if first is not None and now - first >= REPORT_LAG_SECONDS:
            self._first_refusal = None  # every report of before the first 429 is in
            since = first if self._first_success is None else self._first_success
            counted = sum(
                count
                for when, count in self._successes
                if first - SUCCESS_WINDOW_SECONDS <= when <= first + REPORT_LAG_SECONDS
            )
            accepted = counted / min(SUCCESS_WINDOW_SECONDS, max(1.0, first - since))
            if accepted > self.peak:
                self.peak = accepted
                self.rate = max(self.rate or 0.0, accepted * DECREASE)
        if now - self._window_start >= 3 * INTERVAL_SECONDS:  # idle: nothing to learn
            self._window_start, self._sent, self._refused_in_window = now, 0, False
            return
        while now - self._window_start >= INTERVAL_SECONDS:
            self._close_interval()
            self._window_start += INTERVAL_SECONDS

    def _close_interval(self) -> None:
        rate = self.rate
        busy = rate is not None and self._sent >= BUSY_SHARE * rate * INTERVAL_SECONDS
        if rate is not None and busy and not self._refused_in_window:
            if rate < self.peak:  # back towards where the last 429 came
                rate = min(
                    self.peak, rate + max((self.peak - rate) / 2, MIN_STEP_SHARE * self.peak)
                )
            else:  # past it: probe, faster and faster
                self._probe = min(MAX_PROBE_SHARE, max(PROBE_SHARE, 2 * self._probe))
                rate *= 1 + self._probe
            self.rate = min(rate, self._ceiling) if self._ceiling else rate
        self._sent, self._refused_in_window = 0, False

    def accepted_rate(self, now: float) -> float:
        """Successes per second over the last SUCCESS_WINDOW_SECONDS (at least one
        second of history counted, so a first burst does not read as a huge rate)."""
        while self._successes and self._successes[0][0] < now - SUCCESS_WINDOW_SECONDS:
            self._successes.popleft()
        if self._first_success is None:
            return 0.0
        seen = min(SUCCESS_WINDOW_SECONDS, max(1.0, now - self._first_success))
        return sum(count for _, count in self._successes) / seen

    def describe(self) -> dict[str, Any]:
        """The learned limits, per minute (None where none was learned)."""
        return {
            "source": self.source,
            "requests_per_minute": None if self.rate is None else self.rate * 60,
            "tokens_per_minute": None if self.token_rate is None else self.token_rate * 60,
            "decreases": self.decreases,
        }
