"""``precision="auto"`` picks bf16/fp16 on torch only where the model keeps its vectors.

Auto means bf16 on CPUs with native bf16 and fp16 on CUDA, for speed, but a
model is not guaranteed to survive it: activations far from zero lose their
small differences in 8 (bf16) or 11 (fp16) bits of mantissa, and fp16 overflows
past 65,504. So before auto uses a reduced precision for a model, it embeds the
guard corpus in fp32 and in the reduced precision on the same device; the
reduced one is used only if every vector keeps cosine >=
:data:`~.quality_guard.REDUCED_MIN_COSINE` to fp32. Otherwise auto falls back to
fp32 and says so in the log. An explicit precision is never second-guessed.

The measurement loads the model twice (fp32, then the reduced precision as it will
run; one copy at a time, so memory peaks at one fp32 copy) and is taken once per
machine through :func:`~.quality_guard.measured_once`: kept in
``$EMBEDFLEET_CACHE_DIR/precision/<key>.json``, keyed by the model's files (name,
size and mtime of each, dot-folders left out), its load arguments, the precision,
the device's model name, the library versions and the guard's identity. Where the
model's files cannot be found (a hub model not yet downloaded), the next process
measures again instead of reading a kept result. Where the model does not fit on
its device in fp32 (a model sized for fp16), the guard cannot run: the reduced
precision is used, with a warning, unmeasured.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import ClassVar

import numpy as np

from embedfleet._version import __version__
from embedfleet.embedding_functions.local import models, quality_guard
from embedfleet.embedding_functions.local.machine_cache import cache_dir
from embedfleet.embedding_functions.local.models import ModelSpec, hub_snapshot, load_uncached

logger = logging.getLogger(__name__)


def guarded_precision(spec: ModelSpec, reduced: str) -> tuple[str, float | None]:
    """The precision ``"auto"`` uses for ``spec``'s model, ``reduced`` or ``"fp32"``, and
    the guard's minimum cosine of ``reduced`` to fp32 (measured once per process at most;
    None, and ``reduced``, where the model does not fit on its device in fp32)."""
    fp32 = replace(spec, precision="fp32")
    guard = ReducedPrecisionGuard(fp32, reduced)
    lowest = quality_guard.measured_once(("precision", fp32, reduced), guard)
    if lowest is None:  # could not be measured here: not kept, not memoised
        return reduced, None
    if lowest >= quality_guard.REDUCED_MIN_COSINE:
        return reduced, lowest
    logger.warning(
        "precision='auto': %s keeps a minimum cosine of %.4f to fp32 on the guard corpus for "
        "%s (below %s); using fp32",
        reduced,
        lowest,
        spec.source,
        quality_guard.REDUCED_MIN_COSINE,
    )
    return "fp32", lowest


@dataclass(frozen=True)
class ReducedPrecisionGuard:
    """The minimum cosine of ``reduced`` to fp32 for one model on one device, as a
    once-per-machine result (:class:`~.quality_guard.OncePerMachine`)."""

    spec: ModelSpec  # in fp32
    reduced: str

    needs_cache: ClassVar[bool] = False

    def location(self) -> Path | None:
        return _result_path(self.spec, self.reduced)

    def lock_path(self, location: Path) -> Path:
        return location.with_suffix(".lock")

    def read(self, location: Path) -> float | None:
        return _kept_min_cosine(location)

    def measure(self, location: Path | None, *, exclusive: bool) -> float | None:
        lowest = _measure(self.spec, self.reduced)
        if location is not None and lowest is not None:
            result = {"min_cosine": lowest, "floor": quality_guard.REDUCED_MIN_COSINE}
            quality_guard.keep_json(location, {**result, "precision": self.reduced})
        return lowest


def _measure(spec: ModelSpec, reduced: str) -> float | None:
    """Embed the guard corpus with the model loaded in fp32, then loaded in ``reduced`` as it
    will run (modules a model keeps in fp32 stay so), one copy at a time. None where the
    fp32 copy does not fit on the device (a model sized for reduced precision)."""
    started = time.perf_counter()
    texts = quality_guard.guard_texts()
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
    cosines = quality_guard.cosines(reference.astype(np.float64), lowered.astype(np.float64))
    lowest = float(cosines.min())
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
    from importlib.metadata import version

    import torch
    import transformers

    parts = {
        "guard": [quality_guard.guard_identity(), __version__],
        "spec": asdict(replace(spec, precision="fp32")),
        "files": files,
        "precision": reduced,
        "device": _device_model(spec.device),
        "versions": [
            torch.__version__,
            transformers.__version__,
            version("sentence-transformers"),  # read without importing it
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

    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.partition(":")[2].strip()
                break
    except OSError:
        pass
    return f"{device}:{name}:native_bf16={models.cpu_has_native_bf16()}"


def _kept_min_cosine(path: Path | None) -> float | None:
    if path is None or not path.is_file():
        return None
    try:
        return float(json.loads(path.read_text())["min_cosine"])
    except (OSError, ValueError, KeyError, TypeError):  # unreadable: measure again
        return None
