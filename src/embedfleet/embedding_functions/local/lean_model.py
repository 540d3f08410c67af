"""Plain sentence-transformers models, loaded with transformers alone.

Importing sentence-transformers costs seconds beyond torch and transformers (it imports
scikit-learn, scipy.stats and its trainers): on the 2-core development machine 8.4 s
against about 5, in every replica and in a job that embeds in-process
(docs/benchmarks.md). Most models are three modules, a Transformer, a Pooling and
maybe a Normalize, and for those this module builds the same computation from
transformers: the same tokenizer settings and call, the same forward, the same pooling
arithmetic (``tests/test_lean_model.py`` checks the vectors against
sentence-transformers' own). :class:`LeanSentenceModel` is a ``torch.nn.Sequential``
with what embedfleet reads of a ``SentenceTransformer`` (``tokenizer``,
``max_seq_length``, ``prompts``, ``preprocess``, ``model(features)``, ``encode``, ...).

:func:`plain_layout` decides from the model's files alone, before anything is imported:
a local folder whose modules are exactly a Transformer (text, last hidden state), a
Pooling of one mode (mean, CLS or max, prompt included) and optionally a Normalize,
loaded without custom code, model keyword arguments or a truncation dimension. Anything
else loads through sentence-transformers, as does every model with
``EMBEDFLEET_SENTENCE_TRANSFORMERS=1`` set.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from embedfleet.embedding_functions.local.model_files import read_json, read_modules

if TYPE_CHECKING:
    from embedfleet.embedding_functions.local.lean_modules import LeanSentenceModel

#: Set to 1 to load every model through sentence-transformers.
FORCE_VARIABLE = "EMBEDFLEET_SENTENCE_TRANSFORMERS"
_MODULE_KINDS = {"Transformer": "transformer", "Pooling": "pooling", "Normalize": "normalize"}
_OLD_POOLING_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_max_tokens": "max",
}
_OTHER_POOLING_KEYS = (
    "pooling_mode_mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens",
    "pooling_mode_lasttoken",
)
_TEXT_ONLY = {"text": {"method": "forward", "method_output_name": "last_hidden_state"}}


@dataclass(frozen=True)
class PlainLayout:
    """What a plain model's files say."""

    folder: Path
    pooling: str  # "mean", "cls" or "max"
    normalize: bool
    max_seq_length: int | None  # sentence_bert_config.json's, if it has one
    prompts: dict[str, str]
    default_prompt_name: str | None


def plain_layout(spec: Any) -> PlainLayout | None:
    """The layout of ``spec``'s model (a :class:`~.models.ModelSpec`) where it can load
    without sentence-transformers, else None."""
    if os.environ.get(FORCE_VARIABLE, "") not in ("", "0"):
        return None
    if spec.trust_remote_code or spec.model_kwargs_json != "{}" or not spec.pooling_include_prompt:
        return None
    folder = Path(spec.source)
    if not folder.is_dir() or not (folder / "config.json").is_file():
        return None
    kinds = _module_kinds(folder)
    if kinds is None or kinds[0][0] != "transformer" or kinds[0][1] != "":
        return None
    names = [kind for kind, _ in kinds]
    if names not in (["transformer", "pooling"], ["transformer", "pooling", "normalize"]):
        return None
    bert_config = read_json(folder / "sentence_bert_config.json")
    max_seq_length = bert_config.pop("max_seq_length", None)
    if bert_config.pop("do_lower_case", False) or not _plain_transformer(bert_config):
        return None
    pooling = _pooling_mode(read_json(folder / kinds[1][1] / "config.json"))
    model_config = read_json(folder / "config_sentence_transformers.json")
    if pooling is None or model_config.get("truncate_dim") is not None:
        return None
    if model_config.get("model_type", "SentenceTransformer") != "SentenceTransformer":
        return None
    return PlainLayout(
        folder=folder,
        pooling=pooling,
        normalize=len(names) == 3,
        max_seq_length=max_seq_length if isinstance(max_seq_length, int) else None,
        prompts=dict(model_config.get("prompts") or {}),
        default_prompt_name=model_config.get("default_prompt_name"),
    )


def _module_kinds(folder: Path) -> list[tuple[str, str]] | None:
    """``(kind, path)`` per module in ``modules.json``, or None for any other module."""
    kinds = []
    for type_name, path in read_modules(folder):
        kind = _MODULE_KINDS.get(type_name.rpartition(".")[2])
        if kind is None or not type_name.startswith("sentence_transformers."):
            return None
        kinds.append((kind, path))
    return kinds or None


def _plain_transformer(config: dict[str, Any]) -> bool:
    """Whether the Transformer module's remaining settings are the text defaults."""
    allowed = {
        "transformer_task": "feature-extraction",
        "modality_config": _TEXT_ONLY,
        "module_output_name": "token_embeddings",
    }
    return all(key in allowed and value == allowed[key] for key, value in config.items())


def _pooling_mode(config: dict[str, Any]) -> str | None:
    """The one pooling mode of a Pooling config (old or new format), if plain."""
    if config.get("include_prompt", True) is not True:
        return None
    mode = config.get("pooling_mode")
    if mode is not None:
        return mode if mode in ("mean", "cls", "max") else None
    chosen = [name for key, name in _OLD_POOLING_KEYS.items() if config.get(key)]
    if len(chosen) != 1 or any(config.get(key) for key in _OTHER_POOLING_KEYS):
        return None
    return chosen[0]


def load(layout: PlainLayout, device: str, dtype: Any) -> LeanSentenceModel:
    """The model of ``layout`` on ``device`` in ``dtype`` (offline: local files only): a
    plain BERT runs on :mod:`.bert_encoder`, any other transformer on transformers'."""
    from transformers import AutoTokenizer

    from embedfleet.embedding_functions.local import bert_encoder

    folder = str(layout.folder)
    if layout.max_seq_length is not None:
        tokenizer = AutoTokenizer.from_pretrained(
            folder, local_files_only=True, model_max_length=layout.max_seq_length
        )
    else:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    auto_model = bert_encoder.load(layout.folder, dtype)
    if auto_model is None:
        from transformers import AutoModel

        auto_model = AutoModel.from_pretrained(folder, local_files_only=True, dtype=dtype)
    positions = getattr(auto_model.config, "max_position_embeddings", -1)
    if layout.max_seq_length is None and positions not in (None, -1):
        tokenizer.model_max_length = min(tokenizer.model_max_length, positions)
    from embedfleet.embedding_functions.local.lean_modules import LeanSentenceModel

    model = LeanSentenceModel(
        auto_model,
        tokenizer,
        layout.pooling,
        layout.normalize,
        layout.prompts,
        layout.default_prompt_name,
    )
    return model.to(device)
