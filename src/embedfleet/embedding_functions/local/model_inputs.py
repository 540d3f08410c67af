"""A batch's model inputs, built from the ids its call tokenized once, where that is exact.

Padding the kept ids in numpy (:mod:`.token_batches`) saves tokenizing every
text a second time per batch, but it is only right where it reproduces the
model's own ``preprocess``: another tokenizer shape or a chat template would
change the vectors silently. So before trusting it for a prompt, the function
checks it once on probe texts (short ones and one past the token limit) with
:func:`probe_token_path`; where it does not match, batches go through
``preprocess``, tokenizing again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from embedfleet.embedding_functions.batching import CallPlan
from embedfleet.embedding_functions.local.token_batches import (
    TokenIds,
    TokenLayout,
    pad_batch,
    token_layout,
    tokenize,
    tokenizer_lock,
)

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

#: Token limits up to this are checked with a probe text past them (larger ones, up to a
#: tokenizer's "no limit" placeholder, would make the probe huge).
MAX_PROBED_LIMIT = 16384

#: A checked way to build batches from token ids: the layout, plus non-array features.
TokenPath = tuple[TokenLayout, dict[str, Any]]
#: One batch of texts to the model's input features.
Features = Callable[[list[str]], dict[str, Any]]


def preprocess(model: SentenceTransformer, texts: list[str], prompt: str | None) -> dict[str, Any]:
    """The model's own preprocessing, holding the tokenizer's lock (see
    :func:`~.token_batches.tokenizer_lock`)."""
    with tokenizer_lock(model.tokenizer):
        return model.preprocess(texts, prompt=prompt)  # type: ignore[no-any-return]


def probe_token_path(model: SentenceTransformer, prompt: str | None) -> TokenPath | None:
    """Whether batches built from token ids equal the model's ``preprocess`` for
    ``prompt`` on probe texts: the tokenizer's layout and the non-array features to add
    (``modality``, ``prompt_length``), or None to fall back to ``preprocess``."""
    layout = token_layout(model.tokenizer)
    if layout is None:
        return None
    limit = model.max_seq_length
    probe = ["a", "Probe text, with punctuation: 42!"]
    if limit is not None and limit <= MAX_PROBED_LIMIT:  # and one text past the limit
        probe.append("probe " * (limit + 8))
    expected = preprocess(model, probe, prompt)
    fresh = tokenize(model.tokenizer, probe, prompt or "")
    built = pad_batch(layout, [fresh.row(row) for row in range(len(probe))], limit)
    arrays = {key: value for key, value in expected.items() if hasattr(value, "shape")}
    if set(arrays) != set(built) or not all(
        np.array_equal(np.asarray(arrays[key].cpu()), built[key]) for key in built
    ):
        return None
    return layout, {key: value for key, value in expected.items() if key not in arrays}


def batch_features(
    model: SentenceTransformer, prefix: str, checked: TokenPath | None, plan: CallPlan | None
) -> Features:
    """A function from a batch of texts to the model's input features: padded from the
    ids kept in ``plan`` for the texts it planned where ``checked`` (tokenized afresh for
    others), else the model's own ``preprocess``."""
    prompt = prefix or None
    if checked is None:  # the model's own preprocessing, tokenizing again
        return lambda batch: preprocess(model, batch, prompt)
    layout, extras = checked
    limit = model.max_seq_length
    tokens: TokenIds | None = plan.state if plan is not None else None
    index = {text: row for row, text in enumerate(plan.texts)} if tokens is not None else {}

    def features(batch: list[str]) -> dict[str, Any]:
        rows = [index.get(text) for text in batch]
        if tokens is not None and None not in rows:
            ids = [tokens.row(row) for row in rows]  # type: ignore[arg-type]
        else:  # texts this call did not count (a direct embed of a batch)
            fresh = tokenize(model.tokenizer, batch, prefix)
            ids = [fresh.row(row) for row in range(len(batch))]
        return {**pad_batch(layout, ids, limit), **extras}

    return features
