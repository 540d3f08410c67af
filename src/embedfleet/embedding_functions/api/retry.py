"""What is worth another try, how long to wait first, and which error ends it.

One policy for every provider, because the failures are the same whatever the
wire format: a 429 or a 5xx passes, a refused key or a refused input does not,
and retrying the latter only spends quota and delays the error. The wait honours
what the server asked for (``retry-after-ms``, ``Retry-After``, or the reset time
of an exhausted ``x-ratelimit-*`` limit), stretched at random (:func:`spread`) so
that the requests refused together do not all come back together; without a hint
it backs off exponentially, with jitter so that many replicas do not retry in step.

How long retrying goes on is the caller's patience (``max_retry_seconds``, see
:meth:`~.base.HttpEmbeddingFunction.with_retries`); the error that ends it says
whether trying again later may help (``retryable``) and whether the provider was
failing everything (``unavailable``).

Messages pass through :func:`redact` before they reach an error: providers
sometimes echo the key they refused.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable
from email.utils import parsedate_to_datetime
from typing import Any

from embedfleet.embedding_functions.api.transport import HttpFailure
from embedfleet.errors import (
    AuthenticationError,
    BadRequestError,
    ProviderError,
    RateLimitError,
)

RETRY_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
BAD_INPUT_STATUSES = frozenset({400, 413, 422})
AUTH_STATUSES = frozenset({401, 403})
MAX_BACKOFF_SECONDS = 30.0
#: A server's wait is stretched by a random share of itself, up to this.
SPREAD_SHARE = 0.5
#: Characters of the provider's answer shown in an error message.
MESSAGE_DETAIL = 500


def is_retryable(status: int | None) -> bool:
    """No answer, an answer that could not be read (a 2xx), 408/409/425/429 or any 5xx."""
    return status is None or status < 300 or status in RETRY_STATUSES or status >= 500


def spread(wait: float) -> float:
    """A server's wait, stretched by up to SPREAD_SHARE of itself at random: requests
    refused together honour it and still come back apart."""
    return wait * random.uniform(1.0, 1.0 + SPREAD_SHARE)


def backoff(attempt: int, first: float) -> float:
    """Exponential (``first`` doubling per attempt, at most MAX_BACKOFF_SECONDS), drawn
    at random from the upper half so that replicas failing together retry apart."""
    ceiling = min(MAX_BACKOFF_SECONDS, first * 2**attempt)
    return random.uniform(ceiling / 2, ceiling)


def final_error(
    failure: HttpFailure,
    *,
    where: str,
    tries: int,
    key_variable: str | None,
    refused_credentials: Callable[[int, str], bool],
    gave_up: str = "",
    unavailable: bool = False,
) -> ProviderError:
    """The typed error for a failure that is not retried (again): ``where`` names the
    provider and URL, ``key_variable`` the environment variable to check on a refused
    key, ``refused_credentials`` recognises a provider's own way of saying so;
    ``gave_up`` says why retrying stopped, and ``unavailable`` that the provider failed
    everything on this budget for as long as patience lasted."""
    status, detail = failure.status, failure.detail[:MESSAGE_DETAIL]
    count = f"{tries} {'try' if tries == 1 else 'tries'}{gave_up}"
    if status is None:
        return ProviderError(
            f"{where} unreachable after {count}: {detail}", retryable=True, unavailable=unavailable
        )
    if is_retryable(status):
        error = RateLimitError if status == 429 else ProviderError
        return error(
            f"{where} answered {status} after {count}: {detail}",
            status=status,
            retryable=True,
            unavailable=unavailable,
        )
    if status in AUTH_STATUSES or refused_credentials(status, detail):
        variable = key_variable or "the api_key argument"
        return AuthenticationError(
            f"{where} refused the credentials ({status}); check {variable}: {detail}",
            status=status,
        )
    if status in BAD_INPUT_STATUSES:
        return BadRequestError(f"{where} refused the input ({status}): {detail}", status=status)
    return ProviderError(f"{where} answered {status}: {detail}", status=status)


def redact(text: str, secret: str | None) -> str:
    """``text`` with every occurrence of ``secret`` replaced by ``***``."""
    return text.replace(secret, "***") if secret else text


def retry_after(headers: Any) -> float | None:
    """Seconds the server asked us to wait: retry-after-ms, Retry-After, then the
    ``x-ratelimit-reset-*`` header of an exhausted limit ("1s", "6m0s", "20ms")."""
    milliseconds = headers.get("retry-after-ms")
    if milliseconds:
        try:
            return max(0.0, float(milliseconds) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return reset_after(headers)
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


def reset_after(headers: Any) -> float | None:
    """The reset time of whichever rate limit is exhausted (remaining 0), if given."""
    waits = []
    for kind in ("requests", "tokens"):
        reset = headers.get(f"x-ratelimit-reset-{kind}")
        remaining = headers.get(f"x-ratelimit-remaining-{kind}")
        if reset and remaining in (None, "0"):
            seconds = duration(reset)
            if seconds is not None:
                waits.append(seconds)
    return max(waits) if waits else None


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def duration(text: str) -> float | None:
    """A Go-style duration ("1s", "6m0s", "1h2m3.5s", "20ms") in seconds."""
    parts = _DURATION_PART.findall(text.strip())
    if not parts or "".join(number + unit for number, unit in parts) != text.strip():
        try:
            return max(0.0, float(text))
        except ValueError:
            return None
    return sum(float(number) * _UNIT_SECONDS[unit] for number, unit in parts)
