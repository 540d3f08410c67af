"""Local models through sentence-transformers: any model, the default, Instructor.

All three share one implementation, whichever library runs the model: a call
is tokenized once and planned (:meth:`plan_call`, the ids kept in the call's
plan), its batches are built from those ids on a helper thread while the
model runs the previous one, and the vectors are post-processed in float32 as
``encode`` would. What depends on the library (torch or ONNX Runtime) sits
behind :class:`~.backends.Backend`, chosen once per process. Nothing is loaded
until the first non-empty call, so building a function (on a driver, in a
config round-trip) is cheap.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
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
from embedfleet.embedding_functions.config_keys import check_config_keys
from embedfleet.embedding_functions.local import model_inputs, tokenizer_files
from embedfleet.embedding_functions.local.backends import Backend, check_backend, choose_backend
from embedfleet.embedding_functions.local.models import (
    DEFAULT_MODEL_NAME,
    LOADER_KWARGS,
    LOCAL_INSTALL_HINT,
    ModelSpec,
    ResolvedSource,
    check_device,
    hub_snapshot,
    load_model,
    resolve_source,
)
from embedfleet.embedding_functions.local.token_batches import tokenize
from embedfleet.embedding_functions.registry import register
from embedfleet.embedding_functions.token_counter import TokenCounter
from embedfleet.errors import ConfigError

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

_RESERVED_MODEL_KWARGS = ("dtype", "torch_dtype", "device_map")
#: Padded tokens per batch (texts x longest): small enough to keep long texts in small
#: batches and padding low, large enough not to split short texts (figures in
#: docs/benchmarks.md); raise it on a GPU.
DEFAULT_MAX_BATCH_TOKENS = 4096


def _unit_rows(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


@register("sentence_transformer")
class SentenceTransformerEmbeddingFunction(EmbeddingFunction):
    """Any sentence-transformers model, run locally.

    ``precision="auto"`` resolves to fp16 on CUDA, bf16 on CPUs with native
    bf16 (AVX512-BF16 or AMX) and fp32 elsewhere; :attr:`precision` holds the
    resolved value. ``backend="onnx"`` runs the model exported to ONNX Runtime on
    the CPU instead of torch, in fp32 or int8 (see
    :mod:`~embedfleet.embedding_functions.local.onnx_export`). ``query_prompt`` /
    ``document_prompt`` are prompt names the model defines (e5, bge, nomic) or
    literal prefixes.
    """

    requirements = (
        Requirement("torch", LOCAL_INSTALL_HINT),
        Requirement("sentence_transformers", LOCAL_INSTALL_HINT),
    )
    #: ``**model_kwargs`` go to the model loader: only what it takes (a typo fails here)
    passthrough_config_keys = LOADER_KWARGS

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
        check_config_keys(SentenceTransformerEmbeddingFunction, model_kwargs, where=None)
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
        self._runner: Backend | None = None  # made where the model runs, never pickled
        #: Per prompt: whether batches built from token ids match ``preprocess``.
        self._token_path: dict[str, model_inputs.TokenPath | None] = {}
        self._threads: int | None = None  # set on a fleet replica: its CPU share

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
        described.update(self.runner.describe())  # what its guard measured
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
    def runner(self) -> Backend:
        """The :class:`~.backends.Backend` that runs the model in this process, chosen
        from ``backend`` on first use (a pickled function chooses again where it lands)."""
        if self._runner is None:
            self._runner = choose_backend(
                self.backend, self._spec_for, self.device, self.requested_precision, self._threads
            )
        return self._runner

    @property
    def resolved_device(self) -> str:
        """The device the model runs on, resolved in the process that runs it."""
        return self.runner.device

    @property
    def precision(self) -> str:
        """The precision actually used: "fp32", "fp16" or "bf16"; with the ONNX backend
        "fp32" or "int8". ``"auto"`` picks a reduced one only where its quality guard holds
        (:mod:`~embedfleet.embedding_functions.local.quality_guard`)."""
        return self.runner.precision

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

    def _model_spec(self) -> ModelSpec:
        """The sentence-transformers model this function loads (the process cache's key)."""
        return self.runner.model_spec()

    def _spec_for(self, device: str, precision: str) -> ModelSpec:
        """This function's model on a resolved ``device`` in ``precision`` (for its backend)."""
        return ModelSpec(
            source=self.source.source,
            revision=self.revision,
            device=device,
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

    def token_counter(self) -> TokenCounter:
        """The model's own count of a document (tokenizer, prompt, special tokens) against
        its ``max_seq_length``, read from the model's files without loading its weights
        (:mod:`.tokenizer_files`); where the files do not say, the loaded model's."""
        counter = tokenizer_files.read(self)
        if counter is None:
            basis = f"{self.model_name}'s tokenizer (loaded model)"
            counter = TokenCounter.of(self.token_lengths, self.max_tokens(), basis)
        return counter

    def warm_up(self) -> None:
        """Load the model now (a fleet replica does this at start-up)."""
        self.runner.warm_up()

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        # the device and precision are resolved where the model runs, not where it was built;
        # an ORT session stays in its process
        state["_runner"] = None
        return state

    def set_num_threads(self, threads: int) -> None:
        """Pin the model's compute threads and the tokenizer's pool to ``threads`` cores."""
        self._threads = threads  # kept for a backend chosen later (after unpickling)
        self.runner.set_num_threads(threads)

    # ------------------------------------------------------------------ embedding
    def _prompt(self, *, query: bool, prompts: dict[str, str] | None = None) -> dict[str, str]:
        """encode() keyword for this side: a prompt name the model knows (``prompts``: the
        model's, when read from its files), or a literal."""
        prompt = self.query_prompt if query else self.document_prompt
        if prompt is None:
            return {}
        if prompt in ((self.model.prompts if prompts is None else prompts) or {}):
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

    def _batch_features(self, query: bool, plan: CallPlan | None) -> model_inputs.Features:
        """A function from a batch of texts to the model's input features (from the ids
        kept in ``plan`` for the texts it planned; None: a batch no call planned)."""
        prefix = self._prompt_text(query=query)
        checked = self._checked_token_path(prefix or None)
        return model_inputs.batch_features(self.model, prefix, checked, plan)

    def _checked_token_path(self, prompt: str | None) -> model_inputs.TokenPath | None:
        """Whether batches built from token ids equal the model's ``preprocess`` for this
        prompt, probed once per prompt (:func:`~.model_inputs.probe_token_path`)."""
        key = prompt or ""
        if key not in self._token_path:
            self._token_path[key] = model_inputs.probe_token_path(self.model, prompt)
        return self._token_path[key]

    def _forward(self, features: dict[str, Any]) -> np.ndarray:
        """One batch through the model, then, in float32: the model's own normalization
        redone (done in bf16/fp16 it leaves norms visibly off 1, so dot products would
        understate cosines), truncation to ``truncate_dim`` and ``normalize_embeddings``,
        as ``encode`` orders them."""
        model = self.model
        vectors = self.runner.run(features)
        if type(model[-1]).__name__ == "Normalize":
            vectors = _unit_rows(vectors)
        if model.truncate_dim is not None:
            vectors = vectors[:, : model.truncate_dim]
        if self.normalize_embeddings:
            vectors = _unit_rows(vectors)
        return vectors

    def embed_batch(self, texts: Documents, *, query: bool = False) -> np.ndarray:
        """One batch through the same steps as a call's batches (tokenizer lock included)."""
        return self._forward(self._batch_features(query, None)(texts))
