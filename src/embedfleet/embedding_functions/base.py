"""The EmbeddingFunction protocol, input checks and batching, written once.

A provider implements one method, :meth:`EmbeddingFunction.embed_batch`, which
turns one batch of texts into vectors. Everything else a caller relies on lives
here so that every provider behaves the same:

* input validation (a single ``str`` is one document; ``None``, non-strings and
  nested lists raise :class:`~embedfleet.errors.InvalidInputError` naming the
  index; an empty list returns ``[]`` without touching the model);
* identical texts within one call are embedded once;
* texts are sorted by length before batching, so padding stays small, the
  batches run longest first, and the vectors are put back in input order
  (:mod:`~embedfleet.embedding_functions.batching`);
* output validation: a wrong count, a changing dimension or a non-finite value
  raises :class:`~embedfleet.errors.EmbeddingOutputError`, never a ``None``;
* ``get_config()`` / ``build_from_config()`` round-trip through the
  constructor's keyword arguments (a key it does not take is a ``ConfigError``
  naming it, :mod:`.config_keys`), so a rebuilt function embeds like the original.

It matches Chroma's ``EmbeddingFunction`` protocol (``__call__(input)``, ``embed_query``,
static ``name()``, ``get_config`` / ``build_from_config``) without inheriting from chromadb.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, TypeAlias

import numpy as np
import numpy.typing as npt

from embedfleet.embedding_functions.batching import (
    CallCounts,
    CallPlan,
    EmbeddingStats,
    cut_batches,
    deduplicate,
    enforce_limit,
)
from embedfleet.embedding_functions.config_keys import check_config_keys
from embedfleet.embedding_functions.token_counter import TokenCounter
from embedfleet.errors import ConfigError, EmbeddingOutputError, InvalidInputError
from embedfleet.tokens import estimate_tokens

Documents: TypeAlias = list[str]
Embedding: TypeAlias = npt.NDArray[np.float32]
Embeddings: TypeAlias = list[Embedding]
#: What a function spends its time on; see :attr:`EmbeddingFunction.workload`.
Workload: TypeAlias = Literal["compute", "io"]

DEFAULT_BATCH_SIZE = 32
#: Batches an I/O-bound function serves at once in a fleet replica, unless it says.
DEFAULT_IO_CONCURRENCY = 8
ON_LONG_CHOICES = ("truncate", "error")


@dataclass(frozen=True)
class Requirement:
    """A Python module a provider needs, and how to install it."""

    module: str
    install: str  # e.g. 'pip install "embedfleet[local]"'


def check_positive_int(name: str, value: object) -> None:
    """Raise ConfigError unless ``value`` is None or a positive int (bools are not ints here)."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ConfigError(f"{name} must be a positive integer or None, got {value!r}")


def validate_documents(input: object) -> Documents:
    """Return ``input`` as a list of str, or raise naming the offending index."""
    if isinstance(input, str):
        return [input]
    if input is None:
        raise InvalidInputError("documents must be a str or a list of str, got None")
    if isinstance(input, bytes | bytearray) or not isinstance(input, Sequence):
        raise InvalidInputError(
            f"documents must be a str or a list of str, got {type(input).__name__}"
        )
    documents = list(input)
    for index, document in enumerate(documents):
        if not isinstance(document, str):
            kind = "None" if document is None else type(document).__name__
            raise InvalidInputError(f"document at index {index} must be a str, got {kind}")
    return documents


