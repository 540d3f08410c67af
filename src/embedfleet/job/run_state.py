"""One run's state, from its plan to its finish, and the one place it lets go of Ray
(or, in this process, of the shard thread).

``Job.run`` (``run.py``) makes one :class:`RunState` per run: the steps share it, the
scheduler reports each finished shard to ``collect``, and ``release`` cancels the shard
tasks in flight, shuts the fleet down, kills the budget actor and closes the progress
bar, however the run ends.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from embedfleet.embedding_functions.base import EmbeddingFunction
from embedfleet.job import incremental
from embedfleet.job.budgets import LockedBudget, RayBudget
from embedfleet.job.plan import JobPlan
from embedfleet.job.progress import ShardProgress
from embedfleet.job.result import JobResult, failure_kind
from embedfleet.job.retries import AGAIN, FAILED, ShardRetries
from embedfleet.job.run_control import StopOnSignal
from embedfleet.job.schedule import Executor
from embedfleet.job.shard_task import OverBudget
from embedfleet.job.shards import Shard
from embedfleet.job.startup import Startup
from embedfleet.job.store import ShardMarker, Snapshot

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
    startup: Startup  # where start-up goes; the shard workers it starts
    metadata: dict[str, Any] = field(default_factory=dict)  # recorded with the vectors
    fleet: EmbeddingFunction | None = None  # started when a shard is left to embed
    in_process: bool = False  # ``fleet`` is the job's own function, in this process
    executor: Executor | None = None  # where the shard tasks run
    budget: LockedBudget | RayBudget | None = None  # the run's token budget, if limited
    base: incremental.BaseIndex | None = None  # incremental: the base snapshot's rows
    bar: ShardProgress | None = None
    pending: dict[Any, Shard] = field(default_factory=dict)  # shard tasks in flight
    shards_done: int = 0
    rows_done: int = 0  # rows of the shards collected since the bar last moved
    retries: ShardRetries = field(default_factory=ShardRetries)
    quota_before: dict[str, Any] | None = None  # the quota's stats when embedding began

    @property
    def stop(self) -> threading.Event:
        return self.signals.stop

    @property
    def halted(self) -> bool:
        """No further shard starts: the budget or the provider stopped the run."""
        return self.result.budget_stopped or self.result.provider_stopped is not None

    def collect(self, shard: Shard, answer: Any, error: BaseException | None) -> Shard | None:
        """Count one finished shard task; one shard's failure never stops the others.
        Returns the shard when it is to be tried again later in the run (a retryable
        provider error, :mod:`.retries`)."""
        result = self.result
        if error is not None:
            verdict = self.retries.verdict(shard, error, result)  # a provider's error?
            if verdict == AGAIN:
                return shard
            self.shards_done += 1
            if verdict == FAILED:
                cause = getattr(error, "cause", None) or error
                text = str(cause)
                file = shard.file_named_in(text)
                message = text if shard.root + file in text else f"{shard.describe()}: {cause}"
                result.count_failed(shard.shard_id, file, message, failure_kind(error))
                logger.error("shard %s (%s) failed: %s", shard.shard_id, shard.describe(), cause)
                self.rows_done += shard.estimated_rows
            return None
        self.shards_done += 1
        if isinstance(answer, OverBudget):  # not embedded: no further shard starts
            result.budget_stopped = True
            return None
        result.count_committed(answer)
        self.rows_done += answer.rows
        if self.on_shard is not None:
            self.on_shard(answer)
        return None

    def show_progress(self) -> None:
        """Move the bar by the rows of the shards collected since the last pass."""
        if self.bar is not None:
            self.bar.advance(self.rows_done, self.result, self.shards_done, len(self.todo))
        self.rows_done = 0

    def release(self) -> None:
        """Cancel the shard tasks in flight, stop the fleet and the budget actor, close
        the bar: after the last shard, and however the run ends."""
        if self.executor is not None:
            self.executor.cancel(list(self.pending))
        if self.fleet is not None and not self.in_process:  # a Ray fleet
            self.fleet.shutdown()  # type: ignore[attr-defined]
        if self.budget is not None:
            self.budget.close()
        if self.bar is not None:
            self.bar.close()
