"""ONNX Runtime for local models on CPU: exported once with torch, run by ORT.

``backend="onnx"`` on a sentence-transformers function (:class:`~.backends.OnnxBackend`
runs what this module makes). The whole model (transformer, pooling,
normalization) is exported with torch's own exporter (no ``optimum``, which pins
transformers) into ``$EMBEDFLEET_CACHE_DIR/onnx/<key>/``, under a key made of
the weights, the model's modules, the library versions and the guard's identity,
so a changed model (or guard corpus) never reuses a stale export. An export is
expensive, so it is a once-per-machine result (:func:`~.quality_guard.measured_once`):
replicas starting together on one machine export once, and since files are
written to a temporary directory and renamed into place, a crash never leaves
half a model behind. The fp32 export must reproduce torch fp32 on the guard
corpus (:data:`~.quality_guard.FP32_MAX_RELATIVE_ERROR`), or the backend is
refused for that model: ``precision="fp32"`` then means what it says.

Precision: ``fp32`` runs the exported model as is. ``int8`` stores the MatMul
weights as int8 in blocks of 32 with int8 compute (``onnxruntime.quantization``'s
MatMulNBits quantizer: one scale per block holds the outlier channels that one
scale per tensor or per channel loses; docs/benchmarks.md compares the recipes) and
is only used where the quality guard holds: every guard-corpus int8 vector must
keep cosine >= :data:`~.quality_guard.INT8_MIN_COSINE` to its fp32 vector. The
measurement is taken with the export and kept next to its files (``guard.json``).
``precision="int8"`` raises :class:`~embedfleet.errors.QualityGuardError` when it
fails; ``"auto"`` falls back to fp32.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
import threading
import time
import warnings
import weakref
from contextlib import suppress
from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from embedfleet.embedding_functions.local import quality_guard
from embedfleet.embedding_functions.local.machine_cache import cache_dir
from embedfleet.embedding_functions.local.token_batches import tokenizer_lock
from embedfleet.errors import ConfigError, MissingDependencyError, ModelError, QualityGuardError

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

logger = logging.getLogger(__name__)

ONNX_INSTALL_HINT = 'pip install "embedfleet[onnx]"'
ONNX_PRECISIONS = ("auto", "fp32", "int8")
#: Bump when the export or quantization recipe changes: old exports are then ignored.
EXPORT_FORMAT = 2
OPSET = 17
OUTPUT = "sentence_embedding"


@dataclass(frozen=True)
class OnnxModel:
    """One ORT session over an exported model, with what the guard measured."""

    session: Any
    input_names: tuple[str, ...]
    precision: str  # "fp32" or "int8"
    int8_min_cosine: float | None  # the guard's measurement, None when not taken
    path: Path
    threads: int | None  # the session's intra-op threads (None: ORT's default, all cores)

    def run(self, features: dict[str, Any]) -> np.ndarray:
        """Vectors for one batch of model inputs (numpy or torch int64 arrays)."""
        feed = {name: _as_numpy(features[name]) for name in self.input_names}
        (vectors,) = self.session.run([OUTPUT], feed)
        return np.asarray(vectors, dtype=np.float32)


def require_onnx() -> Any:
    try:
        import onnx  # noqa: F401 - the exporter and the quantizer need it
        import onnxruntime
    except ImportError as exc:
        raise MissingDependencyError(
            f"backend='onnx' needs onnx and onnxruntime: {ONNX_INSTALL_HINT}"
        ) from exc
    return onnxruntime


def check_onnx_precision(precision: str) -> None:
    if precision not in ONNX_PRECISIONS:
        raise ConfigError(
            f"with backend='onnx', precision must be one of {ONNX_PRECISIONS}, got {precision!r}"
        )


# ---------------------------------------------------------------------- process cache
_models: dict[tuple[str, str], OnnxModel] = {}  # (export, precision): the latest session
_keys: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()  # model -> export key
_lock = threading.Lock()


def load_onnx_model(
    model: SentenceTransformer, input_names: tuple[str, ...], precision: str, threads: int | None
) -> OnnxModel:
    """The ORT model for ``model`` at ``precision`` ("auto", "fp32" or "int8"), exporting
    (and quantizing, and measuring) on first use. One session per export and precision in
    a process; asking for other threads replaces it (a function keeps the one it holds)."""
    check_onnx_precision(precision)
    ort = require_onnx()
    with _lock:  # sessions are cheap to share; the export is measured once anyway
        export = Export(model, input_names, export_directory(model, input_names))
        guard = quality_guard.measured_once(("onnx", str(export.directory)), export)
        assert guard is not None  # an export is always measured (or raises)
        resolved = _resolve(precision, guard)
        key = (str(export.directory), resolved)
        current = _models.get(key)
        if current is None or current.threads != threads:
            path = export.directory / ("model.int8.onnx" if resolved == "int8" else "model.onnx")
            session = _session(ort, path, threads)
            _models[key] = OnnxModel(
                session, input_names, resolved, guard["int8_min_cosine"], path, threads
            )
        return _models[key]


def _resolve(precision: str, guard: dict[str, Any]) -> str:
    floor = quality_guard.INT8_MIN_COSINE
    passed = guard["int8_min_cosine"] >= floor
    if precision == "int8" and not passed:
        raise QualityGuardError(
            f"int8 fails the quality guard for this model: the minimum cosine to fp32 on the "
            f"guard corpus is {guard['int8_min_cosine']:.4f}, below {floor}. Use "
            "precision='fp32' (or 'auto', which picks int8 only where the guard holds)"
        )
    if precision == "auto":
        return "int8" if passed else "fp32"
    return precision


def _session(ort: Any, path: Path, threads: int | None) -> Any:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.inter_op_num_threads = 1
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


# ---------------------------------------------------------------------- export
def export_key(model: SentenceTransformer, input_names: tuple[str, ...]) -> str:
    """Changes with the weights, the modules' settings, the inputs, the versions and the
    guard (its corpus by content)."""
    import onnxruntime
    import torch

    digest = hashlib.sha256()
    description = {
        "format": EXPORT_FORMAT,
        "opset": OPSET,
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "modules": repr(model),
        "max_seq_length": model.max_seq_length,
        "inputs": input_names,
        "guard": quality_guard.guard_identity(),
    }
    digest.update(json.dumps(description, sort_keys=True).encode())
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu").contiguous().view(-1).view(torch.uint8).numpy())
    return digest.hexdigest()[:32]


def export_directory(model: SentenceTransformer, input_names: tuple[str, ...]) -> Path:
    """Where ``model``'s export lives (or will), hashing its weights once per loaded model."""
    key = _keys.get(model)
    if key is None:
        key = _keys[model] = export_key(model, input_names)
    return cache_dir() / "onnx" / key


