"""One run's state, shared by its steps from the plan to the finish.

``Job.run`` keeps everything a run starts on Ray (the fleet, the budget actor, shard
tasks in flight, the progress bar) in one :class:`RunState`, so that ``release``
is the one place that lets go of it, however the run ends.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from embedfleet.job import incremental
from embedfleet.job.plan import JobPlan
from embedfleet.job.progress import ShardProgress
from embedfleet.job.result import JobResult, failure_kind
from embedfleet.job.retries import AGAIN, FAILED, ShardRetries
from embedfleet.job.run_control import StopOnSignal
from embedfleet.job.shard_task import OverBudget
from embedfleet.job.sources import Shard
from embedfleet.job.store import ShardMarker, Snapshot

if TYPE_CHECKING:
    from embedfleet.fleet import RemoteEmbeddingFunction

logger = logging.getLogger("embedfleet.job.run")


@dataclass
class RunState:
    """One run of a job, from its plan to its finish: what the steps share, and, in
    ``release``, the one place the run lets go of what it started on Ray."""

    plan: JobPlan
    snapshot: Snapshot
    result: JobResult
    todo: list[Shard]  # planned shards without a commit that still counts
    signals: StopOnSignal  # SIGINT/SIGTERM set its ``stop``
    progress: bool  # show a progress bar
    on_shard: Callable[[ShardMarker], None] | None
    started: float  # perf_counter() when run() was called
    metadata: dict[str, Any] = field(default_factory=dict)  # recorded with the vectors
    fleet: RemoteEmbeddingFunction | None = None  # started when a shard is left to embed
    budget: Any = None  # the TokenBudget actor, with a token limit
    base: incremental.BaseIndex | None = None  # incremental: the base snapshot's rows
    bar: ShardProgress | None = None
    pending: dict[Any, Shard] = field(default_factory=dict)  # shard tasks in flight
    shards_done: int = 0
    retries: ShardRetries = field(default_factory=ShardRetries)
    quota_before: dict[str, Any] | None = None  # the quota's stats when embedding began

    @property
    def stop(self) -> threading.Event:
        return self.signals.stop

    @property
    def halted(self) -> bool:
        """No further shard starts: the budget or the provider stopped the run."""
        return self.result.budget_stopped or self.result.provider_stopped is not None

    def collect(self, ref: Any) -> Shard | None:
        """Count one finished shard task; one shard's failure never stops the others.
        Returns the shard when it is to be tried again later in the run (a retryable
        provider error, :mod:`.retries`)."""
        import ray

        shard, result = self.pending.pop(ref), self.result
        try:
            answer = ray.get(ref)
        except Exception as exc:
            verdict = self.retries.verdict(shard, exc, result)  # a provider's error?
            if verdict == FAILED:
                cause = getattr(exc, "cause", None) or exc
                message = str(cause) if shard.uri in str(cause) else f"{shard.uri}: {cause}"
                kind = failure_kind(exc)
                result.count_failed(shard.shard_id, shard.relative_path, message, kind)
                logger.error("shard %s (%s) failed: %s", shard.shard_id, shard.uri, cause)
                self._advance(shard.estimated_rows)
            return shard if verdict == AGAIN else None
        if isinstance(answer, OverBudget):  # not embedded: no further shard starts
            result.budget_stopped = True
            return None
        result.count_committed(answer)
        self._advance(answer.rows)
        if self.on_shard is not None:
            self.on_shard(answer)
        return None

    def _advance(self, rows: int) -> None:
        self.shards_done += 1
        if self.bar is not None:
            self.bar.advance(rows, self.result, self.shards_done, len(self.todo))

    def release(self) -> None:
        """Cancel the shard tasks in flight, stop the fleet and the budget actor, close
        the bar: after the last shard, and however the run ends."""
        if self.pending:
            import ray

            for ref in self.pending:
                ray.cancel(ref, force=True)
        if self.fleet is not None:
            self.fleet.shutdown()
        if self.budget is not None:
            import ray

            ray.kill(self.budget)
        if self.bar is not None:
            self.bar.close()


def warm_worker() -> None:
    """Nothing to do: running it starts a worker process with the job code imported."""
