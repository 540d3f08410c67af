"""What a run did, as the CLI prints it and ``--report`` writes it.

Rows and tokens are counted from the shards' commit markers as they arrive, so the
result of a run stopped early (a failed shard, the budget, a signal) still says
exactly what was committed: every record read is accounted for, records read =
embedded + carried over + reused + resumed + rejected.

A shard that fails is recorded with its error and what a user should do about
it (``FAILURE_ADVICE``): a file that cannot be read must be fixed or removed; a
bad record with ``on_bad_record = "error"`` fixed or rejected; a refused key or
config corrected; anything else (a provider down, a replica lost) is retried by
re-running, which embeds only the failed shards. Rows are documents; with
``[chunking]`` the ``chunks_*`` counts beside them say what happened to the documents'
chunks (the rows of the parts).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from embedfleet.errors import (
    AuthenticationError,
    BadRecordError,
    BadRequestError,
    ConfigError,
    SourceReadError,
)
from embedfleet.job.records import add_kinds
from embedfleet.job.startup import describe_phases
from embedfleet.job.store import SNAPSHOTS, ShardMarker
from embedfleet.pricing import format_cost

FAILURE_ADVICE = {
    "file": "fix or remove the file, then re-run: committed shards are kept and only the "
    "failed shards are read again",
    "record": 'fix the record, or set source.on_bad_record = "reject" to put such records in '
    "_rejects/ and embed the rest, then re-run",
    "provider_config": "check the provider's key and config, then re-run",
    "retry": "re-run the same command to retry only the failed shards",
}


def failure_kind(error: BaseException) -> str:
    """What a shard's failure asks of the user: a key of ``FAILURE_ADVICE``."""
    cause = getattr(error, "cause", None) or error
    if isinstance(cause, BadRecordError):
        return "record"
    if isinstance(cause, (SourceReadError, ConfigError)):
        return "file"
    if isinstance(cause, (AuthenticationError, BadRequestError)):
        return "provider_config"
    return "retry"