@dataclass(frozen=True)
class Export:
    """A model's fp32 export, its int8 model and their guard, as a once-per-machine result
    (:class:`~.quality_guard.OncePerMachine`): the guard's measurement (``guard.json``),
    whose presence also marks the directory complete."""

    model: SentenceTransformer
    input_names: tuple[str, ...]
    directory: Path

    needs_cache: ClassVar[bool] = True  # ORT runs the files: no files, no backend

    def location(self) -> Path:
        return self.directory

    def lock_path(self, location: Path) -> Path:
        return location.parent / f".{location.name}.lock"

    def read(self, location: Path) -> dict[str, Any] | None:
        guard = location / "guard.json"
        return json.loads(guard.read_text()) if guard.is_file() else None

    def measure(self, location: Path | None, *, exclusive: bool) -> dict[str, Any]:
        """Export, quantize and measure into a staging directory renamed into place."""
        assert location is not None  # needs_cache: always given a place
        root, key = location.parent, location.name
        for stale in root.glob(f".export-{key}-*") if exclusive else ():  # a killed export's
            shutil.rmtree(stale, ignore_errors=True)
        started = time.perf_counter()
        staging = Path(tempfile.mkdtemp(prefix=f".export-{key}-", dir=root))
        try:
            _export(self.model, self.input_names, staging / "model.onnx")
            _quantize(staging / "model.onnx", staging / "model.int8.onnx")
            guard = {**_measure(self.model, staging), "floor": quality_guard.INT8_MIN_COSINE}
            guard["corpus_texts"] = len(quality_guard.guard_texts())
            (staging / "guard.json").write_text(json.dumps(guard, indent=2) + "\n")
            staging.chmod(0o755)  # mkdtemp's 0700 would hide the export from other users
            try:
                staging.rename(location)
            except OSError:  # unlocked (Windows): another process renamed its export first
                if not (location / "guard.json").is_file():
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        logger.info("exported the model to %s in %.1f s", location, time.perf_counter() - started)
        return self.read(location) or guard  # the kept one, where another process won


