"""A reduced precision is used only where it keeps the vectors; measured once per machine.

Speed from bf16, fp16 or int8 is worth nothing if the vectors move: a model is
not guaranteed to survive fewer bits (activations far from zero lose their
small differences, fp16 overflows, outlier channels defeat a shared int8
scale). So both reduced-precision paths, torch's bf16/fp16
(:mod:`.precision_guard`) and ONNX Runtime's int8 (:mod:`.onnx_export`),
compare against fp32 on the same texts (:func:`guard_texts`) with the same
measure (:func:`cosines`; a non-finite vector scores -1) and the floors here.

A measurement loads a second copy of the model (or exports it) and embeds the
corpus twice: seconds a fleet's replicas should not each spend on every start.
:func:`measured_once` is the one mechanism both guards use: a result is keyed
(by the model, the versions, :func:`guard_identity`: the corpus by content and
:data:`GUARD_VERSION`), kept whole under ``$EMBEDFLEET_CACHE_DIR``, made under
a lock beside it so processes starting together measure once (one measures, the
others wait and read it), and memoised per process.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Hashable
from contextlib import ExitStack
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeVar

import numpy as np

from embedfleet.atomic_files import write_bytes_atomically
from embedfleet.embedding_functions.local.guard_corpus import guard_corpus, texts_digest
from embedfleet.embedding_functions.local.machine_cache import file_lock
from embedfleet.timings import phase

logger = logging.getLogger(__name__)

#: A reduced torch precision (bf16, fp16) is picked by ``"auto"`` only if every
#: guard-corpus vector keeps this cosine to fp32.
REDUCED_MIN_COSINE = 0.999
#: ONNX int8 is used only if every guard-corpus vector keeps this cosine to fp32.
INT8_MIN_COSINE = 0.999
#: An fp32 ONNX export must reproduce torch fp32 this closely (per vector, relative).
FP32_MAX_RELATIVE_ERROR = 1e-4
#: Part of every kept result's key: bump it when the measurement changes (the corpus
#: is in the key by content already).
GUARD_VERSION = 2

R = TypeVar("R")


def guard_texts() -> list[str]:
    """The texts every guard measures on (:func:`.guard_corpus.guard_corpus`)."""
    return guard_corpus()


def guard_identity() -> dict[str, Any]:
    """What every kept guard result is keyed by besides its model: the guard's version
    and a hash of its texts, so a changed corpus measures again."""
    return {"version": GUARD_VERSION, "corpus": texts_digest(guard_texts())}


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine; a row with a non-finite value scores -1."""
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    result = np.einsum("ij,ij->i", a, b) / np.maximum(norms, 1e-12)
    return np.where(np.isfinite(result), result, -1.0)


def relative_errors(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise ``|a - b| / |b|``."""
    return np.linalg.norm(a - b, axis=1) / np.maximum(np.linalg.norm(b, axis=1), 1e-12)


# ---------------------------------------------------------------------- once per machine
class OncePerMachine(Protocol[R]):
    """One result worth measuring once per machine: where it is kept, how it is read
    back, and how it is measured (and kept whole, where a place to keep it is given)."""

    #: True where the result exists only as kept files (an export): a cache that cannot
    #: be written is then an error instead of a measurement in every process.
    needs_cache: ClassVar[bool]

    def location(self) -> Path | None:
        """Where the result is kept; None where it cannot be keyed here (measure, keep
        nothing)."""
        ...

    def lock_path(self, location: Path) -> Path:
        """The lock file that processes making this result take."""
        ...

    def read(self, location: Path) -> R | None:
        """The kept result, or None where there is none (or it is unreadable)."""
        ...

    def measure(self, location: Path | None, *, exclusive: bool) -> R | None:
        """Measure; with a ``location``, keep the result there whole. ``exclusive``: the
        lock is held (without one, another process may be measuring too). None: it
        could not be measured here, and nothing is kept or memoised."""
        ...


_memo: dict[Hashable, Any] = {}
_key_locks: dict[Hashable, threading.Lock] = {}
_memo_lock = threading.Lock()


def measured_once(key: Hashable, result: OncePerMachine[R]) -> R | None:
    """``result``'s value, measured at most once per machine (kept on disk) and once per
    process (memoised under ``key``); threads asking together wait for one measurement."""
    with _memo_lock:
        if key in _memo:
            return _memo[key]  # type: ignore[no-any-return]
        key_lock = _key_locks.setdefault(key, threading.Lock())
    with key_lock:
        with _memo_lock:
            if key in _memo:  # measured by another thread while this one waited
                return _memo[key]  # type: ignore[no-any-return]
        with phase("precision_guard"):  # reading a kept result, or measuring
            value = _kept_or_measured(result)
        if value is not None:
            with _memo_lock:
                _memo[key] = value
    return value


def _kept_or_measured(result: OncePerMachine[R]) -> R | None:
    """The kept result, or a new measurement, kept. Processes starting together (a fleet's
    replicas) take a lock beside the result: one measures, the others wait and read it."""
    location = result.location()
    if location is None:  # nowhere to keep it
        return result.measure(None, exclusive=False)
    kept = result.read(location)
    if kept is not None:
        return kept
    with ExitStack() as stack:
        try:
            location.parent.mkdir(parents=True, exist_ok=True)
            exclusive = stack.enter_context(file_lock(result.lock_path(location)))
        except OSError:  # a read-only cache: measure, keep nothing
            if result.needs_cache:
                raise
            return result.measure(None, exclusive=False)
        kept = result.read(location)  # measured by another process while this one waited
        if kept is not None:
            return kept
        return result.measure(location, exclusive=exclusive)


def keep_json(path: Path, result: dict[str, Any]) -> None:
    """Write ``result`` whole or not at all (a reader never sees half a file); a cache that
    cannot be written only costs a measurement per process, so that is a warning."""
    import fsspec

    try:
        data = json.dumps(result, indent=2).encode()
        write_bytes_atomically(fsspec.filesystem("file"), str(path), data)
    except OSError as exc:
        logger.warning("could not keep the quality guard's result in %s: %s", path, exc)
