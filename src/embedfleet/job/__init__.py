"""The job layer: specs, fsspec sources and shards, plans, runs on Ray, Parquet snapshots."""

from embedfleet.job.plan import JobPlan
from embedfleet.job.result import JobResult
from embedfleet.job.run import Job
from embedfleet.job.spec import (
    BudgetSpec,
    ChunkingSpec,
    EmbeddingSpec,
    FleetSpec,
    JobSpec,
    OutputSpec,
    SourceSpec,
)
from embedfleet.job.store import read

__all__ = [
    "BudgetSpec",
    "ChunkingSpec",
    "EmbeddingSpec",
    "FleetSpec",
    "Job",
    "JobPlan",
    "JobResult",
    "JobSpec",
    "OutputSpec",
    "SourceSpec",
    "read",
]
