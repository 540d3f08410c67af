"""Requests cut to what each provider accepts: at most its documented inputs (and,
for OpenAI, tokens) per request, and texts over its per-input token limit cut to
fit or refused by index."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("httpx")

from embedfleet.embedding_functions.api import splitting
from embedfleet.errors import BadRequestError, TextTooLongError
from tests.fakes.providers import (  # noqa: F401 - fixtures
    each_provider,
    make_fixture,
    only,
    server_fixture,
)


@each_provider
def test_requests_are_split_at_the_documented_limit(provider, make, server):
    texts = [f"t{index}" for index in range(2 * provider.limit + 5)]
    vectors = make(batch_size=len(texts), max_concurrency=1)(texts)
    np.testing.assert_allclose(np.stack(vectors), provider.expected_vectors(texts), rtol=1e-6)
    sizes = [len(provider.fake.texts_of(request.body)) for request in server.requests]
    assert sizes == [provider.limit, provider.limit, 5]


@only("huggingface_server")
def test_batches_larger_than_a_request_are_split_too(provider, make, server):
    texts = [f"text number {index} " * (1 + index % 3) for index in range(70)]
    ef = make()
    ef.batch_size = 100
    ef(texts)
    sizes = [len(request.body["inputs"]) for request in server.requests]
    assert max(sizes) == provider.limit and sum(sizes) == len(texts)


@each_provider
def test_one_request_over_the_limit_is_refused_by_the_fake(provider):
    texts = [f"t{index}" for index in range(provider.limit + 1)]
    ef = provider.build("http://127.0.0.1:9", api_key="k")
    answer = provider.fake.answer
    assert answer(provider.path, ef.build_request(texts, query=False).body)[0] in (400, 413)
    assert answer(provider.path, ef.build_request(texts[:-1], query=False).body)[0] == 200


@only("openai")
def test_openai_requests_stay_within_300k_tokens(provider, make, server):
    ef = make(batch_size=2048)
    texts = [f"{index} " + "lorem ipsum " * 600 for index in range(400)]  # ~1.2k+ tokens each
    assert len(ef(texts)) == len(texts)
    sent = [request.body["input"] for request in server.requests]
    assert len(sent) >= 2  # one request could hold 2048 inputs, but not their tokens
    assert all(sum(ef.billed_tokens(inputs)) <= 300_000 for inputs in sent)
    assert sorted(text for inputs in sent for text in inputs) == sorted(texts)


@only("openai")
def test_openai_texts_over_8192_tokens_are_cut_or_refused_by_index(provider, make, server):
    long_text = "long " + "word " * 40_000
    ef = make()
    ef(["short", long_text])
    sent = next(text for text in server.requests[0].body["input"] if text != "short")
    assert long_text.startswith(sent) and ef.billed_tokens([sent])[0] <= 8192
    assert ef.billed_tokens([long_text[: len(sent) + 1]])[0] > 8192  # the longest that fits
    assert ef.stats.truncated == 1
    with pytest.raises(TextTooLongError, match="document at index 1 "):
        make(on_long="error")(["short", long_text])


# ---------------------------------------------------------------- the cuts on their own
def words(texts: list[str]) -> list[int]:
    return [len(text.split()) for text in texts]


def test_a_split_keeps_order_and_each_requests_token_count():
    texts = ["a b", "c", "d e f", "g", "h i"]
    requests = splitting.split_requests(
        texts, words(texts), max_inputs=3, max_tokens=4, owner="Provider"
    )
    assert requests == [(["a b", "c"], 3), (["d e f", "g"], 4), (["h i"], 2)]


def test_a_split_without_a_token_limit_counts_inputs_only():
    texts = [f"w{index}" for index in range(7)]
    requests = splitting.split_requests(
        texts, [10_000] * 7, max_inputs=3, max_tokens=None, owner="Provider"
    )
    assert [len(chunk) for chunk, _ in requests] == [3, 3, 1]
    assert [tokens for _, tokens in requests] == [30_000, 30_000, 10_000]


def test_a_single_text_over_the_request_limit_is_refused_by_index():
    with pytest.raises(BadRequestError, match=r"index 1 .* over Provider's 4 tokens per request"):
        splitting.split_requests(
            ["a", "a b c d e", "b"], [1, 5, 1], max_inputs=9, max_tokens=4, owner="Provider"
        )


def test_texts_over_the_limit_are_cut_to_the_longest_prefix_that_fits():
    texts = ["one two", "one two three four five"]
    cut, counts = splitting.cut_to_limit(texts, words(texts), 3, words)
    assert cut == ["one two", "one two three "] and counts == [2, 3]
    assert splitting.cut_to_limit(texts, words(texts), 5, words) == (texts, [2, 5])
