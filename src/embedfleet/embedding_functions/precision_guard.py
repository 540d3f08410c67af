"""``precision="auto"`` picks a reduced precision only where the model keeps its vectors.

Auto means bf16 on CPUs with native bf16 and fp16 on CUDA (about 2x faster), but
a model is not guaranteed to survive it: activations far from zero lose their
small differences in 8 (bf16) or 11 (fp16) bits of mantissa, and fp16 overflows
past 65,504. So before auto uses a reduced precision for a model, the guard
embeds :func:`guard_corpus` (short, medium and long texts, several scripts) in
fp32 and in the reduced precision on the same device; the reduced one is used
only if every vector keeps cosine >= :data:`REDUCED_MIN_COSINE` to fp32 (a
non-finite vector counts as -1). Otherwise auto falls back to fp32 and says so
in the log. An explicit precision is never second-guessed.

The measurement loads the model twice (fp32, then the reduced precision as it will
run; one copy at a time) and embeds the corpus with each, once per machine: the
result is kept in ``$EMBEDFLEET_CACHE_DIR/precision/<key>.json``, keyed by the
model's files (name, size and mtime of each, dot-folders left out), its load
arguments, the precision, the device's model name, the library versions and the
guard's own version. Where the model's files cannot be found (a hub model not yet
downloaded), the result is measured again by the next process instead of cached.
Where the model does not fit on its device in fp32 (a model sized for fp16), the
guard cannot run: the reduced precision is used, with a warning, unmeasured.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import threading
import time
from contextlib import ExitStack
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from embedfleet._version import __version__
from embedfleet.atomic_files import write_bytes_atomically
from embedfleet.embedding_functions.local_models import ModelSpec, hub_snapshot, load_uncached
from embedfleet.embedding_functions.machine_cache import cache_dir, file_lock

logger = logging.getLogger(__name__)

#: A reduced precision is picked by ``"auto"`` only if every guard-corpus vector keeps
#: this cosine to fp32 (all-MiniLM-L6-v2 in bf16: 0.9999).
REDUCED_MIN_COSINE = 0.999
#: Part of every cache key: bump it when the corpus or the measurement changes.
GUARD_VERSION = 1
_measured: dict[tuple[ModelSpec, str], float] = {}
_lock = threading.Lock()


def guard_corpus() -> list[str]:
    """Short, medium and long texts (past 256 tokens), English and other scripts."""
    from embedfleet.bench import corpus

    return [
        *corpus(96, seed=20261125),
        "The quick brown fox jumps over the lazy dog.",
        "Embeddings map text to vectors so that similar meanings lie close together.",
        "Der schnelle braune Fuchs springt über den faulen Hund.",
        "Le renard brun rapide saute par-dessus le chien paresseux.",
        "東京は日本の首都であり、世界最大の都市圏の一つです。",
        "Быстрая коричневая лиса перепрыгивает через ленивую собаку.",
        "def embed(texts): return model.encode(texts, batch_size=32)",
        "SELECT id, text FROM documents WHERE updated_at > '2026-01-01';",
    ]


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine; a row with a non-finite value scores -1."""
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    result = np.einsum("ij,ij->i", a, b) / np.maximum(norms, 1e-12)
    return np.where(np.isfinite(result), result, -1.0)


def guarded_precision(spec: ModelSpec, reduced: str) -> tuple[str, float | None]:
    """The precision ``"auto"`` uses for ``spec``'s model, ``reduced`` or ``"fp32"``, and
    the guard's minimum cosine of ``reduced`` to fp32 (measured once per process at most;
    None, and ``reduced``, where the model does not fit on its device in fp32)."""
    key = (replace(spec, precision="fp32"), reduced)
    with _lock:  # threads starting together measure once
        lowest = _measured.get(key)
        if lowest is None:
            lowest = _measured_once(spec, reduced)
            if lowest is None:  # could not be measured here: not kept, not memoised
                return reduced, None
            _measured[key] = lowest
    if lowest >= REDUCED_MIN_COSINE:
        return reduced, lowest
    logger.warning(
        "precision='auto': %s keeps a minimum cosine of %.4f to fp32 on the guard corpus for "
        "%s (below %s); using fp32",
        reduced,
        lowest,
        spec.source,
        REDUCED_MIN_COSINE,
    )
    return "fp32", lowest


