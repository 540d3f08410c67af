"""Tokenize a call's texts once; build each batch's padded model inputs from those ids.

A local model needs every text's token count before batching (to sort by
length, cut batches by a token budget and enforce ``on_long``), and then the
token ids of each batch. Both come from one tokenizer pass: each text's full
count is kept, its ids cut to the model's limit right away (a book-length text
keeps its first ``max_seq_length`` tokens, not all of them) in one flat int32
array (4 bytes a token), and each batch is padded here, in numpy.

:func:`token_layout` learns from the tokenizer where its special tokens go
(``[CLS] text [SEP]``, ``<s> text </s>``, ``text </s>``) and which side it pads
and truncates, so a batch built here is the one the tokenizer would build. The
caller still checks that on a probe against the model's own preprocessing
before trusting it (see :mod:`.model_inputs`).
"""

from __future__ import annotations

import itertools
import threading
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

#: Texts, and characters, per tokenizer call: a huge call (or a few huge texts) never
#: holds all its ids as Python ints (about 36 bytes a token) at once.
TOKENIZE_CHUNK = 4096
TOKENIZE_CHUNK_CHARS = 1 << 22
_PROBE = "embedfleet probe"

#: One text's token ids: a tokenizer's list, or a row of :class:`TokenIds`.
Row = Sequence[int] | npt.NDArray[np.int32]


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
    """Many texts' full token counts and their ids (special tokens included), flat; a
    row may be stored cut to the model's limit (see :func:`tokenize`)."""

    def __init__(
        self, ids: Sequence[Sequence[int]] = (), lengths: npt.ArrayLike | None = None
    ) -> None:
        stored = np.fromiter((len(row) for row in ids), dtype=np.int64, count=len(ids))
        self.offsets = np.zeros(len(ids) + 1, dtype=np.int64)
        np.cumsum(stored, out=self.offsets[1:])
        self.flat = np.fromiter(
            itertools.chain.from_iterable(ids), dtype=np.int32, count=int(self.offsets[-1])
        )
        self.lengths = stored if lengths is None else np.asarray(lengths, dtype=np.int64)

    @classmethod
    def concatenate(cls, parts: Sequence[TokenIds]) -> TokenIds:
        joined = cls()
        joined.lengths = np.concatenate([part.lengths for part in parts])
        stored = np.concatenate([np.diff(part.offsets) for part in parts])
        joined.offsets = np.zeros(len(stored) + 1, dtype=np.int64)
        np.cumsum(stored, out=joined.offsets[1:])
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


def tokenize(
    tokenizer: Any,
    texts: Sequence[str],
    prefix: str = "",
    *,
    layout: TokenLayout | None = None,
    max_length: int | None = None,
    keep_ids: bool = True,
) -> TokenIds:
    """Every text's full token count (``prefix`` prepended, special tokens added) and its
    ids; with ``layout`` and ``max_length``, each row is stored already cut as
    :func:`pad_batch` would cut it; with ``keep_ids=False``, the counts only."""
    parts = []
    for chunk in _chunks(texts):
        chunk = [prefix + text for text in chunk]
        with tokenizer_lock(tokenizer):
            encoded = tokenizer(
                chunk,
                truncation=False,
                return_attention_mask=False,
                return_token_type_ids=False,
                verbose=False,
            )
        rows = encoded["input_ids"]
        lengths = [len(row) for row in rows]
        if not keep_ids:
            rows = [()] * len(rows)
        elif layout is not None and max_length is not None:
            rows = [cut_row(layout, row, max_length) for row in rows]
        parts.append(TokenIds(rows, lengths))
    if not parts:
        return TokenIds()
    return parts[0] if len(parts) == 1 else TokenIds.concatenate(parts)


def _chunks(texts: Sequence[str]) -> Iterator[Sequence[str]]:
    """Consecutive runs of at most ``TOKENIZE_CHUNK`` texts and, past the first text,
    ``TOKENIZE_CHUNK_CHARS`` characters."""
    start = 0
    while start < len(texts):
        end, characters = start, 0
        while end < len(texts) and end - start < TOKENIZE_CHUNK:
            characters += len(texts[end])
            if end > start and characters > TOKENIZE_CHUNK_CHARS:
                break
            end += 1
        yield texts[start:end]
        start = end


def cut_row(layout: TokenLayout, row: Row, max_length: int) -> Row:
    """``row`` cut to ``max_length`` tokens on the tokenizer's truncation side, keeping
    its special tokens (as the tokenizer truncates); a row within it is returned as is."""
    if len(row) <= max_length:
        return row
    keep = max_length - len(layout.prefix) - len(layout.suffix)
    text = row[len(layout.prefix) : len(row) - len(layout.suffix)]
    text = text[len(text) - keep :] if layout.truncate_left else text[:keep]
    return [*layout.prefix, *text, *layout.suffix]


def pad_batch(
    layout: TokenLayout, rows: Sequence[Row], max_length: int | None
) -> dict[str, npt.NDArray[np.int64]]:
    """Model inputs for one batch: each row cut to ``max_length`` (keeping its special
    tokens), padded to the longest, with the attention mask (and token type ids)."""
    cut = rows if max_length is None else [cut_row(layout, row, max_length) for row in rows]
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
