"""What a run did, as the CLI prints it and ``--report`` writes it.

Rows and tokens are counted from the shards' commit markers as they arrive, so the
result of a run stopped early (a failed shard, the budget, a signal) still says
exactly what was committed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from embedfleet.job.store import ShardMarker


@dataclass
class JobResult:
    run_id: str
    snapshot: str  # relative path under the output
    complete: bool
    rows_read: int = 0
    embedded: int = 0
    rejected: int = 0
    resumed: int = 0  # rows in shards committed by an earlier, interrupted run
    carried_over: int = 0  # incremental: unchanged rows whose vectors came from the base
    reused: int = 0  # incremental: rows whose text had a vector under another id in the base
    deleted: int = 0  # incremental: ids of the base no longer in the source
    shards: int = 0
    shards_skipped: int = 0
    failed_shards: dict[str, str] = field(default_factory=dict)  # shard id -> error
    estimated_tokens: int = 0
    tokens: int = 0  # input tokens of the shards this run embedded, as the provider counts
    model_tokens: int = 0  # tokens the model ran on, where it counts them (local models)
    padded_tokens: int = 0  # ... padding included: padded_tokens / model_tokens = padding waste
    estimated_cost: float | None = 0.0  # USD for ``tokens``; None: the price is unknown
    token_limit: int | None = None  # this run's budget in tokens; None: no limit
    budget_stopped: bool = False  # stopped before a shard that would have gone over it
    shards_remaining: int = 0  # planned shards without a commit: a re-run resumes them
    seconds: float = 0.0
    startup_seconds: float = 0.0  # lock, plan, Ray and fleet start (models loaded)
    #: where start-up went, in seconds: lock, plan, ray_init, fleet (with the slowest
    #: replica's fleet.replica / fleet.imports / fleet.model_load / fleet.precision_guard),
    #: metadata, shard_workers (started alongside the fleet; shard_workers.after_fleet:
    #: the wait left after it); the CLI adds command (process start to the run)
    startup_phases: dict[str, float] = field(default_factory=dict)
    finish_seconds: float = 0.0  # after the last shard: fleet stop, checks, manifest, prune
    placement: list[dict[str, Any]] = field(default_factory=list)  # node, pid, GPUs per replica

    @property
    def rows_per_second(self) -> float:
        return self.embedded / self.seconds if self.seconds else 0.0

    @property
    def steady_rows_per_second(self) -> float:
        """Throughput between start-up and finish (fixed costs per run, reported apart):
        what a larger job approaches."""
        working = self.seconds - self.startup_seconds - self.finish_seconds
        return self.embedded / working if working > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "rows_per_second": self.rows_per_second,
            "steady_rows_per_second": self.steady_rows_per_second,
        }

    def count_resumed(self, marker: ShardMarker) -> None:
        """A shard an earlier run committed: its rows, none of its tokens."""
        self.resumed += marker.vector_rows
        self.rejected += marker.rejected
        self.rows_read += marker.rows

    def count_committed(self, marker: ShardMarker) -> None:
        """A shard this run committed."""
        self.rows_read += marker.rows
        self.embedded += marker.embedded
        self.carried_over += marker.carried
        self.reused += marker.reused
        self.rejected += marker.rejected
        self.tokens += marker.tokens
        self.model_tokens += marker.model_tokens
        self.padded_tokens += marker.padded_tokens