def _export(model: SentenceTransformer, input_names: tuple[str, ...], path: Path) -> None:
    """Trace a copy of the model with eager attention: plain MatMul/Softmax nodes, which the
    quantizer sees and which ran faster on ONNX Runtime than the traced SDPA graph
    (docs/benchmarks.md)."""
    import torch

    copy = deepcopy(model).to("cpu").float()
    set_attention = getattr(getattr(copy[0], "auto_model", None), "set_attn_implementation", None)
    if callable(set_attention):
        with suppress(ValueError, NotImplementedError):  # no eager attention: export as is
            set_attention("eager")

    class Exported(torch.nn.Module):
        """The sentence-transformers model as a function of positional int64 inputs."""

        def __init__(self) -> None:
            super().__init__()
            self.model = copy

        def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
            features = dict(zip(input_names, inputs, strict=True))
            return self.model(features)[OUTPUT]

    with tokenizer_lock(copy.tokenizer):
        example = copy.preprocess(["an example text to trace", "another"])
    arguments = tuple(example[name] for name in input_names)
    axes = {name: {0: "batch", 1: "sequence"} for name in input_names}
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notes about constant shape checks
        torch.onnx.export(
            Exported().eval(),
            arguments,
            str(path),
            dynamo=False,
            input_names=list(input_names),
            output_names=[OUTPUT],
            dynamic_axes={**axes, OUTPUT: {0: "batch"}},
            opset_version=OPSET,
        )


def _quantize(source: Path, target: Path) -> None:
    """int8 weights in blocks of 32 (one scale each, symmetric), int8 compute
    (MatMulNBits, accuracy level 4): per-block scales keep the outlier channels that
    per-tensor or per-channel dynamic quantization loses."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    chatty = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")
    level = chatty.level
    chatty.setLevel(logging.WARNING)  # it logs every node at INFO
    try:
        quantizer = MatMulNBitsQuantizer(
            onnx.load(str(source)), bits=8, block_size=32, is_symmetric=True, accuracy_level=4
        )
        quantizer.process()
        quantizer.model.save_model_to_file(str(target), False)
    finally:
        chatty.setLevel(level)


# ---------------------------------------------------------------------- the int8 guard
def _measure(model: SentenceTransformer, directory: Path) -> dict[str, float]:
    """Over the guard corpus: the fp32 export's largest relative error to torch fp32 (it
    must reproduce torch, or the export is refused) and int8's minimum cosine to fp32."""
    import torch

    ort = require_onnx()
    texts = sorted(quality_guard.guard_texts(), key=len)
    fp32 = _session(ort, directory / "model.onnx", None)
    int8 = _session(ort, directory / "model.int8.onnx", None)
    lowest, error = 1.0, 0.0
    for start in range(0, len(texts), 16):
        with tokenizer_lock(model.tokenizer):
            features = model.preprocess(texts[start : start + 16])
        feed = {node.name: _as_numpy(features[node.name]) for node in fp32.get_inputs()}
        reference = fp32.run([OUTPUT], feed)[0]
        with torch.inference_mode():
            expected = model(features)[OUTPUT].float().cpu().numpy()
        error = max(error, float(quality_guard.relative_errors(reference, expected).max()))
        lowered = int8.run([OUTPUT], feed)[0]
        lowest = min(lowest, float(quality_guard.cosines(reference, lowered).min()))
    ceiling = quality_guard.FP32_MAX_RELATIVE_ERROR
    if error > ceiling:
        raise ModelError(
            f"the ONNX export of this model does not reproduce it: a vector differs from torch "
            f"fp32 by {error:.2e} (relative) on the guard corpus, over "
            f"{ceiling:.0e}; use backend='torch' for this model"
        )
    return {"int8_min_cosine": lowest, "fp32_max_relative_error": error}


def _as_numpy(value: Any) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value.astype(np.int64, copy=False)
    return value.detach().to("cpu").numpy().astype(np.int64, copy=False)
