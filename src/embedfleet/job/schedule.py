"""Keeping shard tasks in flight: how many, and collecting what finished in bulk.

The driver submits shard tasks, waits for some to finish, counts them, and submits
more; everything else (reading, embedding, committing) happens in the tasks. The loop
is written against a small :class:`Executor` interface so that it can be measured
without Ray (``scripts/simulate_million_files.py`` drives it over a million shards with
a stand-in executor); :class:`RayExecutor` is what a run uses.

How many in flight (``window``): a replica should always have batches queued, and a
shard task spends part of its time reading and committing rather than embedding. A
shard of ``rows`` rows gives ``rows / batch_size`` batches; a replica needs about
``PENDING_ROWS`` rows in flight (its ``max_pending_per_replica`` batches, twice over, so
one shard's batches are queued while another's are read or committed). So the window is
``replicas x ceil(PENDING_ROWS / rows)``, at least 2 and at most ``MAX_PER_REPLICA`` per
replica, and never more than ``MAX_IN_FLIGHT`` beyond ``2 x replicas``. With shards of the
default 10,000 rows that is today's ``2 x replicas``; with shards of 100 rows, 4 per
replica. Each task in flight is a worker process on some node; the per-replica cap keeps
that to a few per replica.

Collecting in bulk: each pass waits until an eighth of the tasks in flight finished or
``WAIT_SECONDS`` passed, then takes every task that finished by then. A pass costs the
driver one wait over the pending tasks (linear in their number), so with thousands in
flight it runs a few times a second rather than once per shard; a slot left empty for
up to ``WAIT_SECONDS`` costs nothing when each replica has shards queued. Progress is
updated once per pass.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from embedfleet.job.shards import Shard

PENDING_ROWS = 256  # rows a replica should have in flight (2 x 2 batches of 64)
MAX_PER_REPLICA = 4
MAX_IN_FLIGHT = 2048
WAIT_SECONDS = 0.1
BULK_FRACTION = 8  # a pass waits for 1/8 of the tasks in flight (or WAIT_SECONDS)


def window_for(replicas: int, rows_per_shard: float, batch_size: int, max_pending: int) -> int:
    """Shard tasks to keep in flight (see the module docstring)."""
    replicas = max(1, replicas)
    pending_rows = max(PENDING_ROWS, 2 * max_pending * batch_size)
    per_replica = math.ceil(pending_rows / max(rows_per_shard, 1.0))
    per_replica = min(max(per_replica, 2), MAX_PER_REPLICA)
    return max(2, min(replicas * per_replica, max(2 * replicas, MAX_IN_FLIGHT)))


class Executor(Protocol):
    """Where shard tasks run: submit one, wait for some, take their answers."""

    def submit(self, shard: Shard) -> Hashable: ...

    def wait(self, handles: list[Any], at_least: int, timeout: float) -> list[Any]:
        """Handles of finished tasks: waits until ``at_least`` finished or ``timeout``
        passed, then returns every one finished by then."""
        ...

    def result(self, handle: Any) -> Any:
        """The task's answer, or raises its error."""
        ...

    def cancel(self, handles: list[Any]) -> None:
        """Stop the tasks ``handles`` (the run is ending)."""
        ...


#: Told of each finished shard; returns the shard to run again later, or None.
Done = Callable[[Shard, Any, BaseException | None], Shard | None]


@dataclass
class Scheduler:
    """Run shards through an executor, ``window`` at a time, in order of submission.

    ``on_done(shard, answer, error)`` is called for each finished shard, and may hand
    the shard back to be run again after the others (a retryable provider error);
    ``halted()`` stops submitting (the budget refused a shard, or the provider is
    unavailable: the ones in flight finish);
    ``stopped()`` ends the loop at once (a signal: what is in flight is the caller's to
    cancel, in ``pending``); ``after_pass()`` runs after each collected batch.
    """

    executor: Executor
    window: int
    on_done: Done
    halted: Callable[[], bool] = lambda: False
    stopped: Callable[[], bool] = lambda: False
    after_pass: Callable[[], None] = lambda: None

    def __post_init__(self) -> None:
        self.pending: dict[Any, Shard] = {}
        self.passes = 0

    def run(self, shards: Iterable[Shard]) -> None:
        queue = iter(shards)
        again: deque[Shard] = deque()  # handed back by on_done: run after the others
        exhausted = False
        while not self.stopped():
            while len(self.pending) < self.window and not self.halted():
                shard = None if exhausted else next(queue, None)
                if shard is None:
                    exhausted = True
                    if not again:
                        break
                    shard = again.popleft()
                self.pending[self.executor.submit(shard)] = shard
            if not self.pending and not (again and not self.halted()):
                return
            at_least = max(1, len(self.pending) // BULK_FRACTION)
            done = self.executor.wait(list(self.pending), at_least, WAIT_SECONDS)
            for handle in done:
                shard = self.pending.pop(handle)
                try:
                    answer = self.executor.result(handle)
                except Exception as exc:
                    retry = self.on_done(shard, None, exc)
                else:
                    retry = self.on_done(shard, answer, None)
                if retry is not None:
                    again.append(retry)
            self.passes += 1
            if done:
                self.after_pass()


class RayExecutor:
    """Shard tasks as Ray tasks: ``task.remote(shard, *args)``."""

    def __init__(self, task: Any, *args: Any) -> None:
        self.task = task
        self.args = args

    @classmethod
    def of(cls, function: Callable[..., Any], num_cpus: float, *args: Any) -> RayExecutor:
        """``function(shard, *args)`` as Ray tasks of ``num_cpus``, never retried by Ray
        (:mod:`.retries` decides); each argument put in the object store once, shared."""
        import ray

        task = ray.remote(num_cpus=num_cpus, max_retries=0)(function)
        return cls(task, *(ray.put(arg) for arg in args))

    def submit(self, shard: Shard) -> Any:
        return self.task.remote(shard, *self.args)

    def wait(self, handles: list[Any], at_least: int, timeout: float) -> list[Any]:
        import ray

        ready, rest = ray.wait(handles, num_returns=min(at_least, len(handles)), timeout=timeout)
        if ready and rest:
            more, _ = ray.wait(rest, num_returns=len(rest), timeout=0)
            ready += more
        return ready

    def result(self, handle: Any) -> Any:
        import ray

        return ray.get(handle)

    def cancel(self, handles: list[Any]) -> None:
        """Cancel the tasks in flight (a signal, an error)."""
        import ray

        for ref in handles:
            ray.cancel(ref, force=True)
