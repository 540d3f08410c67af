"""What providers announce about their own rate limits, read into per-minute figures.

With no limit configured, the quota learns the provider's real one
(:mod:`embedfleet.quota.learning`); where the provider states it, that is learned at
once instead of from 429s. What the providers send (checked against their docs):

* OpenAI and Azure OpenAI: ``x-ratelimit-limit-requests`` / ``x-ratelimit-limit-tokens``
  (per minute) with ``-remaining-`` and ``-reset-`` (a duration, ``6m0s``, ``120ms``)
  on every answer; Azure also ``retry-after-ms`` on a 429.
* Servers following the IETF draft (``draft-ietf-httpapi-ratelimit-headers``; the
  Hugging Face Hub's APIs do): ``RateLimit-Policy: "name";q=100;w=60`` (q requests per
  w seconds), read here when there is no OpenAI-style limit.
* Gemini: nothing on success; a 429 RESOURCE_EXHAUSTED carries
  ``google.rpc.RetryInfo.retryDelay`` and may carry ``google.rpc.QuotaFailure``
  violations with a ``quotaValue`` (read by the Gemini provider).
* Jina sends only ``x-ratelimit-remaining-requests`` / ``-tokens`` (no limit, so no
  rate); Cohere, the Hugging Face Inference API and TEI send no rate-limit headers:
  their rate is learned from 429s.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from embedfleet.quota import AdvertisedLimits

#: Policies over longer windows are quotas (a daily cap), not a rate to pace at.
MAX_POLICY_WINDOW_SECONDS = 3600.0

_POLICY_PARAMETER = re.compile(r";\s*([qw])\s*=\s*(\d+(?:\.\d+)?)")
_BARE_QUOTA = re.compile(r"^\s*(\d+(?:\.\d+)?)")


def advertised_limits(headers: Mapping[str, str] | Any) -> AdvertisedLimits | None:
    """The per-minute limits an answer's headers state, or None when they state none."""
    if not headers:
        return None
    requests = _number(headers.get("x-ratelimit-limit-requests"))
    tokens = _number(headers.get("x-ratelimit-limit-tokens"))
    if requests is None:
        requests = policy_per_minute(headers.get("ratelimit-policy"))
    limits = AdvertisedLimits(requests, tokens)
    return limits if limits else None


def policy_per_minute(value: str | None) -> float | None:
    """The tightest per-minute rate in an IETF ``RateLimit-Policy`` (``"a";q=100;w=60,
    "b";q=1000;w=3600``, or the older ``100;w=60``), windows up to an hour."""
    if not value:
        return None
    rates = []
    for item in value.split(","):
        parameters = dict(_POLICY_PARAMETER.findall(item))
        quota = parameters.get("q")
        if quota is None and (bare := _BARE_QUOTA.match(item)):
            quota = bare.group(1)
        window = float(parameters.get("w", 0))
        if quota is not None and 0 < window <= MAX_POLICY_WINDOW_SECONDS and float(quota) > 0:
            rates.append(float(quota) * 60 / window)
    return min(rates) if rates else None


def _number(value: str | None) -> float | None:
    try:
        number = float(value) if value else None
    except ValueError:
        return None
    return number if number and number > 0 else None