def _measured_once(spec: ModelSpec, reduced: str) -> float | None:
    """The kept result, or a new measurement, kept. Processes starting together (a fleet's
    replicas) take a lock beside the result: one measures, the others wait and read it."""
    path = _result_path(spec, reduced)
    if path is None:  # nowhere to keep it
        return _measure(spec, reduced)
    lowest = _cached(path)
    if lowest is not None:
        return lowest
    with ExitStack() as stack:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            stack.enter_context(file_lock(path.with_suffix(".lock")))
        except OSError:  # a read-only cache: measure, keep nothing
            return _measure(spec, reduced)
        lowest = _cached(path)  # measured by another process while this one waited
        if lowest is None:
            lowest = _measure(spec, reduced)
            if lowest is not None:
                result = {"min_cosine": lowest, "floor": REDUCED_MIN_COSINE}
                _store(path, {**result, "precision": reduced})
    return lowest


def _measure(spec: ModelSpec, reduced: str) -> float | None:
    """Embed the guard corpus with the model loaded in fp32, then loaded in ``reduced`` as it
    will run (modules a model keeps in fp32 stay so), one copy at a time. None where the
    fp32 copy does not fit on the device (a model sized for reduced precision)."""
    started = time.perf_counter()
    texts = guard_corpus()
    try:
        reference = _embed(replace(spec, precision="fp32"), texts)
    except MemoryError as exc:
        logger.warning(
            "precision='auto': %s does not fit on %s in fp32 (%s), so its guard cannot run; "
            "using %s unmeasured",
            spec.source,
            spec.device,
            exc,
            reduced,
        )
        return None
    lowered = _embed(replace(spec, precision=reduced), texts)
    lowest = float(cosines(reference.astype(np.float64), lowered.astype(np.float64)).min())
    logger.info(
        "precision guard for %s on %s: %s keeps a minimum cosine of %.5f to fp32 (%.1f s)",
        spec.source,
        spec.device,
        reduced,
        lowest,
        time.perf_counter() - started,
    )
    return lowest


def _embed(spec: ModelSpec, texts: list[str]) -> np.ndarray:
    """``texts`` through a model loaded for ``spec`` outside the process cache, then freed;
    a CUDA out-of-memory error comes out as ``MemoryError``."""
    import torch

    model = None
    try:
        model = load_uncached(spec)
        return np.asarray(model.encode(texts, batch_size=16, convert_to_numpy=True))
    except torch.cuda.OutOfMemoryError as exc:
        raise MemoryError(str(exc).splitlines()[0]) from exc
    finally:
        del model
        gc.collect()
        if spec.device.startswith("cuda"):
            torch.cuda.empty_cache()


def _result_path(spec: ModelSpec, reduced: str) -> Path | None:
    files = _model_files(spec)
    if files is None:
        return None
    import sentence_transformers
    import torch
    import transformers

    parts = {
        "guard": [GUARD_VERSION, len(guard_corpus()), __version__],
        "spec": asdict(replace(spec, precision="fp32")),
        "files": files,
        "precision": reduced,
        "device": _device_model(spec.device),
        "versions": [
            torch.__version__,
            transformers.__version__,
            sentence_transformers.__version__,
        ],
    }
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]
    return cache_dir() / "precision" / f"{digest}.json"


def _model_files(spec: ModelSpec) -> list[tuple[str, int, int]] | None:
    """Name, size and mtime of each file of the model, or None where they are not here."""
    folder: Path | None = Path(spec.source)
    if not folder.is_dir():
        folder = hub_snapshot(spec.source, spec.revision)
        if folder is None:  # not downloaded yet: measure, do not keep
            return None
    files = []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if path.is_file() and not any(part.startswith(".") for part in relative.parts):
            status = path.stat()  # not .git/ or .cache/: they change without the model
            files.append((str(relative), status.st_size, status.st_mtime_ns))
    return files


def _device_model(device: str) -> str:
    """The model of the device, since reduced-precision kernels differ between them."""
    if device.startswith("cuda"):
        import torch

        return f"cuda:{torch.cuda.get_device_name(torch.device(device))}"
    import platform

    from embedfleet.embedding_functions.local_models import cpu_has_native_bf16

    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.partition(":")[2].strip()
                break
    except OSError:
        pass
    return f"{device}:{name}:native_bf16={cpu_has_native_bf16()}"


def _cached(path: Path | None) -> float | None:
    if path is None or not path.is_file():
        return None
    try:
        return float(json.loads(path.read_text())["min_cosine"])
    except (OSError, ValueError, KeyError, TypeError):  # unreadable: measure again
        return None


def _store(path: Path, result: dict[str, Any]) -> None:
    """Write ``result`` whole or not at all (a reader never sees half a file)."""
    import fsspec

    try:
        data = json.dumps(result, indent=2).encode()
        write_bytes_atomically(fsspec.filesystem("file"), str(path), data)
    except OSError as exc:  # a read-only cache only costs a measurement per process
        logger.warning("could not keep the precision guard's result in %s: %s", path, exc)
