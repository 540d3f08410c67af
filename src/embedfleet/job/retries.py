"""What a run does with a shard whose task failed on a provider error.

A 429 or an outage is not the shard's fault: its requests already retried for as
long as the provider's ``max_retry_seconds`` allowed. So a shard that failed with a
retryable provider error (:attr:`~embedfleet.errors.ProviderError.retryable`) goes
back in the queue and is tried again later in the run, up to ``SHARD_ATTEMPTS``
times in all, before it is recorded as failed; a refused key or input (400, 401,
403, 413, 422) fails it at once, by name. An ``unavailable`` error (the provider
failed every request for ``max_retry_seconds``) stops the run instead: no shard
starts after it, and a re-run resumes. The errors are told apart by type, never by
their messages.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from embedfleet.embedding_functions.base import EmbeddingFunction
from embedfleet.errors import ProviderError
from embedfleet.job.result import JobResult
from embedfleet.job.sources import Shard

logger = logging.getLogger(__name__)

#: A shard failing with a retryable provider error is tried this many times in a run.
SHARD_ATTEMPTS = 3
#: Verdicts on a failed shard task.
AGAIN, STOPPED, FAILED = "again", "stopped", "failed"


@dataclass
class ShardRetries:
    """The retryable failures of each shard in one run."""

    failures: dict[str, int] = field(default_factory=dict)  # shard id -> failed tries

    def verdict(self, shard: Shard, error: BaseException, result: JobResult) -> str:
        """What to do with ``shard``, whose task raised ``error``: try it AGAIN later in
        the run (a retryable provider error, SHARD_ATTEMPTS times at most), nothing
        more because the provider STOPPED the run (``result.provider_stopped`` says
        why; the shard stays for a re-run), or record it as FAILED."""
        provider = provider_failure(error)
        if provider is not None and provider.unavailable:
            result.provider_stopped = result.provider_stopped or str(provider)
            logger.error("stopping, re-run to resume: %s", provider)
            return STOPPED
        tries = self.failures[shard.shard_id] = self.failures.get(shard.shard_id, 0) + 1
        if provider is None or not provider.retryable or tries >= SHARD_ATTEMPTS:
            return FAILED
        result.shard_retries += 1
        logger.warning("shard %s (%s) will be tried again: %s", shard.shard_id, shard.uri, provider)
        return AGAIN


def provider_failure(error: BaseException | None) -> ProviderError | None:
    """The :class:`ProviderError` in ``error`` or under it (a fleet's
    :class:`~embedfleet.errors.BatchFailedError`, Ray's task error: anything with a
    ``cause``), if any."""
    for _ in range(8):  # wrappers nest a few deep at most
        if error is None or isinstance(error, ProviderError):
            return error
        error = getattr(error, "cause", None)
    return None


def quota_stats(
    function: EmbeddingFunction, since: dict[str, Any] | None = None
) -> dict[str, Any] | None:
    """An API provider's quota: the limit it paced to and the 429s after ``since``
    (see :meth:`~embedfleet.embedding_functions.api.base.HttpEmbeddingFunction.quota_stats`);
    None for functions without one."""
    stats = getattr(function, "quota_stats", None)
    return None if stats is None else stats(since)  # type: ignore[no-any-return]
