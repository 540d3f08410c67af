"""Chunking as a library call: coverage, exactness in the model's own tokens, boundaries,
content-defined cuts that survive edits, and each function's token counter."""

from __future__ import annotations

import itertools
import re

import pytest

import embedfleet
from embedfleet.embedding_functions import (
    DefaultEmbeddingFunction,
    HashEmbeddingFunction,
    HuggingFaceEmbeddingServer,
    OpenAIEmbeddingFunction,
    SentenceTransformerEmbeddingFunction,
)
from embedfleet.embedding_functions.local import models
from embedfleet.embedding_functions.token_counter import TokenCounter
from embedfleet.errors import ConfigError, InvalidInputError
from embedfleet.job.chunking import Chunker
from embedfleet.tokens import estimate_tokens
from tests.long_texts import long_documents, markdown_document, shipped_documents

LIMIT = 256  # all-MiniLM-L6-v2's max_seq_length, special tokens included
_SPACED_LETTER = re.compile(r"[^\W_\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff\u2e80-\u9fff]")


@pytest.fixture(scope="module")
def minilm() -> DefaultEmbeddingFunction:
    return DefaultEmbeddingFunction(precision="fp32")


@pytest.fixture(scope="module")
def counter(minilm) -> TokenCounter:
    return minilm.token_counter()  # the tokenizer from the model's files: no weights


@pytest.fixture(scope="module")
def documents() -> list[str]:
    return long_documents()


def changed(before: list[embedfleet.Chunk], after: list[embedfleet.Chunk]) -> list[str]:
    """Texts of ``after``'s chunks that ``before`` does not have (what a re-run embeds)."""
    known = {(chunk.key, chunk.text) for chunk in before}
    return [chunk.text for chunk in after if (chunk.key, chunk.text) not in known]


def one_long_document() -> tuple[str, list[str]]:
    """The shipped documents as one document of well over 50 chunks, and its paragraphs."""
    paragraphs = [part for text in shipped_documents()[:6] for part in text.split("\n\n")]
    return "\n\n".join(paragraphs), paragraphs


# ---------------------------------------------------------------------- coverage


@pytest.mark.real_model
@pytest.mark.parametrize(
    "settings",
    [{}, {"overlap": 32, "markdown": True}, {"max_tokens": 64}],
    ids=["defaults", "overlap-markdown", "max_tokens-64"],
)
def test_every_character_is_in_a_chunk_that_is_its_offsets_and_fits_the_model(
    minilm, documents, settings
):
    found = embedfleet.chunk(documents, minilm, **settings)
    texts = [chunk.text for chunks in found for chunk in chunks]
    counts = minilm.token_lengths(texts)  # the model's own count, special tokens included
    assert max(counts) <= LIMIT
    if "max_tokens" in settings:
        assert max(counts) - 2 <= settings["max_tokens"]
    assert [chunk.tokens for chunks in found for chunk in chunks] == counts
    for text, chunks in zip(documents, found, strict=True):
        covered = bytearray(len(text))
        for position, chunk in enumerate(chunks):
            assert chunk.index == position and chunk.text == text[chunk.start : chunk.end]
            assert chunk.text == chunk.text.strip()
            covered[chunk.start : chunk.end] = b"\x01" * (chunk.end - chunk.start)
        missing = [i for i, char in enumerate(text) if not char.isspace() and not covered[i]]
        assert missing == []
        assert len({chunk.key for chunk in chunks}) == len(chunks)


def test_no_cut_falls_inside_a_word_that_fits(counter, documents):
    chunker = Chunker(counter)
    for text, chunks in zip(documents, chunker.split(documents), strict=True):
        for at in {edge for chunk in chunks for edge in (chunk.start, chunk.end)}:
            if not (0 < at < len(text)):
                continue
            if _SPACED_LETTER.match(text[at - 1]) and _SPACED_LETTER.match(text[at]):
                before = re.search(r"\S*\Z", text[:at]).group()
                word = before + re.match(r"\S*", text[at:]).group()
                assert counter.count([word])[0] - counter.overhead > chunker.core, word[:40]