class EmbeddingFunction(ABC):
    """Base of every embedfleet embedding function.

    ``ef(input)`` returns one 1-D float32 numpy vector per document, in input
    order. Subclasses implement :meth:`embed_batch`, and take only
    JSON-serializable keyword arguments in ``__init__`` so that
    :meth:`get_config` can record them. Secrets never enter the config: keys
    travel as the *name* of an environment variable (``api_key_env_var``).
    """

    #: Registry key, set by :func:`embedfleet.embedding_functions.register`.
    provider_name: ClassVar[str] = ""
    #: Modules the provider imports lazily; ``embedfleet providers`` checks them.
    requirements: ClassVar[tuple[Requirement, ...]] = ()
    #: What a call spends its time on, read by fleets to place replicas:
    #: ``"compute"``: a model on this machine's CPU or GPU (a fleet replica reserves a
    #: CPU and runs one batch at a time); ``"io"``: waiting on a remote service (no
    #: CPU reserved, :meth:`concurrent_batches` batches at once). A function that does
    #: not say is ``"compute"``: reserving a core never oversubscribes a machine, while
    #: a model run as ``"io"`` would share its cores with everything else.
    workload: ClassVar[Workload] = "compute"
    #: Whether calls are billed per input token (API providers); local models are not.
    bills_per_token: ClassVar[bool] = False
    #: Config keys that change how calls run (pacing, retries, batching) but never the
    #: vectors: left out of :meth:`vector_config`, so tuning them never re-embeds a job.
    operational_keys: ClassVar[frozenset[str]] = frozenset()
    #: Cut batches by padded tokens (batch size x longest text) instead of by count;
    #: None: ``batch_size`` texts per batch. Local models set it (``max_batch_tokens``).
    max_batch_tokens: int | None = None
    #: Keys a ``**kwargs`` constructor hands on (a model loader, HTTP options); None: unchecked.
    passthrough_config_keys: ClassVar[frozenset[str] | None] = None

    def __init__(self, *, batch_size: int = DEFAULT_BATCH_SIZE, on_long: str = "truncate") -> None:
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
        if on_long not in ON_LONG_CHOICES:
            raise ConfigError(f"on_long must be one of {ON_LONG_CHOICES}, got {on_long!r}")
        self.batch_size = batch_size
        self.on_long = on_long
        self.stats = EmbeddingStats()
        self._dimension: int | None = None
        make_known_to_chroma(type(self))

    @classmethod
    def missing_requirements(cls) -> list[str]:
        """What this provider lacks to run here, each with how to fix it (empty: ready)."""
        return [
            f"module {requirement.module} ({requirement.install})"
            for requirement in cls.requirements
            if importlib.util.find_spec(requirement.module) is None
        ]

    @classmethod
    def missing_setup(cls) -> list[str]:
        """What a user must set here before it runs, as "set NAME" (names, never values)."""
        return []

    # ------------------------------------------------------------------ the one method
    @abstractmethod
    def embed_batch(self, texts: Documents, *, query: bool = False) -> Any:
        """Embed one batch (a 2-D array or a list of vectors, one per text).

        ``query`` is true when the batch comes from :meth:`embed_query`;
        providers that embed queries and documents differently use it.
        """

    # ------------------------------------------------------------------ public calls
    def __call__(self, input: Documents | str) -> Embeddings:
        return self._embed_all(validate_documents(input), query=False)[0]

    def embed_query(self, input: Documents | str) -> Embeddings:
        """Embed search queries (prompted or typed differently where the model wants it)."""
        return self._embed_all(validate_documents(input), query=True)[0]

    def embed_counted(
        self, input: Documents | str, *, query: bool = False
    ) -> tuple[Embeddings, CallCounts]:
        """The vectors, and what this call alone added to :attr:`stats` (truncated
        texts, tokens, padded tokens): exact while other threads call the same
        function (a fleet replica reports them to the driver)."""
        return self._embed_all(validate_documents(input), query=query)

    def embed_with_retries(self, input: Documents | str, **retry_kwargs: Any) -> Embeddings:
        """Chroma protocol member: ``__call__`` under tenacity's ``retry(**retry_kwargs)``
        (tenacity comes with chromadb, the only caller of this method)."""
        from tenacity import retry

        return retry(**retry_kwargs)(self.__call__)(input)  # type: ignore[no-any-return]

    @property
    def known_dimension(self) -> int | None:
        """The vector size if known without computing anything (declared, or seen in an
        earlier call); None otherwise."""
        return self._dimension

    @property
    def dimension(self) -> int | None:
        """Vector size: known up front for most models, else after the first call."""
        return self.known_dimension

    def max_tokens(self) -> int | None:
        """The model's token limit per text, where it has one."""
        return None

    def token_lengths(self, texts: Documents, *, query: bool = False) -> list[int] | None:
        """Tokens each text takes as the model sees it (prompt included), if knowable.

        Providers that can count override this; the counts sort batches by length
        and enforce ``on_long``. None: sort by characters, no limit enforced here.
        """
        return None

    def billed_tokens(self, texts: Documents) -> list[int]:
        """Input tokens each text is billed for, counted as the provider counts them
        (:attr:`bills_per_token` providers override this). For everything else, an
        estimate that never undercounts, so a token budget still has a number."""
        return [estimate_tokens(text) for text in texts]

    def token_counter(self) -> TokenCounter:
        """How this function counts a text against its limit, for cutting texts to fit it:
        :meth:`billed_tokens` against :meth:`max_tokens` unless a provider knows better."""
        return TokenCounter.of(self.billed_tokens, self.max_tokens(), "a conservative estimate")

    def concurrent_batches(self) -> int:
        """Batches a fleet replica serves at once: 1 for compute, else the I/O default."""
        return 1 if self.workload == "compute" else DEFAULT_IO_CONCURRENCY

    # ------------------------------------------------------------------ config
    @staticmethod
    def name() -> str:
        """The name Chroma stores with a collection; set per class by ``@register``."""
        return NotImplemented

    def get_config(self) -> dict[str, Any]:
        """JSON-serializable constructor arguments; never a secret."""
        return {"batch_size": self.batch_size, "on_long": self.on_long}

    def vector_config(self) -> dict[str, Any]:
        """The part of :meth:`get_config` that decides the vectors (a job's fingerprint)."""
        return {k: v for k, v in self.get_config().items() if k not in self.operational_keys}

    @classmethod
    def build_from_config(cls, config: dict[str, Any]) -> EmbeddingFunction:
        """Rebuild a function from :meth:`get_config`'s output."""
        if not isinstance(config, dict):
            raise ConfigError(f"{cls.__name__} config must be a dict, got {type(config).__name__}")
        cls.validate_config(config)
        check_config_keys(cls, config)
        try:
            return cls(**config)
        except TypeError as exc:
            raise ConfigError(f"invalid config for {cls.__name__}: {exc}") from exc

    @classmethod
    def validate_config(cls, config: dict[str, Any]) -> None:
        """Check that a config is JSON-serializable (Chroma calls this too)."""
        try:
            json.dumps(config)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{cls.__name__} config is not JSON-serializable: {exc}") from exc

    def validate_config_update(  # noqa: B027 - a deliberate no-op hook
        self, old_config: dict[str, Any], new_config: dict[str, Any]
    ) -> None:
        """Chroma hook: any config update is acceptable (a new config means a new function)."""

    def is_legacy(self) -> bool:
        """Chroma hook: embedfleet functions always carry a config."""
        return False

    def default_space(self) -> str:
        """Chroma hook: the distance a collection should use with these vectors."""
        return "cosine"

    def supported_spaces(self) -> list[str]:
        """Chroma hook: distances that make sense for these vectors."""
        return ["cosine", "l2", "ip"]

    def describe(self) -> dict[str, Any]:
        """What to record next to vectors: provider, config and resolved settings."""
        return {
            "provider": self.provider_name,
            "config": self.get_config(),
            "dimension": self.dimension,
        }

    def __repr__(self) -> str:
        arguments = ", ".join(f"{key}={value!r}" for key, value in self.get_config().items())
        return f"{type(self).__name__}({arguments})"

    def __getstate__(self) -> dict[str, Any]:
        """Pickle the attributes (subclasses drop what stays in its process: models,
        clients, locks); cloudpickle ships custom functions to replicas."""
        return dict(self.__dict__)

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    # ------------------------------------------------------------------ shared machinery
    def _embed_all(self, texts: Documents, *, query: bool) -> tuple[Embeddings, CallCounts]:
        if not texts:
            return [], CallCounts()
        unique_texts, positions, first_seen = deduplicate(texts)
        plan = self.plan_call(unique_texts, query=query)
        enforce_limit(plan, self.max_tokens(), self.on_long, first_seen, type(self).__name__)
        limit = self.max_tokens() if plan.counted else None
        # Cut shortest first, run longest first: memory peaks with the first batch and
        # later batches reuse it (the allocator keeps what was freed), a batch too big
        # for the device fails before the rest of the work is done, and a fleet's
        # replicas end on short batches together.
        batch_indices = cut_batches(plan, self.batch_size, self.max_batch_tokens, limit)[::-1]
        batches = [[unique_texts[index] for index in indices] for indices in batch_indices]
        vectors: list[Embedding | None] = [None] * len(unique_texts)
        for indices, output in zip(batch_indices, self._embed_batches(batches, plan), strict=True):
            matrix = self._check_output(output, [first_seen[index] for index in indices])
            for row, index in enumerate(indices):
                vectors[index] = matrix[row]
        self.stats.record(plan.counts, calls=1, documents=len(texts), embedded=len(unique_texts))
        return [vectors[position] for position in positions], plan.counts  # type: ignore[misc]

    def plan_call(self, texts: Documents, *, query: bool) -> CallPlan:
        """Sort keys for one call's unique texts: token counts where the function can
        count them (:meth:`token_lengths`), else characters. Functions that learn
        more while counting (token ids) keep it in the plan's ``state``."""
        counts = self.token_lengths(texts, query=query)
        if counts is None:
            return CallPlan(texts, query, [len(text) for text in texts], counted=False)
        return CallPlan(texts, query, list(counts), counted=True)

    def _embed_batches(self, batches: list[Documents], plan: CallPlan) -> Iterator[Any]:
        """One output per batch, in order. In-process: one after the other; a fleet
        overrides this to spread batches over its replicas."""
        for batch in batches:
            yield self.embed_batch(batch, query=plan.query)

    def warm_up(self) -> None:  # noqa: B027 - most providers have nothing to load
        """Load what the first call would (a model), so start-up errors surface early."""

    def set_num_threads(self, threads: int) -> None:  # noqa: B027 - most providers have none
        """Limit the compute threads this function uses (a fleet replica's CPU share)."""

    def _check_output(self, output: Any, input_indices: list[int]) -> npt.NDArray[np.float32]:
        """Validate one batch's vectors; ``input_indices`` name its texts in error messages."""
        name = type(self).__name__
        expected = len(input_indices)
        try:
            matrix = np.asarray(output, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise EmbeddingOutputError(f"{name} returned vectors of unequal length") from exc
        if matrix.ndim != 2 or matrix.shape[0] != expected:
            raise EmbeddingOutputError(
                f"{name} returned {matrix.shape[0] if matrix.ndim else 0} vectors "
                f"of shape {matrix.shape[1:]} for {expected} texts"
            )
        bad_rows = np.flatnonzero(~np.isfinite(matrix).all(axis=1))
        if bad_rows.size:
            where = ", ".join(str(input_indices[row]) for row in bad_rows[:10])
            raise EmbeddingOutputError(
                f"{name} returned non-finite values (NaN or inf) for the texts at index {where}"
            )
        dimension = matrix.shape[1]
        if self._dimension is None:
            self._dimension = dimension
        elif dimension != self._dimension:
            raise EmbeddingOutputError(
                f"{name} returned {dimension}-dimensional vectors, expected {self._dimension}"
            )
        return np.ascontiguousarray(matrix)


CHROMA_REGISTRY_MODULE = "chromadb.utils.embedding_functions"


def make_known_to_chroma(cls: type[EmbeddingFunction]) -> None:
    """Add ``cls`` to Chroma's registry if chromadb is already imported (never imports it):
    Chroma rebuilds a persisted collection's function by looking ``name()`` up there."""
    chroma = sys.modules.get(CHROMA_REGISTRY_MODULE)
    name = cls.name()
    if chroma is not None and isinstance(name, str):
        chroma.known_embedding_functions.setdefault(name, cls)
