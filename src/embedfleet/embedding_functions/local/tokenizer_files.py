"""A local model's token count (tokenizer, prompt, limit) from its files, without its weights.

Chunking runs in a job's shard tasks, which reserve no CPU and must not load a model
(the fleet's replicas hold it). What it needs is how the model counts a text: its
tokenizer, the prompt put before documents, the special tokens and
``max_seq_length``. They are read from the model's folder the way
sentence-transformers reads them:

* the tokenizer: ``tokenizer.json`` of the first (Transformer) module in
  ``modules.json``, loaded with the ``tokenizers`` library with truncation and padding
  off (all-MiniLM-L6-v2's file truncates at 128: counts would be capped);
* the limit: the function's ``max_seq_length``, else the module's
  ``sentence_bert_config.json``, else ``tokenizer_config.json``'s ``model_max_length``;
* the prompt: ``config_sentence_transformers.json`` (``prompts``,
  ``default_prompt_name``), resolved as the function resolves its own.

Loading ``tokenizer.json`` takes milliseconds and is done once per process. Where the
files are not on this machine (a hub model not downloaded yet) or the folder has no
``tokenizer.json`` or no recorded limit, :func:`read` returns None and the function
asks its loaded model instead: exact, not cheap. The tests check these counts against
the model's own (:meth:`token_lengths`).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from embedfleet.embedding_functions.local.model_files import read_json, read_modules
from embedfleet.embedding_functions.local.models import ResolvedSource, hub_snapshot
from embedfleet.embedding_functions.token_counter import TokenCounter


class LocalFunction(Protocol):
    """What is read of a SentenceTransformerEmbeddingFunction (which imports this module)."""

    model_name: str
    revision: str | None
    max_seq_length: int | None

    @property
    def source(self) -> ResolvedSource: ...

    def _prompt(self, *, query: bool, prompts: dict[str, str] | None = None) -> dict[str, str]: ...


_SANE_LIMIT = 1_000_000  # tokenizer_config.json says 1e30 where it means "no limit"
_tokenizers: dict[tuple[str, int], Any] = {}
_lock = threading.Lock()


def read(function: LocalFunction) -> TokenCounter | None:
    """The function's document-side counter from its model's files, or None where they
    do not say enough (the caller then asks the loaded model)."""
    source = function.source.source
    folder = Path(source) if Path(source).is_dir() else hub_snapshot(source, function.revision)
    if folder is None:
        return None
    modules = read_modules(folder)
    module = folder / (modules[0][1] if modules else "")  # the Transformer, with the tokenizer
    tokenizer_file = module / "tokenizer.json"
    if not tokenizer_file.is_file():
        return None
    limit = function.max_seq_length or _limit(module)
    if limit is None:
        return None
    prefix = _prompt(function, read_json(folder / "config_sentence_transformers.json"))
    tokenizer = _tokenizer(tokenizer_file)

    def count(texts: Sequence[str]) -> list[int]:
        encoded = tokenizer.encode_batch([prefix + text for text in texts])
        return [len(item.ids) for item in encoded]

    return TokenCounter.of(count, limit, f"{function.model_name}'s tokenizer")


def _limit(module: Path) -> int | None:
    recorded = read_json(module / "sentence_bert_config.json").get("max_seq_length")
    if recorded is None:
        recorded = read_json(module / "tokenizer_config.json").get("model_max_length")
    if isinstance(recorded, int | float) and 0 < recorded < _SANE_LIMIT:
        return int(recorded)
    return None


def _prompt(function: LocalFunction, config: dict[str, Any]) -> str:
    """The text put before documents, as sentence-transformers' ``_resolve_prompt``
    resolves the function's choice (a prompt name, a literal, or the model's default)."""
    prompts = config.get("prompts") or {}
    selection = function._prompt(query=False, prompts=prompts)
    prompt = selection.get("prompt")
    if prompt is None:
        name = selection.get("prompt_name") or config.get("default_prompt_name")
        prompt = prompts.get(name) if name else None
    return prompt or ""


def _tokenizer(path: Path) -> Any:
    """``tokenizers.Tokenizer`` from ``path``, truncation and padding off, once per file
    version in this process."""
    key = (str(path), path.stat().st_mtime_ns)
    with _lock:
        tokenizer = _tokenizers.get(key)
        if tokenizer is None:
            from tokenizers import Tokenizer

            tokenizer = Tokenizer.from_file(str(path))
            tokenizer.no_truncation()
            tokenizer.no_padding()
            _tokenizers[key] = tokenizer
        return tokenizer
