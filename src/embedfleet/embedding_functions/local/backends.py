"""What differs between running a local model on torch and on ONNX Runtime, in one place.

A sentence-transformers function does the same work whichever library runs its
model: tokenize a call once, cut and pipeline the batches, redo normalization in
float32. Only a few things depend on the library, and each backend answers them
behind :class:`Backend`: which device and precision it runs (and how a reduced
precision is guarded), how one batch of features becomes float32 vectors, what
it adds to ``describe()``, how it is pinned to a replica's CPUs and what warming
up loads. :func:`choose_backend` is the only place that maps the ``backend``
setting to a class, so the function never asks which one it holds.

A backend is made lazily in the process that runs the model and is never
pickled: a Ray worker may have a GPU (or CPU flags) its driver lacks, so device
and precision are resolved again where a pickled function lands.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np

from embedfleet.embedding_functions.local.models import (
    ModelSpec,
    check_precision,
    load_model,
    resolve_device,
    resolve_precision,
)
from embedfleet.embedding_functions.local.onnx_export import (
    OnnxModel,
    check_onnx_precision,
    load_onnx_model,
)
from embedfleet.embedding_functions.local.precision_guard import guarded_precision
from embedfleet.embedding_functions.local.token_batches import tokenizer_lock
from embedfleet.errors import ConfigError
from embedfleet.timings import phase

#: The model a function loads for a (resolved device, precision): the function knows
#: the model's name and load arguments, the backend the device and precision.
SpecFor = Callable[[str, str], ModelSpec]


class Backend(ABC):
    """Runs one function's model in this process.

    ``device`` is resolved when the backend is made; ``precision`` when first read
    (for ``"auto"``, after its quality guard). The sentence-transformers model named
    by :meth:`model_spec` is loaded in either case: its tokenizer and preprocessing
    make the batches, and for ONNX it is what gets exported.
    """

    name: ClassVar[str]

    def __init__(
        self, spec_for: SpecFor, device: str, requested_precision: str, threads: int | None
    ) -> None:
        self._spec_for = spec_for
        self.requested_precision = requested_precision
        self.threads = threads  # a fleet replica's CPU share; None: the libraries' default
        self.device = self._resolve_device(device)

    @classmethod
    @abstractmethod
    def check(cls, device: str, precision: str) -> None:
        """Raise ConfigError unless this backend runs ``precision`` on ``device``."""

    @staticmethod
    @abstractmethod
    def _resolve_device(device: str) -> str:
        """The device ``device`` ("auto", "cpu", "cuda:1", ...) means in this process."""

    @property
    @abstractmethod
    def precision(self) -> str:
        """The precision the model runs in, resolved (and guarded) here."""

    @abstractmethod
    def model_spec(self) -> ModelSpec:
        """The sentence-transformers model this backend loads."""

    @abstractmethod
    def run(self, features: dict[str, Any]) -> np.ndarray:
        """One batch of model inputs to float32 vectors (before any normalization redo)."""

    def describe(self) -> dict[str, Any]:
        """What the backend measured, for ``describe()`` (empty: nothing)."""
        return {}

    def set_num_threads(self, threads: int) -> None:
        """Pin torch's intra-op threads and the tokenizer's pool to ``threads`` cores."""
        with phase("imports"):
            import torch

        os.environ["RAYON_NUM_THREADS"] = str(threads)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)
        self.threads = threads

    def warm_up(self) -> None:
        """Load what the first batch would."""
        load_model(self.model_spec())


class TorchBackend(Backend):
    """The model on torch, on any device, in fp32, fp16 or bf16; ``"auto"`` picks a
    reduced precision for the hardware and keeps it only where its guard holds."""

    name = "torch"

    def __init__(
        self, spec_for: SpecFor, device: str, requested_precision: str, threads: int | None
    ) -> None:
        super().__init__(spec_for, device, requested_precision, threads)
        self._precision: str | None = None
        self._min_cosine: float | None = None  # the guard's measurement, if taken

    @classmethod
    def check(cls, device: str, precision: str) -> None:
        check_precision(precision)

    @staticmethod
    def _resolve_device(device: str) -> str:
        return resolve_device(device)

    @property
    def precision(self) -> str:
        if self._precision is None:
            resolved = resolve_precision(self.requested_precision, self.device)
            if self.requested_precision == "auto" and resolved != "fp32":
                fp32 = self._spec_for(self.device, "fp32")
                resolved, self._min_cosine = guarded_precision(fp32, resolved)
            self._precision = resolved
        return self._precision

    def model_spec(self) -> ModelSpec:
        return self._spec_for(self.device, self.precision)

    def run(self, features: dict[str, Any]) -> np.ndarray:
        import torch

        model = load_model(self.model_spec())
        device = model.device
        tensors = {
            key: (torch.from_numpy(value) if isinstance(value, np.ndarray) else value)
            for key, value in features.items()
        }
        tensors = {
            key: value.to(device) if isinstance(value, torch.Tensor) else value
            for key, value in tensors.items()
        }
        with torch.inference_mode():
            output = model(tensors)
            return output["sentence_embedding"].float().cpu().numpy()

    def describe(self) -> dict[str, Any]:
        if self._min_cosine is None:
            return {}
        return {"precision_min_cosine": round(self._min_cosine, 6)}


class OnnxBackend(Backend):
    """The model exported to ONNX Runtime on the CPU, in fp32 or int8; ``"auto"`` picks
    int8 only where its guard holds (:mod:`.onnx_export`)."""

    name = "onnx"

    def __init__(
        self, spec_for: SpecFor, device: str, requested_precision: str, threads: int | None
    ) -> None:
        super().__init__(spec_for, device, requested_precision, threads)
        self._onnx_model: OnnxModel | None = None

    @classmethod
    def check(cls, device: str, precision: str) -> None:
        check_onnx_precision(precision)
        if device not in ("auto", "cpu"):
            raise ConfigError(
                f"backend='onnx' runs on the CPU; use backend='torch' for device={device!r}"
            )

    @staticmethod
    def _resolve_device(device: str) -> str:
        return "cpu"

    @property
    def precision(self) -> str:
        if self.requested_precision == "fp32":
            return "fp32"
        return self.onnx_model().precision

    def model_spec(self) -> ModelSpec:
        return self._spec_for(self.device, "fp32")  # what is exported

    def onnx_model(self) -> OnnxModel:
        """The ONNX Runtime model (exported, quantized and measured on first use)."""
        if self._onnx_model is not None:
            return self._onnx_model
        model = load_model(self.model_spec())
        if any(getattr(module, "include_prompt", True) is False for module in model):
            raise ConfigError(
                "backend='onnx' cannot leave a prompt out of the pooling (Instructor-style "
                "models); use backend='torch'"
            )
        with tokenizer_lock(model.tokenizer):
            example = model.preprocess(["x"])
        inputs = tuple(
            name for name in ("input_ids", "attention_mask", "token_type_ids") if name in example
        )
        self._onnx_model = load_onnx_model(model, inputs, self.requested_precision, self.threads)
        return self._onnx_model

    def run(self, features: dict[str, Any]) -> np.ndarray:
        return self.onnx_model().run(features)

    def describe(self) -> dict[str, Any]:
        return {"int8_min_cosine": self.onnx_model().int8_min_cosine}

    def set_num_threads(self, threads: int) -> None:
        """Pin torch (it tokenizes and preprocesses) and the session's intra-op threads."""
        super().set_num_threads(threads)
        self._onnx_model = None  # made again with these threads

    def warm_up(self) -> None:
        super().warm_up()
        self.onnx_model()


_BACKENDS: dict[str, type[Backend]] = {kind.name: kind for kind in (TorchBackend, OnnxBackend)}
BACKENDS = tuple(_BACKENDS)


def check_backend(backend: str, device: str, precision: str) -> None:
    """``torch`` takes any device and fp32/fp16/bf16; ``onnx`` runs on CPU, fp32 or int8."""
    if backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {BACKENDS}, got {backend!r}")
    _BACKENDS[backend].check(device, precision)


def choose_backend(
    backend: str, spec_for: SpecFor, device: str, precision: str, threads: int | None
) -> Backend:
    """The backend named ``backend`` (already checked), for this process."""
    return _BACKENDS[backend](spec_for, device, precision, threads)
