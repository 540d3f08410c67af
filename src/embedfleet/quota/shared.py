"""Where a budget lives, so that everything spending the same key shares it.

A provider's limit belongs to the key, not to one process: every replica of a
fleet, every task of a job and every other fleet on the cluster using the same
key and model draws on it. Inside a Ray worker the ledger is therefore a named,
detached Ray actor in the ``embedfleet`` namespace, named ``quota-<provider>-<hash>``
with the hash over provider + api_base + model + a hash of the key, so the name
never contains the key. Anywhere else (a script, a notebook, a driver) one ledger
per key is shared by the process's functions.

Detached actors outlive their jobs on a long-lived cluster, so an actor nobody
has called for QUOTA_IDLE_SECONDS exits, and the next caller with that key
creates a fresh one.
"""

from __future__ import annotations

import hashlib
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from embedfleet.quota.learning import Report
from embedfleet.quota.limits import LedgerState, QuotaLedger, RateLimits, SlotGrant
from embedfleet.quota.pacer import Pacer

#: Where quota actors live, so every job and fleet on a cluster finds the same one.
QUOTA_NAMESPACE = "embedfleet"
#: A quota actor nobody has called for this long exits (a per-minute budget's state is
#: stale long before): a long-lived cluster keeps no actor per key forever, and the next
#: caller with that key creates a fresh one.
QUOTA_IDLE_SECONDS = 3600.0


class QuotaActor(QuotaLedger):
    """The ledger as a named, detached Ray actor (see :func:`shared_ledger`) that exits
    after ``idle_seconds`` without a call."""

    def __init__(self, limits: RateLimits, idle_seconds: float = QUOTA_IDLE_SECONDS) -> None:
        super().__init__(limits)
        self._idle_seconds = idle_seconds
        self._last_call = time.monotonic()
        threading.Thread(target=self._exit_when_idle, name="quota-idle", daemon=True).start()

    def configure(self, limits: RateLimits) -> None:
        self._last_call = time.monotonic()
        super().configure(limits)

    def lease(self, requests: int, tokens: int, report: Report | None = None) -> SlotGrant:
        self._last_call = time.monotonic()
        return super().lease(requests, tokens, report)

    def check(self, report: Report | None = None) -> LedgerState:
        self._last_call = time.monotonic()
        return super().check(report)

    def throttled(self, seconds: float, epoch: int, report: Report | None = None) -> None:
        self._last_call = time.monotonic()
        super().throttled(seconds, epoch, report)

    def pause(self, seconds: float) -> None:
        self._last_call = time.monotonic()
        super().pause(seconds)

    def paused_for(self) -> float:
        self._last_call = time.monotonic()
        return super().paused_for()

    def _exit_when_idle(self) -> None:
        import ray

        timer = threading.Event()  # never set: waits out the idle time left
        while (idle := time.monotonic() - self._last_call) < self._idle_seconds:
            timer.wait(self._idle_seconds - idle)
        ray.kill(ray.get_runtime_context().current_actor, no_restart=True)


class RemoteLedger:
    """A Pacer's calls, answered by a QuotaActor (found again by name if it was lost)."""

    def __init__(self, key: str, limits: RateLimits) -> None:
        self.key = key
        self.limits = limits
        self.actor = shared_ledger(key, limits)

    def lease(self, requests: int, tokens: int, report: Report | None = None) -> SlotGrant:
        return self._call("lease", requests, tokens, report)  # type: ignore[no-any-return]

    def check(self, report: Report | None = None) -> LedgerState:
        return self._call("check", report)  # type: ignore[no-any-return]

    def throttled(self, seconds: float, epoch: int, report: Report | None = None) -> None:
        # fire and forget: this process pauses locally too, and learns at its next check
        self.actor.throttled.remote(seconds, epoch, report)

    def pause(self, seconds: float) -> None:
        self.actor.pause.remote(seconds)  # fire and forget: this process pauses locally too

    def paused_for(self) -> float:
        return self._call("paused_for")  # type: ignore[no-any-return]

    def _call(self, method: str, *args: Any) -> Any:
        import ray
        from ray.exceptions import RayActorError

        for wait in (0.0, 0.2, 1.0):  # its node died, or it exited idle: create it anew
            try:
                return ray.get(getattr(self.actor, method).remote(*args))
            except RayActorError:  # an exiting actor's name may still find it: wait a bit
                time.sleep(wait)
                self.actor = shared_ledger(self.key, self.limits)
        return ray.get(getattr(self.actor, method).remote(*args))


def quota_key(provider: str, api_base: str, model: str | None, api_key: str | None) -> str:
    """A name for one budget: never contains the key, only a hash mixed with the rest."""
    key_hash = hashlib.sha256((api_key or "").encode()).hexdigest()
    material = "\0".join([provider, api_base, model or "", key_hash])
    return f"quota-{provider}-{hashlib.sha256(material.encode()).hexdigest()[:20]}"


_local_ledgers: dict[str, QuotaLedger] = {}
_local_lock = threading.Lock()


def pacer_for(key: str, limits: RateLimits, sleep: Callable[[float], None] = time.sleep) -> Pacer:
    """A Pacer on the shared budget ``key``: the quota actor inside a Ray worker (a fleet
    replica, a job's task), else a ledger shared by this process's functions."""
    if _in_ray_worker():
        return Pacer(RemoteLedger(key, limits), limits, sleep=sleep)
    with _local_lock:
        ledger = _local_ledgers.get(key)
        if ledger is None:
            ledger = _local_ledgers[key] = QuotaLedger(limits)
        else:
            ledger.configure(limits)
    return Pacer(ledger, limits, sleep=sleep)


def ledger_stats(key: str) -> dict[str, Any] | None:
    """The stats of the budget ``key`` (see :meth:`QuotaLedger.stats`) as this process
    can reach them: the quota actor when Ray is up and it exists, else this process's
    own ledger; None when neither exists (nothing was sent on that budget)."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        try:
            actor = ray.get_actor(key, namespace=QUOTA_NAMESPACE)
        except ValueError:  # no such actor (yet, or any more)
            actor = None
        if actor is not None:
            return ray.get(actor.stats.remote())  # type: ignore[no-any-return]
    with _local_lock:
        ledger = _local_ledgers.get(key)
    return None if ledger is None else ledger.stats()


def _in_ray_worker() -> bool:
    """True in a Ray actor or task process, False in a driver or without Ray."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return False
    return bool(ray.get_runtime_context().worker.mode == ray.WORKER_MODE)


def shared_ledger(key: str, limits: RateLimits, idle_seconds: float = QUOTA_IDLE_SECONDS) -> Any:
    """The named quota actor for ``key``, created by whoever asks first.

    Detached, so it outlives the replica that created it: jobs and fleets that
    come later on the same cluster, with the same key, keep sharing its budget.
    It exits after ``idle_seconds`` without a call (a newly created one only).
    """
    import ray

    actor = (
        ray.remote(QuotaActor)
        .options(
            name=key,
            namespace=QUOTA_NAMESPACE,
            get_if_exists=True,
            lifetime="detached",
            num_cpus=0,
        )
        .remote(limits, idle_seconds)
    )
    actor.configure.remote(limits)
    return actor
