"""The job layer: specs, fsspec sources and shards, Parquet snapshots, the runner."""

from embedfleet.job.runner import Job, JobPlan, JobResult
from embedfleet.job.spec import (
    BudgetSpec,
    EmbeddingSpec,
    FleetSpec,
    JobSpec,
    OutputSpec,
    SourceSpec,
)
from embedfleet.job.store import read

__all__ = [
    "BudgetSpec",
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
