"""The one exception tree of embedfleet.

Every error embedfleet raises on purpose derives from ``EmbedfleetError``.
Errors that correspond to a built-in category also derive from that built-in,
so ``except TypeError`` keeps working for code written against Chroma::

    EmbedfleetError
    ├── ConfigError (ValueError)          bad arguments or provider config
    │   └── UnknownProviderError (KeyError)
    ├── RegistryError                     a registry name used twice
    ├── InvalidInputError (TypeError)     documents that are not a list of str
    ├── TextTooLongError (ValueError)     on_long="error" and a text over the limit
    ├── MissingDependencyError (ImportError)
    ├── ModelError
    │   ├── ModelNotFoundError            neither local nor reachable
    │   ├── ModelIntegrityError           packaged weights fail their checksum
    │   └── QualityGuardError             a reduced precision strays too far from fp32
    ├── EmbeddingOutputError              a provider returned a wrong count,
    │                                     dimension or non-finite values
    ├── LockedError                       another run holds the output's lock
    ├── ProviderError                     an API provider failed (after retries); says
    │   │                                 whether a later try may succeed (``retryable``)
    │   │                                 and whether the provider failed everything for
    │   │                                 max_retry_seconds (``unavailable``)
    │   ├── AuthenticationError           401/403: the key is missing, wrong or not allowed
    │   ├── BadRequestError               400/413/422: the provider refused the input
    │   └── RateLimitError                429 until max_retry_seconds ran out
    ├── SourceReadError                   a source file cannot be opened or parsed
    │   └── BadRecordError                a malformed record, with on_bad_record = "error"
    ├── DestinationError                  a vector store refused or failed a sync
    │                                     (after retries), or belongs to another output
    └── FleetError                        a fleet of Ray actors failed
        ├── FleetStartError               replicas could not be placed or built
        └── BatchFailedError              a replica raised for one batch

Library exceptions are mapped at the boundary with ``raise ... from exc`` so the
original cause stays attached.
"""

from __future__ import annotations

import typing

__all__ = [
    "AuthenticationError",
    "BadRecordError",
    "BadRequestError",
    "BatchFailedError",
    "ConfigError",
    "DestinationError",
    "EmbeddingOutputError",
    "EmbedfleetError",
    "FleetError",
    "FleetStartError",
    "InvalidInputError",
    "LockedError",
    "MissingDependencyError",
    "ModelError",
    "ModelIntegrityError",
    "ModelNotFoundError",
    "ProviderError",
    "QualityGuardError",
    "RateLimitError",
    "RegistryError",
    "RunStoppedError",
    "SourceReadError",
    "TextTooLongError",
    "UnknownProviderError",
]


class EmbedfleetError(Exception):
    """Base class of every error embedfleet raises on purpose."""

    def __reduce__(self) -> tuple[typing.Any, ...]:
        """Pickle with keyword attributes too (Ray ships errors from workers to the driver)."""
        return _rebuild, (type(self), self.args, dict(self.__dict__))


class ConfigError(EmbedfleetError, ValueError):
    """An argument or a provider config is invalid."""


class UnknownProviderError(ConfigError, KeyError):
    """No provider is registered under the requested name."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class RegistryError(EmbedfleetError):
    """A provider name is registered twice, or an entry point cannot be loaded."""


class InvalidInputError(EmbedfleetError, TypeError):
    """Documents are not a string or a list of strings."""


class TextTooLongError(EmbedfleetError, ValueError):
    """A text exceeds the model's token limit and ``on_long="error"`` was asked for."""


class MissingDependencyError(EmbedfleetError, ImportError):
    """An optional dependency of a provider is not installed."""


class ModelError(EmbedfleetError):
    """A model cannot be loaded."""


class ModelNotFoundError(ModelError):
    """The model is neither available locally nor reachable."""


class ModelIntegrityError(ModelError):
    """Model files are present but do not match their expected checksum."""


class QualityGuardError(ModelError):
    """A reduced precision (int8) was asked for, but its vectors stray too far from fp32."""


class EmbeddingOutputError(EmbedfleetError):
    """A provider returned vectors that do not fit the input (count, dimension, NaN)."""


class LockedError(EmbedfleetError):
    """Another run holds the lease on a job's output."""


class RunStoppedError(EmbedfleetError):
    """A run was asked to stop (SIGINT, SIGTERM) while a shard embedded in its own process:
    the shard ends between two slices of its texts, uncommitted, and a re-run embeds it."""


class SourceReadError(EmbedfleetError):
    """A source file cannot be opened, decompressed or parsed as a whole (corrupt Parquet, a
    broken gzip stream); the message names the file, so one bad file fails only its own
    shards. One bad record is a reject, not this error (see ``BadRecordError``)."""


class BadRecordError(SourceReadError):
    """A record cannot be embedded (invalid JSON or UTF-8, a missing or empty text, ...) and
    the job's ``source.on_bad_record`` is ``"error"``; the message names the file and line."""


class DestinationError(EmbedfleetError):
    """A destination (Chroma, LanceDB) could not be synced: down or refusing a batch past
    its retries, or holding another output's vectors. The message names the destination
    and the batch; the snapshot is untouched and the next sync starts again from what the
    destination records it holds."""


class ProviderError(EmbedfleetError):
    """An API provider answered with an error, or not at all, after every retry.

    ``retryable``: the failure was of a kind worth another try later (429, 5xx, no
    answer), as opposed to a refused key or input. ``unavailable``: every request on
    this budget failed that way for ``max_retry_seconds`` (the provider is down, or
    refuses everything): stop, and try again later.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retryable: bool = False,
        unavailable: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.retryable = retryable
        self.unavailable = unavailable


class AuthenticationError(ProviderError):
    """The provider refused the credentials (401/403); never retried."""


class BadRequestError(ProviderError):
    """The provider refused the input (400/413/422); never retried."""


class RateLimitError(ProviderError):
    """The provider kept answering 429 until retries ran out."""


class FleetError(EmbedfleetError):
    """A fleet of embedding replicas failed (actors died past their restarts, shut down)."""


class FleetStartError(FleetError):
    """Replicas could not be placed within ``start_timeout`` or failed while building."""


class BatchFailedError(FleetError):
    """A replica's embedding function raised for one batch; ``cause`` is its exception."""

    def __init__(self, message: str, *, batch_index: int, cause: BaseException | None) -> None:
        super().__init__(message)
        self.batch_index = batch_index
        self.cause = cause


def _rebuild(
    cls: type[EmbedfleetError], args: tuple[typing.Any, ...], state: dict[str, typing.Any]
) -> EmbedfleetError:
    error = cls.__new__(cls)
    Exception.__init__(error, *args)
    error.__dict__.update(state)
    return error
