"""Tokenize a call's texts once; build each batch's padded model inputs from those ids.

A local model needs every text's token count before batching (to sort by
length, cut batches by a token budget and enforce ``on_long``), and then the
token ids of each batch. Both come from one tokenizer pass: the ids are kept
in one flat int32 array (4 bytes a token) and each batch is cut to the model's
limit and padded here, in numpy.

:func:`token_layout` learns from the tokenizer where its special tokens go
(``[CLS] text [SEP]``, ``<s> text </s>``, ``text </s>``) and which side it pads
and truncates, so a batch built here is the one the tokenizer would build. The
caller still checks that on a probe against the model's own preprocessing
before trusting it (see ``SentenceTransformerEmbeddingFunction``).
"""

from __future__ import annotations

import itertools
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

#: Texts per tokenizer call, so a huge call never holds all its ids as Python ints.
TOKENIZE_CHUNK = 4096
_PROBE = "embedfleet probe"


@dataclass(frozen=True)
class TokenLayout:
    """How a tokenizer frames one text: special tokens, padding and truncation sides."""

    prefix: tuple[int, ...]  # special tokens before the text, e.g. [CLS]
    suffix: tuple[int, ...]  # after it, e.g. [SEP]
    pad_id: int
    pad_left: bool
    truncate_left: bool
    token_type_ids: bool  # whether the model takes token_type_ids (all 0 for one text)


def token_layout(tokenizer: Any) -> TokenLayout | None:
    """The layout of a Hugging Face tokenizer, or None where it cannot be learned."""
    pad_id = getattr(tokenizer, "pad_token_id", None)
    if pad_id is None:
        return None
    with tokenizer_lock(tokenizer):
        framed = list(tokenizer(_PROBE)["input_ids"])
        bare = list(tokenizer(_PROBE, add_special_tokens=False)["input_ids"])
    for start in range(len(framed) - len(bare) + 1):
        if bare and framed[start : start + len(bare)] == bare:
            return TokenLayout(
                prefix=tuple(framed[:start]),
                suffix=tuple(framed[start + len(bare) :]),
                pad_id=int(pad_id),
                pad_left=getattr(tokenizer, "padding_side", "right") == "left",
                truncate_left=getattr(tokenizer, "truncation_side", "right") == "left",
                token_type_ids="token_type_ids" in getattr(tokenizer, "model_input_names", ()),
            )
    return None


class TokenIds:
    """The token ids of many texts (special tokens included, not truncated), flat."""

    def __init__(self, ids: Sequence[Sequence[int]] = ()) -> None:
        self.lengths = np.fromiter((len(row) for row in ids), dtype=np.int64, count=len(ids))
        self.offsets = np.zeros(len(ids) + 1, dtype=np.int64)
        np.cumsum(self.lengths, out=self.offsets[1:])
        self.flat = np.fromiter(
            itertools.chain.from_iterable(ids), dtype=np.int32, count=int(self.offsets[-1])
        )

    @classmethod
    def concatenate(cls, parts: Sequence[TokenIds]) -> TokenIds:
        joined = cls()
        joined.lengths = np.concatenate([part.lengths for part in parts])
        joined.offsets = np.zeros(len(joined.lengths) + 1, dtype=np.int64)
        np.cumsum(joined.lengths, out=joined.offsets[1:])
        joined.flat = np.concatenate([part.flat for part in parts])
        return joined

    def __len__(self) -> int:
        return len(self.lengths)

    def row(self, index: int) -> npt.NDArray[np.int32]:
        return self.flat[self.offsets[index] : self.offsets[index + 1]]


_tokenizer_locks: weakref.WeakKeyDictionary[Any, threading.Lock] = weakref.WeakKeyDictionary()
_locks_lock = threading.Lock()


def tokenizer_lock(tokenizer: Any) -> threading.Lock:
    """One lock per tokenizer object. A Hugging Face fast tokenizer sets its truncation and
    padding on the shared Rust tokenizer for each call, so two threads calling it with
    different settings (counting without truncation, ``preprocess`` with it) can get each
    other's settings; every call made here holds this lock."""
    with _locks_lock:
        lock = _tokenizer_locks.get(tokenizer)
        if lock is None:
            lock = _tokenizer_locks[tokenizer] = threading.Lock()
        return lock


def tokenize(tokenizer: Any, texts: Sequence[str], prefix: str = "") -> TokenIds:
    """Every text's ids (``prefix`` prepended, special tokens added, nothing cut)."""
    parts = []
    for start in range(0, len(texts), TOKENIZE_CHUNK):
        chunk = [prefix + text for text in texts[start : start + TOKENIZE_CHUNK]]
        with tokenizer_lock(tokenizer):
            encoded = tokenizer(
                chunk,
                truncation=False,
                return_attention_mask=False,
                return_token_type_ids=False,
                verbose=False,
            )
        parts.append(TokenIds(encoded["input_ids"]))
    return parts[0] if len(parts) == 1 else TokenIds.concatenate(parts)


def pad_batch(
    layout: TokenLayout, rows: Sequence[npt.NDArray[np.int32]], max_length: int | None
) -> dict[str, npt.NDArray[np.int64]]:
    """Model inputs for one batch: each row cut to ``max_length`` (keeping its special
    tokens), padded to the longest, with the attention mask (and token type ids)."""
    framing = len(layout.prefix) + len(layout.suffix)
    cut = []
    for row in rows:
        if max_length is not None and len(row) > max_length:
            keep = max_length - framing
            text = row[len(layout.prefix) : len(row) - len(layout.suffix)]
            text = text[len(text) - keep :] if layout.truncate_left else text[:keep]
            row = np.concatenate([layout.prefix, text, layout.suffix]).astype(np.int32)
        cut.append(row)
    width = max(len(row) for row in cut)
    input_ids = np.full((len(cut), width), layout.pad_id, dtype=np.int64)
    attention_mask = np.zeros((len(cut), width), dtype=np.int64)
    for index, row in enumerate(cut):
        span = slice(width - len(row), width) if layout.pad_left else slice(0, len(row))
        input_ids[index, span] = row
        attention_mask[index, span] = 1
    features = {"input_ids": input_ids, "attention_mask": attention_mask}
    if layout.token_type_ids:
        features["token_type_ids"] = np.zeros_like(input_ids)
    return features