def test_markdown_keeps_code_blocks_whole_and_headings_with_their_text(counter):
    text = markdown_document()
    chunks = Chunker(counter, max_tokens=200, markdown=True).split([text])[0]
    blocks = [match.span() for match in re.finditer(r"```python\n.*?```", text, re.DOTALL)]
    assert blocks
    for start, end in blocks:
        assert any(chunk.start <= start and end <= chunk.end for chunk in chunks)
    for chunk in chunks:
        assert not re.fullmatch(r"#+ .*", chunk.text.splitlines()[-1]), chunk.text[-60:]


def test_paragraph_breaks_are_preferred_to_sentence_breaks(counter):
    chunks = Chunker(counter).split(shipped_documents())
    ends = [
        text[chunk.end : chunk.end + 2]
        for text, found in zip(shipped_documents(), chunks, strict=True)
        for chunk in found[:-1]
    ]
    assert sum(end == "\n\n" for end in ends) / len(ends) > 0.6


def test_a_counter_that_is_not_additive_never_passes_its_limit(documents):
    # the count of a whole is more than the sum of its parts: summed unit counts underestimate
    def count(texts):
        return [len(text.split()) + len(text.split()) // 5 for text in texts]

    counter = TokenCounter.of(count, 60, "words and a fifth")
    for chunks in Chunker(counter).split(documents[:4]):
        assert all(count([chunk.text])[0] <= 60 for chunk in chunks)


def test_overlap_repeats_the_end_of_the_previous_chunk(counter):
    text = shipped_documents()[1]
    chunks = Chunker(counter, overlap=40).split([text])[0]
    plain = Chunker(counter).split([text])[0]
    assert len(chunks) > 3
    for before, chunk in itertools.pairwise(chunks):
        assert chunk.start < before.end  # it starts inside the chunk before
        repeated = text[chunk.start : before.end]
        assert 0 < counter.count([repeated])[0] - counter.overhead <= 40
    assert {c.key for c in chunks} <= {c.key for c in plain} | {c.key for c in chunks}


# ---------------------------------------------------------------------- content-defined cuts


def test_editing_the_last_paragraph_of_a_50_chunk_document_changes_only_its_last_chunk(counter):
    text, paragraphs = one_long_document()
    chunker = Chunker(counter)
    before = chunker.split([text])[0]
    assert len(before) >= 50
    edited = "\n\n".join([*paragraphs[:-1], paragraphs[-1] + " One more closing sentence."])
    after = chunker.split([edited])[0]
    assert len(changed(before, after)) <= 2
    assert {chunk.key for chunk in before[:-2]} <= {chunk.key for chunk in after}


@pytest.mark.parametrize("overlap", [0, 32])
def test_a_paragraph_inserted_in_the_middle_changes_only_the_chunks_around_it(counter, overlap):
    text, paragraphs = one_long_document()
    chunker = Chunker(counter, overlap=overlap)
    before = chunker.split([text])[0]
    for middle in (len(paragraphs) // 2, len(paragraphs) // 3, 2 * len(paragraphs) // 3):
        inserted = "A paragraph added later, about something else entirely. It is short."
        after = chunker.split(
            ["\n\n".join([*paragraphs[:middle], inserted, *paragraphs[middle:]])]
        )[0]
        assert 1 <= len(changed(before, after)) <= 4, middle
        lost = {chunk.key for chunk in before} - {chunk.key for chunk in after}
        assert len(lost) <= 3  # ids survive: destinations are not sent renamed copies


def test_uniform_lines_resynchronise_after_an_insertion(counter):
    # a greedy packer shifts every later cut here: all lines are alike in length
    lines = [f"Entry {i:04d}: the record was updated by the night team." for i in range(600)]
    chunker = Chunker(counter)
    before = chunker.split(["\n".join(lines)])[0]
    after = chunker.split(
        ["\n".join([*lines[:300], "Entry 9999: one inserted line.", *lines[300:]])]
    )[0]
    assert len(before) >= 30 and len(changed(before, after)) <= 3


def test_repeated_paragraphs_get_distinct_keys_and_positions(counter):
    text = "\n\n".join(["The same paragraph, repeated word for word. " * 8] * 10)
    chunks = Chunker(counter, max_tokens=50).split([text])[0]
    assert len({chunk.key for chunk in chunks}) == len(chunks) > 10
    assert any("~" in chunk.key for chunk in chunks)
    assert [chunk.index for chunk in chunks] == list(range(len(chunks)))


# ---------------------------------------------------------------------- inputs and settings


def test_whitespace_only_texts_have_no_chunks_and_a_bare_string_is_refused(counter):
    function = HashEmbeddingFunction(max_tokens=20)
    assert embedfleet.chunk(["", "  \n\t ", "one two"], function) == [
        [],
        [],
        [
            embedfleet.Chunk(
                0, 0, 7, "one two", embedfleet.chunk(["one two"], function)[0][0].key, 2
            )
        ],
    ]
    with pytest.raises(InvalidInputError, match="wrap it in"):
        embedfleet.chunk("a text", function)
    with pytest.raises(InvalidInputError, match="index 1"):
        embedfleet.chunk(["a", None], function)


def test_max_tokens_above_what_the_model_reads_is_refused_with_the_numbers(counter):
    with pytest.raises(
        ConfigError, match=r"max_tokens 300 .* 256 tokens .* 2 of them .* at most 254"
    ):
        Chunker(counter, max_tokens=300)
    with pytest.raises(ConfigError, match="overlap 128 is more than half"):
        Chunker(counter, max_tokens=200, overlap=128)


def test_a_function_without_a_token_limit_needs_max_tokens():
    function = HuggingFaceEmbeddingServer(url="http://127.0.0.1:9/embed")
    with pytest.raises(ConfigError, match="max_tokens is required"):
        embedfleet.chunk(["text"], function)
    [[chunk]] = embedfleet.chunk(["a short text"], function, max_tokens=50)
    assert chunk.tokens == estimate_tokens("a short text")


# ---------------------------------------------------------------------- token counters


def test_a_local_models_counter_reads_its_files_without_loading_the_model(tiny_model_dir):
    texts = ["", "a short text", "Ünïcödé 東京は日本の首都です。" * 20, "word " * 300]
    for settings in (
        {},
        {"document_prompt": "passage"},
        {"document_prompt": "literal: "},
        {"max_seq_length": 32},
    ):
        function = SentenceTransformerEmbeddingFunction(
            str(tiny_model_dir), precision="fp32", **settings
        )
        loaded = models.cached_model_count()
        counter = function.token_counter()
        assert models.cached_model_count() == loaded  # no weights were loaded
        assert counter.count(texts) == function.token_lengths(texts)  # the model's own count
        assert counter.limit == function.max_tokens()
        assert counter.overhead == function.token_lengths([""])[0]


def test_api_providers_count_as_they_bill_against_their_documented_limit():
    openai = OpenAIEmbeddingFunction(api_key_env_var="NO_SUCH_KEY")
    counter = openai.token_counter()
    assert counter.limit == 8192 and counter.overhead == 0
    assert counter.basis.startswith(("tiktoken cl100k_base", "a conservative estimate"))
    assert counter.count(["hello there world"]) == openai.billed_tokens(["hello there world"])
    server = HuggingFaceEmbeddingServer(url="http://127.0.0.1:9/embed").token_counter()
    assert server.limit is None and server.count(["some text"]) == [estimate_tokens("some text")]


def test_without_a_tokenizer_file_the_counter_asks_the_loaded_model(tiny_model_dir, tmp_path):
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "tokenizer.json").unlink()
    function = SentenceTransformerEmbeddingFunction(str(folder), precision="fp32")
    counter = function.token_counter()
    assert counter.basis.endswith("(loaded model)")
    texts = ["a short text", "word " * 100]
    assert counter.count(texts) == function.token_lengths(texts) and counter.limit == 64
