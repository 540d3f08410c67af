"""Quotas for API providers: paced requests/min and tokens/min, shared pauses, AIMD.

A provider's per-minute limits belong to its key, and every thread, replica and
job using that key spends them together; sending as fast as possible and
backing off on 429s wastes the budget on refused requests and stalls every
replica at once. So requests are paced to the configured rate, and a 429 still
pauses everyone sharing the budget. The pieces, in the order a request meets
them::

    QuotaLedger          the budget itself: one timeline per limited dimension and
    (limits.py)          the pause-until time (in this process, or in the actor)
    QuotaActor,          where the ledger lives: a named Ray actor shared by every
    pacer_for            replica on a cluster, or one ledger per process
    (shared.py)
    Pacer (pacer.py)     one process's view: leases slots from the ledger in
                         chunks and sleeps each request until its slot
    RateLearner          with no limit configured, the rate the provider accepts:
    (learning.py)        from its rate-limit headers, else AIMD on the paced rate
    AdaptiveConcurrency  requests in flight per process when no limit is
    (concurrency.py)     configured: slow start, additive increase, halved on 429

Nothing here knows about providers or HTTP: :mod:`embedfleet.embedding_functions.api`
calls in, never the other way.
"""

from embedfleet.quota.concurrency import AdaptiveConcurrency
from embedfleet.quota.learning import AdvertisedLimits, RateLearner, Report
from embedfleet.quota.limits import (
    LedgerState,
    QuotaLedger,
    RateLimits,
    SlotGrant,
    quota_summary,
)
from embedfleet.quota.pacer import LEASE_SECONDS, PAUSE_CHECK_SECONDS, STALE_SECONDS, Pacer
from embedfleet.quota.shared import (
    QUOTA_IDLE_SECONDS,
    QUOTA_NAMESPACE,
    QuotaActor,
    ledger_stats,
    pacer_for,
    quota_key,
    shared_ledger,
)

__all__ = [
    "LEASE_SECONDS",
    "PAUSE_CHECK_SECONDS",
    "QUOTA_IDLE_SECONDS",
    "QUOTA_NAMESPACE",
    "STALE_SECONDS",
    "AdaptiveConcurrency",
    "AdvertisedLimits",
    "LedgerState",
    "Pacer",
    "QuotaActor",
    "QuotaLedger",
    "RateLearner",
    "RateLimits",
    "Report",
    "SlotGrant",
    "ledger_stats",
    "pacer_for",
    "quota_key",
    "quota_summary",
    "shared_ledger",
]
