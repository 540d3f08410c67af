"""embedfleet: Chroma-compatible embedding functions, run in-process or as a fleet.

>>> from embedfleet import embedding_functions
>>> ef = embedding_functions.DefaultEmbeddingFunction()
>>> ef(["foo"])          # one float32 vector per document
>>> embedfleet.remote(ef, replicas=2)             # the same function on Ray actors
>>> embedfleet.Job.from_toml("jobs/quickstart.toml").run()
>>> embedfleet.chunk([long_text], ef, overlap=32)  # chunks that fit the model, with offsets
"""

from embedfleet import embedding_functions, errors
from embedfleet._version import __version__
from embedfleet.embedding_functions import (
    Documents,
    Embedding,
    EmbeddingFunction,
    Embeddings,
)
from embedfleet.errors import (
    AuthenticationError,
    BadRecordError,
    BadRequestError,
    BatchFailedError,
    ConfigError,
    DestinationError,
    EmbeddingOutputError,
    EmbedfleetError,
    FleetError,
    FleetStartError,
    InvalidInputError,
    LockedError,
    MissingDependencyError,
    ModelError,
    ModelIntegrityError,
    ModelNotFoundError,
    ProviderError,
    QualityGuardError,
    RateLimitError,
    RegistryError,
    RunStoppedError,
    SourceReadError,
    TextTooLongError,
    UnknownProviderError,
)
from embedfleet.fleet import RemoteEmbeddingFunction, remote
from embedfleet.job import Job, JobResult, JobSpec, read
from embedfleet.job.chunking import Chunk, chunk
from embedfleet.output_format import embeddings_table, write_parquet

__all__ = [
    "AuthenticationError",
    "BadRecordError",
    "BadRequestError",
    "BatchFailedError",
    "Chunk",
    "ConfigError",
    "DestinationError",
    "Documents",
    "Embedding",
    "EmbeddingFunction",
    "EmbeddingOutputError",
    "Embeddings",
    "EmbedfleetError",
    "FleetError",
    "FleetStartError",
    "InvalidInputError",
    "Job",
    "JobResult",
    "JobSpec",
    "LockedError",
    "MissingDependencyError",
    "ModelError",
    "ModelIntegrityError",
    "ModelNotFoundError",
    "ProviderError",
    "QualityGuardError",
    "RateLimitError",
    "RegistryError",
    "RemoteEmbeddingFunction",
    "RunStoppedError",
    "SourceReadError",
    "TextTooLongError",
    "UnknownProviderError",
    "__version__",
    "chunk",
    "embedding_functions",
    "embeddings_table",
    "errors",
    "read",
    "remote",
    "write_parquet",
]
