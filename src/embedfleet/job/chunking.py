"""Documents into chunks that fit the model, exact in its own tokens, with offsets.

    >>> import embedfleet
    >>> from embedfleet.embedding_functions import DefaultEmbeddingFunction
    >>> [chunks] = embedfleet.chunk([long_text], DefaultEmbeddingFunction(), overlap=32)
    >>> chunks[0].start, chunks[0].end, chunks[0].text == long_text[chunks[0].start : chunks[0].end]

How a document is cut (the reasons and measurements are in docs/chunking.md):

1. **Units.** semantic-text-splitter cuts the text into pieces of at most
   ``unit_chars`` characters (about a sentence) at its semantic levels: Unicode
   sentence and word boundaries, newlines and, with ``markdown``, Markdown blocks.
   Each unit is counted with the function's own counter; one over the budget is cut
   again by the library, counting with the same counter.
2. **Cuts** are content-defined (:mod:`.chunk_breaks`): paragraph over sentence over
   word breaks, never inside a word where a word fits, chosen by the text around each
   gap rather than by a running count, so an edit changes only the chunks near it.
3. **Overlap.** A chunk after the first starts with up to ``overlap`` tokens of the
   previous chunk's end, from a word start; the cuts do not depend on it.
4. **Check.** Every chunk is counted as the function counts it (prompt and special
   tokens included) and never passes its limit: a chunk over it (token counts are not
   always additive) loses its overlap, then is cut again with a smaller budget.

Ids: a chunk's ``key`` hashes the first unit of its own text (the overlap aside), with
``~2``, ``~3`` ... for later chunks that start with the same unit, so a chunk keeps
its key when text elsewhere in the document changes. ``index`` is its position.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from embedfleet.embedding_functions.base import EmbeddingFunction
from embedfleet.embedding_functions.token_counter import TokenCounter
from embedfleet.errors import ConfigError, InvalidInputError, MissingDependencyError
from embedfleet.job import chunk_breaks
from embedfleet.job.chunk_breaks import Units

#: Part of a job's fingerprint: a change to how documents are cut re-embeds everything.
CHUNKER_VERSION = 1
CHUNKING_INSTALL_HINT = 'pip install "embedfleet[chunking]"'
_UNIT_CHARS = (16, 2000)  # unit size in characters: half the budget in tokens, within these
_KEY_BYTES = 6
_WORD_START = re.compile(r"(?:^|(?<=\s))\S|[\u2e80-\u9fff\uf900-\ufaff]", re.MULTILINE)


@dataclass(frozen=True)
class Chunk:
    """One chunk of a document: ``text == document[start:end]`` (character offsets)."""

    index: int  # position in its document, from 0
    start: int
    end: int
    text: str
    key: str  # content-anchored: the chunk's id in a job is ``{doc_id}#{key}``
    tokens: int  # as the function counts it, prompt and special tokens included

    def chunk_id(self, doc_id: str) -> str:
        return f"{doc_id}#{self.key}"


class Chunker:
    """Cuts texts for one token counter and one setting; reusable, no state per call."""

    def __init__(
        self,
        counter: TokenCounter,
        *,
        max_tokens: int | None = None,
        overlap: int = 0,
        markdown: bool = False,
    ) -> None:
        self.counter = counter
        self.budget = counter.text_budget(max_tokens)
        if isinstance(overlap, bool) or not isinstance(overlap, int) or overlap < 0:
            raise ConfigError(f"overlap must be a non-negative integer, got {overlap!r}")
        if overlap > self.budget // 2:
            raise ConfigError(
                f"overlap {overlap} is more than half of max_tokens ({self.budget}): at most "
                f"{self.budget // 2}"
            )
        self.overlap = overlap
        self.core = self.budget - overlap  # a chunk's own text, overlap aside
        self.allowed = self.budget + counter.overhead  # a chunk as the function counts it
        self.markdown = markdown
        self.unit_chars = min(max(self.core // 2, _UNIT_CHARS[0]), _UNIT_CHARS[1])
        self._splitter = _splitter(markdown, self.unit_chars)

    def split(self, texts: Sequence[str]) -> list[list[Chunk]]:
        """The chunks of each text, in order; a text of whitespace only has none."""
        documents = self._units(list(texts))
        cuts = [
            chunk_breaks.cut(units, self.core) if units is not None else [] for units in documents
        ]
        spans = self._fit(documents, cuts)
        return [
            self._chunks(units, ranges, found) if units is not None else []
            for units, ranges, found in zip(documents, cuts, spans, strict=True)
        ]

    # ------------------------------------------------------------------ units
    def _bare(self, texts: Sequence[str]) -> list[int]:
        """Tokens of each text of its own: the function's count less its overhead."""
        if not texts:
            return []
        overhead = self.counter.overhead
        return [max(0, count - overhead) for count in self.counter.count(list(texts))]

    def _units(self, texts: list[str]) -> list[Units | None]:
        """Every text's units, counted in one call; units over the budget cut again."""
        bounds = [
            chunk_breaks.tile(text, [offset for offset, _ in self._splitter.chunk_indices(text)])
            if text.strip()
            else None
            for text in texts
        ]
        pieces = [
            text[found[i] : found[i + 1]]
            for text, found in zip(texts, bounds, strict=True)
            if found is not None
            for i in range(len(found) - 1)
        ]
        counts = iter(self._bare(pieces))
        documents: list[Units | None] = []
        for text, found in zip(texts, bounds, strict=True):
            if found is None:
                documents.append(None)
                continue
            tokens = [next(counts) for _ in range(len(found) - 1)]
            found, tokens = self._cut_large_units(text, found, tokens)
            documents.append(chunk_breaks.describe(text, found, tokens, self.markdown))
        return documents

    def _cut_large_units(
        self, text: str, bounds: list[int], tokens: list[int]
    ) -> tuple[list[int], list[int]]:
        """Units over the budget, cut again by the library counting in the function's
        tokens (a long run of dense script, a word longer than a chunk)."""
        if max(tokens) <= self.core:
            return bounds, tokens
        from semantic_text_splitter import TextSplitter

        splitter = TextSplitter.from_callback(
            lambda piece: self._bare([piece])[0], max(1, self.core // 2), trim=False
        )
        new_bounds, new_tokens = [0], []
        for index, count in enumerate(tokens):
            start, end = bounds[index], bounds[index + 1]
            if count <= self.core:
                new_bounds.append(end)
                new_tokens.append(count)
                continue
            piece = text[start:end]
            inner = chunk_breaks.tile(
                piece, [offset for offset, _ in splitter.chunk_indices(piece)]
            )
            parts = [piece[inner[i] : inner[i + 1]] for i in range(len(inner) - 1)]
            for offset, part_tokens in zip(inner[1:], self._bare(parts), strict=True):
                if part_tokens > self.core:
                    raise ConfigError(
                        f"max_tokens {self.budget} is too small: the text at characters "
                        f"{start}-{start + offset} cannot be cut into pieces that fit"
                    )
                new_bounds.append(start + offset)
                new_tokens.append(part_tokens)
        return new_bounds, new_tokens

    # ------------------------------------------------------------------ fitting
    def _fit(
        self, documents: list[Units | None], cuts: list[list[tuple[int, int]]]
    ) -> list[list[tuple[int, int, int]]]:
        """Each chunk's (start, end, tokens as the function counts it), all within the
        limit: all chunks are counted in one call; one over the limit (the units' counts
        summed only estimate the whole's) loses its overlap, and if its own text is still
        over, it is cut again with a smaller budget (rare: counted again)."""
        while True:
            spans = [
                self._spans(units, ranges) if units else []
                for units, ranges in zip(documents, cuts, strict=True)
            ]
            if self.overlap:
                self._trim_overlaps(documents, cuts, spans)
            flat = [
                (number, position, start, end)
                for number, found in enumerate(spans)
                for position, (start, end) in enumerate(found)
            ]
            counts = self.counter.count(
                [documents[n].text[start:end] for n, _, start, end in flat]  # type: ignore[union-attr]
            )
            done = [[(start, end, 0) for start, end in found] for found in spans]
            over = []
            for (number, position, start, end), count in zip(flat, counts, strict=True):
                units = documents[number]
                assert units is not None
                own_start = units.starts[cuts[number][position][0]]
                if count > self.allowed and start < own_start:
                    start = own_start  # the overlap tipped it over: drop it
                    count = self.counter.count([units.text[start:end]])[0]
                if count > self.allowed:
                    over.append((number, position, count))
                done[number][position] = (start, end, count)
            if not over:
                return done
            for number, position, count in sorted(over, reverse=True):
                units = documents[number]
                assert units is not None
                self._recut(units, cuts[number], position, count)

    def _trim_overlaps(
        self,
        documents: list[Units | None],
        cuts: list[list[tuple[int, int]]],
        spans: list[list[tuple[int, int]]],
    ) -> None:
        """Move each overlap's start a word later until it holds at most ``overlap``
        tokens (its start was estimated by characters per token); one call a round."""
        pending = [
            (number, position)
            for number, found in enumerate(spans)
            for position in range(1, len(found))
            if found[position][0] < documents[number].starts[cuts[number][position][0]]  # type: ignore[union-attr]
        ]
        while pending:
            texts = []
            for number, position in pending:
                units = documents[number]
                assert units is not None
                previous_end = spans[number][position - 1][1]
                texts.append(units.text[spans[number][position][0] : previous_end])
            still = []
            for (number, position), tokens in zip(pending, self._bare(texts), strict=True):
                units = documents[number]
                assert units is not None
                start, end = spans[number][position]
                own = units.starts[cuts[number][position][0]]
                if tokens <= self.overlap or start >= own:
                    continue
                later = _WORD_START.search(units.text, start + 1, own)
                spans[number][position] = (later.start() if later else own, end)
                still.append((number, position))
            pending = still

    def _recut(
        self, units: Units, ranges: list[tuple[int, int]], position: int, count: int
    ) -> None:
        """Cut the chunk at ``position`` again with a budget smaller by its excess."""
        first, last = ranges[position]
        if last - first == 1:
            raise ConfigError(
                f"max_tokens {self.budget} is too small for the text at characters "
                f"{units.starts[first]}-{units.ends[first]} ({count} tokens)"
            )
        total = sum(units.tokens[first:last])
        budget = max(1, min(self.core, total - 1) - (count - self.allowed))
        ranges[position : position + 1] = chunk_breaks.cut(units, budget, first, last)

    def _spans(self, units: Units, ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """(start, end) of each chunk's text, its overlap included."""
        spans = []
        for position, (first, last) in enumerate(ranges):
            start = units.starts[first]
            if position and self.overlap:
                start = self._overlap_start(units, ranges[position - 1], start)
            spans.append((start, units.ends[last - 1]))
        return spans

    def _chunks(
        self, units: Units, ranges: list[tuple[int, int]], spans: list[tuple[int, int, int]]
    ) -> list[Chunk]:
        """One document's chunks, keyed by their first own unit (repeats numbered)."""
        chunks, seen = [], {}
        for position, ((first, _), (start, end, count)) in enumerate(
            zip(ranges, spans, strict=True)
        ):
            key = _key(units.unit_text(first))
            seen[key] = seen.get(key, 0) + 1
            if seen[key] > 1:
                key = f"{key}~{seen[key]}"
            chunks.append(Chunk(position, start, end, units.text[start:end], key, count))
        return chunks

    def _overlap_start(self, units: Units, previous: tuple[int, int], core_start: int) -> int:
        """Where a chunk's overlap begins: whole units from the previous chunk's end while
        they fit ``overlap`` tokens, then the words of the next unit back that fit by its
        characters per token (an estimate: the chunk is counted after)."""
        first, last = previous
        text = units.text
        position, total = last, 0
        while position > first and total + units.tokens[position - 1] <= self.overlap:
            total += units.tokens[position - 1]
            position -= 1
        start = units.starts[position] if position < last else core_start
        if position == first or total >= self.overlap:
            return start
        low, high = units.starts[position - 1], units.ends[position - 1]
        tokens = units.tokens[position - 1]
        room = (self.overlap - total) * (high - low) // max(tokens, 1)  # characters
        for match in _WORD_START.finditer(text, max(low, high - room), high):
            return min(match.start(), start)
        return start


def _first_true(items: list[int], test: Callable[[int], bool]) -> int | None:
    """The index of the first item passing ``test``, for a test that stays true once
    true (binary search); None if none passes."""
    low, high = 0, len(items)
    while low < high:
        middle = (low + high) // 2
        if test(items[middle]):
            high = middle
        else:
            low = middle + 1
    return low if low < len(items) else None


def _key(unit_text: str) -> str:
    return hashlib.blake2b(unit_text.encode("utf-8"), digest_size=_KEY_BYTES).hexdigest()


def _splitter(markdown: bool, characters: int) -> Any:
    try:
        import semantic_text_splitter
    except ImportError as exc:
        raise MissingDependencyError(
            f"chunking needs semantic-text-splitter: {CHUNKING_INSTALL_HINT}"
        ) from exc
    kind = (
        semantic_text_splitter.MarkdownSplitter if markdown else semantic_text_splitter.TextSplitter
    )
    return kind(characters, trim=False)


def chunk(
    texts: Sequence[str],
    function: EmbeddingFunction,
    *,
    max_tokens: int | None = None,
    overlap: int = 0,
    markdown: bool = False,
) -> list[list[Chunk]]:
    """Cut each text into chunks that ``function`` embeds whole, counted in its own
    tokens (``max_tokens``: a chunk's own tokens, default all the function reads less
    its prompt and special tokens; ``overlap``: tokens a chunk repeats from the one
    before; ``markdown``: keep headings and code blocks whole where they fit).

    Returns one list of :class:`Chunk` per text (offsets, text, key, tokens); a text of
    whitespace only has none. See the module docstring for how cuts are chosen.
    """
    if isinstance(texts, str):
        raise InvalidInputError("chunk takes a list of texts, not a str: wrap it in [...]")
    texts = list(texts)
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise InvalidInputError(
                f"text at index {index} must be a str, got {type(text).__name__}"
            )
    chunker = Chunker(
        function.token_counter(), max_tokens=max_tokens, overlap=overlap, markdown=markdown
    )
    return chunker.split(texts)
