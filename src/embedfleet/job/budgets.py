"""A run's token budget, one interface wherever its shards run: ``reserve(tokens)``
takes tokens if they fit (:class:`~embedfleet.pricing.TokenBudget` decides), ``close()``
lets go of it. On Ray the ledger is one actor that every shard task asks, so shards
running in parallel can never together go over; in this process it is the ledger
itself behind a lock."""

from __future__ import annotations

import threading
from typing import Any

from embedfleet.pricing import TokenBudget


class LockedBudget:
    """The ledger in this process (in-process runs), behind a lock."""

    def __init__(self, limit: int | None) -> None:
        self._budget = TokenBudget(limit)
        self._lock = threading.Lock()

    def reserve(self, tokens: int) -> bool:
        with self._lock:
            return self._budget.reserve(tokens)

    def close(self) -> None:
        """Nothing to let go of."""


class RayBudget:
    """The ledger as one Ray actor (runs on Ray); pickled into every shard task."""

    def __init__(self, actor: Any) -> None:
        self._actor = actor

    @classmethod
    def start(cls, limit: int | None) -> RayBudget:
        import ray

        return cls(ray.remote(num_cpus=0)(TokenBudget).remote(limit))

    def reserve(self, tokens: int) -> bool:
        import ray

        return bool(ray.get(self._actor.reserve.remote(tokens)))

    def close(self) -> None:
        import ray

        ray.kill(self._actor)
