"""The EmbeddingFunction protocol as every provider sees it: input checks,
ordering, de-duplication, batching by length and output validation."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from embedfleet import EmbeddingFunction, embedding_functions
from embedfleet.errors import EmbeddingOutputError, InvalidInputError, TextTooLongError
from embedfleet.testing import HashEmbeddingFunction


class RecordingFunction(EmbeddingFunction):
    """Records every batch it is asked to embed; vectors encode the text length."""

    def __init__(self, *, batch_size: int = 4, output: object = None) -> None:
        super().__init__(batch_size=batch_size)
        self.batches: list[list[str]] = []
        self.output = output

    def embed_batch(self, texts, *, query=False):
        self.batches.append(list(texts))
        if self.output is not None:
            return self.output
        return [[float(len(text)), 1.0 if query else 0.0] for text in texts]


def test_returns_one_float32_vector_per_document_in_input_order():
    ef = HashEmbeddingFunction(dimension=8)
    texts = ["a much longer document", "b", "a medium one"]
    vectors = ef(texts)
    assert len(vectors) == 3
    for text, vector in zip(texts, vectors, strict=True):
        assert isinstance(vector, np.ndarray)
        assert vector.dtype == np.float32 and vector.shape == (8,)
        np.testing.assert_array_equal(vector, ef([text])[0])


def test_single_string_is_one_document_not_characters():
    ef = HashEmbeddingFunction(dimension=8)
    vectors = ef("foo")
    assert len(vectors) == 1
    np.testing.assert_array_equal(vectors[0], ef(["foo"])[0])


@pytest.mark.parametrize(
    ("documents", "index", "kind"),
    [
        (["ok", None], 1, "None"),
        (["ok", "fine", 3], 2, "int"),
        ([["nested"], "ok"], 0, "list"),
        (["ok", b"bytes"], 1, "bytes"),
    ],
)
def test_bad_documents_raise_type_error_naming_the_index(documents, index, kind):
    ef = HashEmbeddingFunction()
    with pytest.raises(TypeError, match=f"index {index} must be a str, got {kind}") as caught:
        ef(documents)
    assert isinstance(caught.value, InvalidInputError)


@pytest.mark.parametrize("documents", [None, 42, b"bytes", {"a": 1}])
def test_non_sequence_input_raises_type_error(documents):
    with pytest.raises(InvalidInputError):
        HashEmbeddingFunction()(documents)


def test_empty_list_returns_empty_list_without_calling_the_provider():
    ef = RecordingFunction()
    assert ef([]) == []
    assert ef.embed_query([]) == []
    assert ef.batches == []


def test_empty_list_does_not_load_a_model():
    ef = embedding_functions.SentenceTransformerEmbeddingFunction("/no/such/model/dir")
    assert ef([]) == []


def test_identical_texts_in_one_call_are_embedded_once():
    ef = RecordingFunction()
    vectors = ef(["same", "other", "same", "same"])
    sent = [text for batch in ef.batches for text in batch]
    assert sorted(sent) == ["other", "same"]
    np.testing.assert_array_equal(vectors[0], vectors[2])
    assert ef.stats.documents == 4 and ef.stats.embedded == 2


def test_batches_are_sorted_by_length_run_longest_first_and_restored_to_input_order():
    ef = RecordingFunction(batch_size=2)
    texts = ["ccc", "a", "eeeee", "bb", "dddd"]
    vectors = ef(texts)
    # cut from the shortest, run from the longest: memory peaks with the first batch
    assert ef.batches == [["eeeee"], ["ccc", "dddd"], ["a", "bb"]]
    assert [vector[0] for vector in vectors] == [3.0, 1.0, 5.0, 2.0, 4.0]


def test_embed_query_tells_the_provider_it_embeds_queries():
    ef = RecordingFunction()
    assert ef(["x"])[0][1] == 0.0
    assert ef.embed_query(["x"])[0][1] == 1.0


def test_hash_function_embeds_queries_differently_from_documents():
    ef = HashEmbeddingFunction()
    assert not np.array_equal(ef(["x"])[0], ef.embed_query(["x"])[0])


@pytest.mark.parametrize(
    ("output", "message"),
    [
        ([[1.0, 2.0]], "returned 1 vectors"),
        ([[1.0, 2.0], [1.0]], "unequal length"),
        ([[1.0, float("nan")], [1.0, 2.0]], "non-finite values .* index 0"),
        ([[1.0, 2.0], [float("inf"), 2.0]], "non-finite values .* index 1"),
        ([None, None], "returned"),
    ],
)
def test_bad_provider_output_raises_never_returns_none(output, message):
    ef = RecordingFunction(output=output)
    with pytest.raises(EmbeddingOutputError, match=message):
        ef(["a", "bb"])


def test_a_change_of_dimension_between_batches_raises():
    ef = RecordingFunction(batch_size=1)
    ef(["a"])
    ef.output = [[1.0, 2.0, 3.0]]
    with pytest.raises(EmbeddingOutputError, match="3-dimensional vectors, expected 2"):
        ef(["b"])


def test_dimension_is_known_after_the_first_call():
    ef = RecordingFunction()
    assert ef.dimension is None
    ef(["a"])
    assert ef.dimension == 2


def test_on_long_error_names_the_index_of_the_first_long_text():
    ef = HashEmbeddingFunction(max_tokens=3, on_long="error")
    with pytest.raises(TextTooLongError, match="index 2 is 5 tokens long"):
        ef(["one", "one two three", "a b c d e", "also too long here now"])


def test_on_long_truncate_counts_truncated_texts():
    ef = HashEmbeddingFunction(max_tokens=3)
    vectors = ef(["a b c d e", "a b c", "x y z w"])
    assert ef.stats.truncated == 2
    np.testing.assert_array_equal(vectors[0], vectors[1])  # cut to the same 3 tokens


def test_concurrent_calls_from_threads_each_get_their_own_results():
    ef = HashEmbeddingFunction(dimension=8, batch_size=3)
    expected = {index: ef([f"text {index} {word}" for word in range(10)]) for index in range(8)}
    results: dict[int, list[np.ndarray]] = {}

    def work(index: int) -> None:
        results[index] = ef([f"text {index} {word}" for word in range(10)])

    threads = [threading.Thread(target=work, args=(index,)) for index in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for index, vectors in expected.items():
        np.testing.assert_array_equal(np.stack(vectors), np.stack(results[index]))


class _RecordingHash(HashEmbeddingFunction):
    """Counts whitespace tokens and records the batches it is given."""

    def __init__(self, **kwargs):
        super().__init__(dimension=4, max_tokens=1000, **kwargs)
        self.batches = []

    def embed_batch(self, texts, *, query=False):
        self.batches.append(list(texts))
        return super().embed_batch(texts, query=query)


def test_token_budget_batches_bound_padded_tokens_and_keep_results_identical():
    texts = [" ".join(["w"] * (1 + (index * 37) % 120)) + f" {index}" for index in range(300)]
    reference = _RecordingHash(batch_size=32)
    budgeted = _RecordingHash(batch_size=32)
    budgeted.max_batch_tokens = 600
    np.testing.assert_array_equal(np.stack(budgeted(texts)), np.stack(reference(texts)))
    for batch in budgeted.batches:
        lengths = [len(text.split()) for text in batch]
        assert len(batch) <= 32 and (len(batch) == 1 or len(batch) * max(lengths) <= 600)
    assert len(budgeted.batches) > len(reference.batches)  # long texts went in smaller batches
    real = sum(len(text.split()) for text in texts)
    assert budgeted.stats.tokens == real
    assert 1.0 <= budgeted.stats.padding_waste < 1.15
    assert budgeted.stats.padded_tokens == sum(
        len(batch) * max(len(text.split()) for text in batch) for batch in budgeted.batches
    )


def test_embed_counted_returns_each_calls_own_counts_under_threads():
    ef = HashEmbeddingFunction(dimension=4, max_tokens=3)
    results = {}

    def call(name, texts):
        results[name] = ef.embed_counted(texts)[1].as_dict()

    threads = [
        threading.Thread(target=call, args=("short", ["a b", "c"])),
        threading.Thread(target=call, args=("long", ["a b c d e", "f g h i", "j"])),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results["short"] == {"truncated": 0, "tokens": 3, "padded_tokens": 4}
    assert results["long"]["truncated"] == 2 and results["long"]["tokens"] == 7
    assert ef.stats.truncated == 2 and ef.stats.tokens == 10
