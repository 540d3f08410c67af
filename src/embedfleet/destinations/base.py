"""The one interface every destination implements, and the record it keeps of its sync.

A destination is a small class: connect and say what is there (``inspect``), create or
open the collection with the embedding dimension and metadata (``prepare``), ``upsert``
a batch, ``delete`` ids, and read/write the :class:`SyncState` (inside the store itself:
Chroma collection metadata, LanceDB field metadata). Everything else (which rows to send,
batching, retries, rebuilds, progress) is the sync engine's, written once
(:mod:`embedfleet.destinations.sync`).

Rows arrive as Arrow tables with the snapshot's columns: ``id``, ``embedding``
(``fixed_size_list<float32>[dim]``), ``content_hash``, ``text`` when the output keeps
it, and the passthrough columns the destination sends (chunk rows' ``doc_id``,
``chunk_index``... are passthrough columns like any other).

A store's client is imported inside the class that uses it, never at module level, so
the job layer imports no client unless a destination of that kind is configured.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, TypeVar

import pyarrow as pa

from embedfleet.destinations.registry import destination_class
from embedfleet.destinations.spec import DestinationSpec
from embedfleet.errors import ConfigError, DestinationError, MissingDependencyError

logger = logging.getLogger(__name__)

MAX_BACKOFF_SECONDS = 30.0
T = TypeVar("T")


@dataclass(frozen=True)
class SyncState:
    """What a destination holds, recorded in the destination itself.

    ``layout`` says what its rows are made of (the snapshot's vector fingerprint, the
    dimension, the columns sent, documents or not): another layout means every row
    changes, so the destination is rebuilt. ``target`` is set while a sync toward that
    snapshot is under way: a sync killed half-way leaves it, and the next one knows.
    """

    output_id: str  # the output whose snapshots this destination follows (its lineage)
    layout: str
    snapshot: str | None = None  # the snapshot held completely
    target: str | None = None  # the snapshot a sync began toward and has not finished

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> SyncState:
        data = json.loads(text)
        return cls(**{key: data.get(key) for key in ("output_id", "layout", "snapshot", "target")})


@dataclass(frozen=True)
class Found:
    """What ``inspect`` saw: whether the collection exists, its rows, its sync record."""

    exists: bool
    rows: int = 0
    state: SyncState | None = None


@dataclass(frozen=True)
class Target:
    """The snapshot a sync brings a destination to, as the destination needs to know it."""

    run_id: str
    layout: str
    dimension: int
    schema: pa.Schema  # of the rows sent: id, embedding, content_hash, [text], columns
    columns: list[str]  # passthrough columns sent (metadata)
    has_text: bool  # a ``text`` column: Chroma documents
    embedding: dict[str, Any] = field(default_factory=dict)  # provider, config, precision...


class Destination(ABC):
    """One vector store collection kept equal to a snapshot. Subclasses set ``kind``."""

    kind: ClassVar[str] = ""
    #: Whether a rebuild can be written aside and swapped in (rename, or a single
    #: commit); where not, the engine rebuilds in place with a warning.
    can_swap: ClassVar[bool] = True
    #: Rows per write where neither the spec nor the store says.
    default_batch_rows: ClassVar[int] = 5000

    def __init__(self, spec: DestinationSpec) -> None:
        self.spec = spec

    #: The kind-specific spec keys it reads (spec.KIND_KEYS); others are refused.
    keys: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    @abstractmethod
    def check_spec(cls, spec: DestinationSpec, where: str) -> None:
        """Kind-specific checks of a spec (required keys), without importing the client."""

    @abstractmethod
    def describe(self) -> str:
        """Where it is, for messages and records (no secret)."""

    def check_columns(self, schema: pa.Schema, columns: list[str]) -> None:  # noqa: B027
        """Raise ConfigError naming a passthrough column the store cannot hold."""

    def max_batch_rows(self) -> int:
        """Rows per upsert: the spec's ``batch_size`` within the store's own maximum."""
        return self.spec.batch_size or self.default_batch_rows

    @abstractmethod
    def inspect(self, *, staging: bool = False) -> Found:
        """Connect and look at the live collection (or the staging one of a rebuild)."""

    @abstractmethod
    def prepare(
        self, target: Target, state: SyncState, *, staging: bool = False, fresh: bool = False
    ) -> None:
        """Create or open the live (or staging) collection for ``target`` and record
        ``state`` there; ``fresh``: drop whatever it held first. Later calls write to it."""

    @abstractmethod
    def write_state(self, state: SyncState) -> None:
        """Record ``state`` in the prepared collection."""

    @abstractmethod
    def contents(self, columns: list[str], *, staging: bool = False) -> Iterator[pa.Table]:
        """``id``, ``content_hash`` and ``columns`` of every row the live (or staging)
        collection holds, by batches: the base of a diff when the snapshot it last held
        is gone or a sync was cut short."""

    @abstractmethod
    def upsert(self, batch: pa.Table) -> None:
        """Insert or replace these rows (by id), metadata and document included."""

    def insert(self, batch: pa.Table) -> None:
        """Rows whose ids it does not hold (a faster path where the store has one)."""
        self.upsert(batch)

    @abstractmethod
    def delete(self, ids: list[str]) -> None:
        """Remove these ids (ids it does not hold are ignored)."""

    def swap_in(self) -> None:
        """Make the staging collection the live one (a rebuild is complete)."""
        raise NotImplementedError(f"{type(self).__name__} cannot swap a rebuild in")

    def drop_staging(self) -> None:  # noqa: B027 - stores that never stage have none
        """Remove a staging collection left by a rebuild."""

    def close(self) -> None:  # noqa: B027 - most clients need no closing
        """Let go of the client."""


def open_destination(spec: DestinationSpec) -> Destination:
    """A destination object for ``spec`` (nothing connects until it is used)."""
    spec.check()
    cls: type[Destination] = destination_class(spec.kind)
    return cls(spec)


def with_retries(
    call: Callable[[], T],
    *,
    what: str,
    spec: DestinationSpec,
    stop: threading.Event | None = None,
) -> T:
    """Run ``call``; on failure retry ``spec.max_retries`` times with exponential backoff
    (with jitter, at most MAX_BACKOFF_SECONDS), then raise DestinationError naming
    ``what`` (the destination and the batch). A bad spec or a missing client is not
    retried; a stop request (SIGINT/SIGTERM) ends the waiting."""
    attempts = spec.max_retries + 1
    for attempt in range(attempts):
        try:
            return call()
        except (ConfigError, MissingDependencyError, DestinationError):
            raise
        except Exception as exc:
            if attempt + 1 == attempts:
                raise DestinationError(
                    f"{what}: failed after {attempts} attempt(s): {type(exc).__name__}: {exc}"
                ) from exc
            delay = min(MAX_BACKOFF_SECONDS, spec.retry_backoff_seconds * 2**attempt)
            delay *= random.uniform(0.5, 1.0)
            logger.warning("%s: %s; retrying in %.1f s", what, exc, delay)
            if stop is not None and stop.wait(delay):
                raise KeyboardInterrupt from exc
            if stop is None:
                time.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


def require(module: str, extra: str) -> Any:
    """Import a store's client, or say how to install it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f'a {extra} destination needs {module}: pip install "embedfleet[{extra}]"'
        ) from exc
