"""One request, tried until it succeeds or patience runs out: the loop every API
provider shares (:meth:`~.base.HttpEmbeddingFunction.with_retries`).

A 429 is the provider asking to wait, not a failure: it pauses every process on the
budget for the server's wait (spread at random, so the requests refused together do
not all come back together), and with no configured limit it lowers the learned
rate (once per epoch: the 429s of requests already in flight are one signal). It
never counts against ``max_retries``.

Patience is measured in time, not tries: a retryable failure (429, 5xx, no answer,
an unreadable answer) is retried until ``max_retry_seconds`` have passed since this
request's first failure, or since the whole budget's last success (as the quota
sees it, across replicas). In the second case the error is ``unavailable``: the
provider failed everything for that long, and a job stops instead of sending more.
``max_retries``, when set, also ends the retries of one request after that many
failures other than 429 (a request the provider fails on its own).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from embedfleet.embedding_functions.api.retry import backoff, final_error, is_retryable, spread
from embedfleet.embedding_functions.api.transport import Answered, HttpFailure
from embedfleet.errors import ProviderError
from embedfleet.quota import AdaptiveConcurrency, AdvertisedLimits, Pacer

T = TypeVar("T")


class HttpEmbeddingFunction(Protocol):
    """What the loop uses of :class:`~.base.HttpEmbeddingFunction` (named here, not
    imported: that module imports this one)."""

    max_retry_seconds: float
    max_retries: int | None
    retry_backoff_seconds: float
    api_key_env_var: str | None
    _concurrency: AdaptiveConcurrency

    def pacer(self) -> Pacer: ...

    def advertised_limits(
        self, headers: Any, failure: HttpFailure | None = None
    ) -> AdvertisedLimits | None: ...

    def server_wait(self, failure: HttpFailure) -> float | None: ...

    def refused_credentials(self, status: int, detail: str) -> bool: ...

    def _redact(self, text: str) -> str: ...

    def _sleep(self, seconds: float) -> None: ...


def with_retries(
    function: HttpEmbeddingFunction, send: Callable[[], T], url: str, *, tokens: int = 0
) -> T:
    """Call ``send()`` until it succeeds; see the module docstring.

    Every attempt holds a concurrency slot, waits for its quota slot and tells the
    quota how it went. ``send`` raises :class:`HttpFailure` for a failed attempt and
    may return :class:`Answered` to show the answer's headers.
    """
    pacer = function.pacer()
    concurrency = function._concurrency
    patience = function.max_retry_seconds
    first_failure: float | None = None
    errors = 0  # failures other than 429: what max_retries counts
    for attempt in itertools.count():
        try:
            with concurrency.slot():  # then the quota slot: sent right when it comes
                pacer.acquire(tokens)
                epoch = pacer.epoch  # the slot's epoch: a 429 on it says the rate was too high
                answer = send()
        except HttpFailure as raw:
            # what gets chained to the typed error: redacted, and nothing under it
            failure = HttpFailure(raw.status, raw.headers, function._redact(raw.detail))
            advertised = function.advertised_limits(failure.headers, failure)
            if not is_retryable(failure.status):
                pacer.succeeded(advertised)  # answered: the provider is up
                raise _final(function, failure, url, attempt + 1) from failure
            now = time.monotonic()
            first_failure = now if first_failure is None else first_failure
            asked = function.server_wait(failure)
            if failure.status == 429:
                wait = spread(asked) if asked is not None else _backoff(function, attempt)
                # the first of an epoch, while nothing is paced yet, halves concurrency
                # (its only bound until then); once paced, the rate is what adapts
                if pacer.throttled(wait, epoch, advertised) and not epoch:
                    concurrency.throttled()
            else:
                errors += 1
                pacer.failed(advertised)
                wait = spread(asked) if asked is not None else _backoff(function, errors - 1)
            outage = pacer.failing_for()
            waited = max(now - first_failure, outage)
            if waited >= patience:
                gave_up = f" over {waited:.1f} s without a success (max_retry_seconds={patience:g})"
                unavailable = 0 < patience <= outage
                raise _final(function, failure, url, attempt + 1, gave_up, unavailable) from failure
            limit = function.max_retries
            if failure.status != 429 and limit is not None and errors > limit:
                raise _final(function, failure, url, attempt + 1) from failure
            function._sleep(min(wait, patience - waited))
            continue
        if isinstance(answer, Answered):
            pacer.succeeded(function.advertised_limits(answer.headers))
            answer = answer.payload
        else:
            pacer.succeeded()
        concurrency.succeeded()
        return answer  # type: ignore[no-any-return]
    raise AssertionError("unreachable")  # the loop returns or raises


def _final(
    function: HttpEmbeddingFunction,
    failure: HttpFailure,
    url: str,
    tries: int,
    gave_up: str = "",
    unavailable: bool = False,
) -> ProviderError:
    return final_error(
        failure,
        where=f"{type(function).__name__}: {url}",
        tries=tries,
        key_variable=function.api_key_env_var,
        refused_credentials=function.refused_credentials,
        gave_up=gave_up,
        unavailable=unavailable,
    )


def _backoff(function: HttpEmbeddingFunction, attempt: int) -> float:
    return backoff(attempt, function.retry_backoff_seconds)
