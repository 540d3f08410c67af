"""Where a document may be cut, and where each chunk is cut: content-defined.

A document arrives as *units* (semantic-text-splitter's pieces of about a sentence,
tiling the text, each counted in the function's tokens). Each gap between two units
gets a **level**, how good a place to cut it is::

    0 inside a word      1 between words     2 after a sentence    3 a line break
    4 a paragraph break  5 the edge of a Markdown code block
    6-11 before a Markdown heading (H6 ... H1)

(with ``markdown``, a gap inside a code block counts at most as a line break, and the
gap right after a heading as a word break, so a heading stays with its text), and a
**priority**: a hash of the two units around it.

:func:`cut` then walks the document chunk by chunk. From a chunk's first unit, the
candidates are the gaps where the chunk would hold between half and all of its
budget; the chunk ends at the candidate of the highest level, ties broken by
priority. Where an earlier gap of a higher level starts a block (a paragraph, a code
block, a section up to the next break of that level) that fits a chunk whole, the
chunk ends there instead, so the block is not cut. Nothing here counts from the
document's start: a cut depends on the units in its window and the hash of the text
around each gap, so after an edit the two versions' windows soon overlap on the same
best gap and every later cut is the same again.
"""

from __future__ import annotations

import hashlib
import math
import re
import unicodedata
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from dataclasses import dataclass

IN_WORD, WORD, SENTENCE, LINE, PARAGRAPH, BLOCK, HEADING = 0, 1, 2, 3, 4, 5, 6
MIN_FILL = 0.5  # a chunk cut at a window gap holds at least this share of its budget

_SENTENCE_END = re.compile(
    r"[.!?;\u3002\uff01\uff1f\uff1b\u2026\u061f\u0964][\"'\u201d\u2019\u00bb)\]]*$"
)
_UNIT_BREAK = re.compile(
    r"\n\s*|[.!?\u2026][\"'\u201d\u2019\u00bb)\]]*\s+|[\u3002\uff01\uff1f][\"'\u201d\u2019\u300d\u300f)]*\s*"
)
_HEADING = re.compile(r"(#{1,6})[ \t]")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})", re.MULTILINE)
# Scripts written without spaces between words: a cut between two of their letters
# is a word break, not a cut inside a word.
_UNSPACED = (
    ("\u0e00", "\u0eff"),  # Thai, Lao
    ("\u1000", "\u109f"),  # Myanmar
    ("\u1780", "\u17ff"),  # Khmer
    ("\u2e80", "\u9fff"),  # CJK radicals, kana, ideographs
    ("\uf900", "\ufaff"),
    ("\uff00", "\uffef"),
)


@dataclass
class Units:
    """One document's units: ``bounds[i]`` to ``bounds[i + 1]`` is unit ``i`` (they tile
    the text); ``tokens[i]`` its count; ``levels[i]`` and ``priorities[i]`` describe the
    gap after unit ``i``; ``ends[i]`` / ``starts[i]`` are unit ``i``'s text without its
    surrounding whitespace."""

    text: str
    bounds: list[int]
    tokens: list[int]
    levels: list[int]
    priorities: list[int]
    starts: list[int]
    ends: list[int]

    @property
    def count(self) -> int:
        return len(self.tokens)

    def unit_text(self, index: int) -> str:
        return self.text[self.starts[index] : self.ends[index]]


def tile(text: str, offsets: Sequence[int]) -> list[int]:
    """Unit bounds: the library's piece offsets plus the start of every line and every
    sentence (so no unit spans one, and a unit's bounds never depend on text before its
    line or sentence); the first at 0, the last at the end, whitespace-only pieces joined
    to the piece before (or after, at the start)."""
    breaks = {match.end() for match in _UNIT_BREAK.finditer(text)}
    bounds = [0]
    for offset in sorted(breaks.union(offsets)):
        if 0 < offset < len(text) and text[bounds[-1] : offset].strip():
            bounds.append(offset)
    if len(bounds) > 1 and not text[bounds[-1] :].strip():
        bounds.pop()  # trailing whitespace joins the last unit
    return [*bounds, len(text)]


def describe(text: str, bounds: list[int], tokens: list[int], markdown: bool) -> Units:
    """Levels and priorities of every gap between units (see the module docstring)."""
    count = len(bounds) - 1
    starts, ends = [], []
    for index in range(count):
        piece = text[bounds[index] : bounds[index + 1]]
        starts.append(bounds[index] + len(piece) - len(piece.lstrip()))
        ends.append(bounds[index] + len(piece.rstrip()))
    levels, priorities = [], []
    fences = _fences(text) if markdown else []
    for index in range(count - 1):
        left, right = ends[index], starts[index + 1]
        level = _level(text, left, right)
        if markdown:
            level = _markdown_level(text, left, right, level, fences)
        levels.append(level)
        pair = text[starts[index] : left] + "\x1f" + text[right : ends[index + 1]]
        digest = hashlib.blake2b(pair.encode("utf-8"), digest_size=8).digest()
        priorities.append(int.from_bytes(digest, "little"))
    return Units(text, bounds, list(tokens), levels, priorities, starts, ends)