@dataclass
class JobResult:
    run_id: str
    snapshot: str  # relative path under the output
    complete: bool
    rows_read: int = 0
    embedded: int = 0
    rejected: int = 0
    rejected_by_kind: dict[str, int] = field(default_factory=dict)  # see records.REJECT_KINDS
    resumed: int = 0  # rows in shards committed by an earlier, interrupted run
    carried_over: int = 0  # incremental: unchanged rows whose vectors came from the base
    reused: int = 0  # incremental: rows whose text had a vector under another id in the base
    deleted: int = 0  # incremental: ids (documents) of the base no longer in the source
    chunks_embedded: int = 0  # chunking: chunks (rows of the parts) by what happened to them
    chunks_carried: int = 0
    chunks_reused: int = 0
    chunks_rejected: int = 0  # refused by the provider (empty documents have no chunks)
    chunks_resumed: int = 0
    chunks_deleted: int = 0  # incremental: chunk ids of the base in no part any more
    chunked: bool = False  # the job has [chunking]: the chunks_* counts mean something
    shards: int = 0
    shards_skipped: int = 0
    failed_shards: dict[str, str] = field(default_factory=dict)  # shard id -> error
    failure_kinds: dict[str, str] = field(default_factory=dict)  # shard id -> FAILURE_ADVICE key
    failed_files: dict[str, str] = field(default_factory=dict)  # shard id -> relative path
    up_to_date: bool = False  # nothing changed since the latest snapshot: nothing read or written
    estimated_tokens: int = 0
    tokens: int = 0  # input tokens of the shards this run embedded, as the provider counts
    model_tokens: int = 0  # tokens the model ran on, where it counts them (local models)
    padded_tokens: int = 0  # ... padding included: padded_tokens / model_tokens = padding waste
    estimated_cost: float | None = 0.0  # USD for ``tokens``; None: the price is unknown
    token_limit: int | None = None  # this run's budget in tokens; None: no limit
    budget_stopped: bool = False  # stopped before a shard that would have gone over it
    shards_remaining: int = 0  # planned shards without a commit: a re-run resumes them
    seconds: float = 0.0  # the run's; the CLI adds its command phase to both
    startup_seconds: float = 0.0  # lock, plan, Ray and fleet start (models loaded)
    #: where start-up went, in seconds: lock, plan, ray_init, fleet (with the slowest
    #: replica's fleet.replica / fleet.imports / fleet.model_load / fleet.precision_guard),
    #: metadata, shard_workers (started alongside the fleet; shard_workers.after_fleet:
    #: the wait left after it); the CLI adds command (process start to the run)
    startup_phases: dict[str, float] = field(default_factory=dict)
    finish_seconds: float = 0.0  # after the last shard: fleet stop, checks, manifest, prune
    placement: list[dict[str, Any]] = field(default_factory=list)  # node, pid, GPUs per replica
    embedded_in: str = ""  # where the shards embedded, and why (:mod:`.in_process`)
    destinations: list[dict[str, Any]] = field(default_factory=list)  # each sync's summary
    # API providers: the limit paced to (configured or learned) and the 429s of this run
    quota: dict[str, Any] | None = None
    shard_retries: int = 0  # shards tried again after a retryable provider error
    provider_stopped: str | None = None  # why the provider stopped the run (resumable)

    @property
    def rows_per_second(self) -> float:
        return self.embedded / self.seconds if self.seconds else 0.0

    @property
    def steady_rows_per_second(self) -> float:
        """Throughput between start-up and finish (fixed costs per run, reported apart):
        what a larger job approaches."""
        working = self.seconds - self.startup_seconds - self.finish_seconds
        return self.embedded / working if working > 0 else 0.0

    @classmethod
    def unchanged(cls, latest: str, shards: int) -> JobResult:
        """A run that found the latest snapshot up to date: nothing read or written."""
        return cls(
            latest,
            f"{SNAPSHOTS}/{latest}",
            True,
            shards=shards,
            shards_skipped=shards,
            up_to_date=True,
        )

    @property
    def accounted(self) -> int:
        """Records with an outcome; equal to ``rows_read`` (a test holds every run to it)."""
        return self.embedded + self.carried_over + self.reused + self.resumed + self.rejected

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "rows_per_second": self.rows_per_second,
            "steady_rows_per_second": self.steady_rows_per_second,
        }

    def summary_rows(self, output_uri: str) -> list[tuple[str, object]]:
        """The table ``embedfleet run`` prints: every record read has one outcome."""
        if self.up_to_date:
            return [
                ("snapshot", f"{output_uri}/{self.snapshot}"),
                ("complete", "yes: up to date"),
                ("rows read", "0: every source file is as this snapshot recorded it"),
                ("shards", f"{self.shards} (all in the snapshot)"),
                ("tokens", "0 (nothing embedded, nothing written)"),
            ]
        kinds = ", ".join(f"{kind} {count:,}" for kind, count in self.rejected_by_kind.items())
        rejected = f"{self.rejected:,}"
        if self.rejected:
            rejected += f" ({kinds}): {output_uri}/{self.snapshot}/_rejects/"
        return [
            ("snapshot", f"{output_uri}/{self.snapshot}"),
            ("complete", "yes" if self.complete else "no"),
            (
                "rows read",
                f"{self.rows_read:,} = {self.embedded:,} embedded + {self.carried_over:,} "
                f"carried over + {self.reused:,} reused + {self.resumed:,} resumed + "
                f"{self.rejected:,} rejected",
            ),
            ("embedded", self.embedded),
            ("carried over", self.carried_over),
            ("reused", self.reused),
            ("deleted", self.deleted),
            ("resumed", f"{self.resumed} (rows committed by an earlier attempt)"),
            ("rejected", rejected),
            *([("chunks", self.chunk_summary())] if self.chunked else []),
            ("shards", f"{self.shards} ({self.shards_skipped} already committed)"),
            *([("embedded in", self.embedded_in)] if self.embedded_in else []),
            ("failed shards", len(self.failed_shards)),
            ("tokens", f"{self.tokens:,} this run (plan estimated {self.estimated_tokens:,})"),
            ("est. cost", format_cost(self.estimated_cost)),
            (
                "time",
                f"{self.seconds:.1f} s ({self.startup_seconds:.1f} s start-up, "
                f"{self.finish_seconds:.1f} s finish)",
            ),
            ("start-up", describe_phases(self.startup_phases)),
            (
                "rows/s",
                f"{self.rows_per_second:.1f} "
                f"({self.steady_rows_per_second:.1f} between start-up and finish)",
            ),
            *([("quota", describe_quota(self.quota))] if self.quota else []),
        ]

    def advice(self) -> list[str]:
        """What to do about the failed shards, one line per kind of failure, naming files."""
        lines = []
        for kind, advice in FAILURE_ADVICE.items():
            shards = [shard for shard, found in self.failure_kinds.items() if found == kind]
            if not shards:
                continue
            files = ", ".join(sorted({self.failed_files.get(shard, shard) for shard in shards}))
            count = f"{len(shards)} shard{'s' * (len(shards) != 1)}"
            lines.append(f"{count} of {files} failed: {advice}")
        return lines

    def chunk_summary(self) -> str:
        """With chunking, what happened to the chunks (the other counts are documents)."""
        return (
            f"{self.chunks_embedded} embedded, {self.chunks_carried} carried over, "
            f"{self.chunks_reused} reused, {self.chunks_deleted} deleted, "
            f"{self.chunks_resumed} resumed, {self.chunks_rejected} refused"
        )

    def count_resumed(self, marker: ShardMarker) -> None:
        """A shard an earlier run committed: its documents, none of its tokens."""
        self.resumed += marker.embedded + marker.carried + marker.reused
        self._count_rejects(marker)
        self.rows_read += marker.rows
        if marker.chunks is not None:
            self.chunks_resumed += marker.vector_rows

    def count_committed(self, marker: ShardMarker) -> None:
        """A shard this run committed."""
        self.rows_read += marker.rows
        self.embedded += marker.embedded
        self.carried_over += marker.carried
        self.reused += marker.reused
        self._count_rejects(marker)
        self.tokens += marker.tokens
        self.model_tokens += marker.model_tokens
        self.padded_tokens += marker.padded_tokens
        for kind in ("embedded", "carried", "reused", "rejected"):
            count = (marker.chunks or {}).get(kind, 0)
            setattr(self, f"chunks_{kind}", getattr(self, f"chunks_{kind}") + count)

    def count_failed(self, shard_id: str, relative_path: str, message: str, kind: str) -> None:
        """A shard that failed: nothing of it is counted, its error and advice are kept."""
        self.failed_shards[shard_id] = message
        self.failure_kinds[shard_id] = kind
        self.failed_files[shard_id] = relative_path

    def _count_rejects(self, marker: ShardMarker) -> None:
        self.rejected += marker.rejected
        self.rejected_by_kind = add_kinds(self.rejected_by_kind, marker.reject_kinds)


_QUOTA_SOURCES = {
    "configured": "configured",
    "headers": "learned from the provider's rate-limit headers",
    "429s": "learned from 429s",
    "unpaced": "none met: the provider answered no 429",
}


def describe_quota(quota: dict[str, Any]) -> str:
    """One line for a run's ``quota``: the limit paced to, where it came from, and the
    share of requests answered 429."""
    limits = [
        f"{quota[key]:,.0f} {unit}/min"
        for key, unit in (("requests_per_minute", "requests"), ("tokens_per_minute", "tokens"))
        if quota.get(key)
    ]
    source = _QUOTA_SOURCES.get(quota.get("source", ""), quota.get("source", ""))
    paced = f"{', '.join(limits)} ({source})" if limits else source
    return f"{paced}; {quota['share_429']:.1%} of {quota['answers']:,} requests answered 429"


def chunk_totals(markers: list[ShardMarker], result: JobResult) -> dict[str, int]:
    """The manifest's chunk counts (the rows of the parts), beside its document counts."""
    totals = {
        kind: sum((marker.chunks or {}).get(kind, 0) for marker in markers)
        for kind in ("rows", "embedded", "carried", "reused", "rejected")
    }
    return {**totals, "deleted": result.chunks_deleted}