def _level(text: str, left: int, right: int) -> int:
    gap = text[left:right]
    newlines = gap.count("\n")
    if newlines >= 2:
        return PARAGRAPH
    if newlines == 1:
        return LINE
    if _SENTENCE_END.search(text, max(0, left - 8), left):
        return SENTENCE
    if gap:
        return WORD
    before, after = text[left - 1], text[right]
    if unicodedata.category(after).startswith("M"):
        return IN_WORD  # a combining mark belongs to the letter before it
    if before.isalnum() and after.isalnum() and not (_unspaced(before) or _unspaced(after)):
        return IN_WORD
    return WORD


def _unspaced(char: str) -> bool:
    return any(low <= char <= high for low, high in _UNSPACED)


def _fences(text: str) -> list[tuple[int, int]]:
    """(start of the opening fence line, end of the closing fence's text) of each fenced
    code block; an unclosed one runs to the end."""
    spans, opening = [], None
    for match in _FENCE.finditer(text):
        fence = match.group(1)
        if opening is None:
            opening = (match.start(), fence)
        elif fence[0] == opening[1][0] and len(fence) >= len(opening[1]):
            line_end = text.find("\n", match.end())
            spans.append((opening[0], len(text) if line_end < 0 else line_end))
            opening = None
    if opening is not None:
        spans.append((opening[0], len(text)))
    return spans


def _markdown_level(
    text: str, left: int, right: int, level: int, fences: list[tuple[int, int]]
) -> int:
    nearest = bisect_right(fences, (right, len(text) + 1)) - 1  # the last block from <= right
    for start, end in fences[max(0, nearest - 1) : nearest + 1]:
        if start < right and left < end:  # the gap is inside the block
            return min(level, LINE)
        if right == start or left == end:
            return max(level, BLOCK)
    heading = _HEADING.match(text, right)
    if heading:
        return max(level, HEADING + 6 - len(heading.group(1)))
    line_start = text.rfind("\n", 0, left) + 1
    if _HEADING.match(text, line_start) and text.find("\n", line_start, left) < 0:
        return min(level, WORD)  # right after a heading line: keep it with its text
    return level


def cut(
    units: Units, budget: int, first: int = 0, last: int | None = None
) -> list[tuple[int, int]]:
    """Unit ranges ``[start, end)`` covering units ``first`` to ``last`` (exclusive; all
    by default), each within ``budget`` tokens by the units' counts (a unit over it
    alone), cut as the module docstring says."""
    last = units.count if last is None else last
    cumulative = [0]
    for tokens in units.tokens[first:last]:
        cumulative.append(cumulative[-1] + tokens)
    ranges: list[tuple[int, int]] = []
    start = 0  # relative to ``first``
    size = last - first
    while start < size:
        ceiling = bisect_right(cumulative, cumulative[start] + budget, start + 1) - 1
        ceiling = max(ceiling, start + 1)
        if ceiling >= size:
            ranges.append((first + start, last))
            break
        floor = bisect_left(
            cumulative, cumulative[start] + math.ceil(budget * MIN_FILL), start + 1, ceiling
        )
        floor = min(max(floor, start + 1), ceiling)
        best = max(range(floor, ceiling + 1), key=lambda end: _rank(units, first + end - 1))
        best = _earlier_block(units, cumulative, first, start, floor, best, budget, size)
        ranges.append((first + start, first + best))
        start = best
    return ranges


def _rank(units: Units, gap: int) -> tuple[int, int]:
    return units.levels[gap], units.priorities[gap]


def _earlier_block(
    units: Units,
    cumulative: list[int],
    first: int,
    start: int,
    floor: int,
    best: int,
    budget: int,
    size: int,
) -> int:
    """An end before the window at a gap of a higher level than ``best``'s whose block
    (up to the next gap of at least that level) fits a chunk whole; else ``best``."""
    chosen, chosen_level = best, units.levels[first + best - 1]
    for end in range(floor - 1, start, -1):
        level = units.levels[first + end - 1]
        if level > chosen_level and _fits_whole(units, cumulative, first, end, level, budget, size):
            chosen, chosen_level = end, level
    return chosen


def _fits_whole(
    units: Units,
    cumulative: list[int],
    first: int,
    begin: int,
    level: int,
    budget: int,
    size: int,
) -> bool:
    """Whether the block starting at unit ``begin`` (relative), up to the next gap of
    ``level`` or more, holds at most ``budget`` tokens."""
    for end in range(begin + 1, size + 1):
        if cumulative[end] - cumulative[begin] > budget:
            return False
        if end == size or units.levels[first + end - 1] >= level:
            return True
    return True
