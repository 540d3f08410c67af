"""One call's texts: de-duplicated, planned (lengths, token counts), cut into batches.

Every provider batches the same way, so the steps live here once and
:class:`~embedfleet.embedding_functions.base.EmbeddingFunction` runs them:

1. identical texts within a call are embedded once (:func:`deduplicate`);
2. the function plans the call (:class:`CallPlan`): a sort key per text (its token
   count where the function can count, else its length in characters) and whatever
   the function wants to keep until its batches run (a local model's token ids);
3. texts are sorted by that key and cut into batches (:func:`cut_batches`):
   ``batch_size`` texts, or, with a token budget and real token counts, at most
   ``batch_size`` texts whose count times the longest fits the budget, cut early
   where padding would pass :data:`MAX_PADDING`.

The plan travels explicitly from planning to the batches: nothing about a call
is kept on the function object, so one function serves many threads at once.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field, fields
from typing import Any

from embedfleet.errors import TextTooLongError

#: Token-budget batches are also cut where padding would pass this many padded tokens
#: per real token, once they hold MIN_TOKEN_BATCH texts.
MAX_PADDING = 1.10
MIN_TOKEN_BATCH = 16


@dataclass
class CallCounts:
    """What one call added to a function's statistics."""

    truncated: int = 0  # texts cut to the model's token limit
    tokens: int = 0  # tokens of the texts embedded, where the function counts them
    padded_tokens: int = 0  # tokens the model ran, padding included (batch x longest)

    def add(self, other: CallCounts | dict[str, int]) -> None:
        """Add another call's (or a replica's batch's) counts to these."""
        values = other if isinstance(other, dict) else other.as_dict()
        for name, amount in values.items():
            setattr(self, name, getattr(self, name) + amount)

    def as_dict(self) -> dict[str, int]:
        return {item.name: getattr(self, item.name) for item in fields(self)}


@dataclass
class EmbeddingStats:
    """Running totals of one embedding function, readable after any call."""

    calls: int = 0
    documents: int = 0
    embedded: int = 0  # texts actually sent to the model, after de-duplication
    truncated: int = 0  # texts cut to the model's token limit
    tokens: int = 0  # tokens of the texts embedded, where the function counts them
    padded_tokens: int = 0  # tokens the model ran, padding included (batch x longest)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @property
    def padding_waste(self) -> float:
        """Padded tokens per real token (1.0: no padding); 0 when nothing was counted."""
        return self.padded_tokens / self.tokens if self.tokens else 0.0

    def record(
        self, counts: CallCounts, *, calls: int = 0, documents: int = 0, embedded: int = 0
    ) -> None:
        """Add one call's counts (safe from several threads)."""
        with self._lock:
            self.calls += calls
            self.documents += documents
            self.embedded += embedded
            self.truncated += counts.truncated
            self.tokens += counts.tokens
            self.padded_tokens += counts.padded_tokens

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_lock", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()


@dataclass
class CallPlan:
    """A call's unique texts as the function sees them, from planning to the last batch.

    ``lengths`` are the sort keys (token counts when ``counted``, else characters);
    ``state`` is the function's own per-call data (a local model keeps each text's
    token ids there, so its batches are not tokenized again); ``counts`` collect what
    the call adds to the function's statistics.
    """

    texts: list[str]
    query: bool
    lengths: list[int]
    counted: bool
    state: Any = None
    counts: CallCounts = field(default_factory=CallCounts)


def deduplicate(texts: list[str]) -> tuple[list[str], list[int], list[int]]:
    """Unique texts in first-seen order, each input's position among them, and
    the input index where each unique text first appears."""
    index_of: dict[str, int] = {}
    first_seen: list[int] = []
    positions = []
    for input_index, text in enumerate(texts):
        position = index_of.setdefault(text, len(index_of))
        if position == len(first_seen):
            first_seen.append(input_index)
        positions.append(position)
    return list(index_of), positions, first_seen


def enforce_limit(
    plan: CallPlan, limit: int | None, on_long: str, first_seen: list[int], owner: str
) -> None:
    """Apply ``on_long`` to token counts over ``limit``: count them as truncated, or
    raise ``TextTooLongError`` naming the first offending input index."""
    if not plan.counted or limit is None:
        return
    over = [index for index, count in enumerate(plan.lengths) if count > limit]
    if over and on_long == "error":
        first = min(over, key=first_seen.__getitem__)
        raise TextTooLongError(
            f"document at index {first_seen[first]} is {plan.lengths[first]} tokens long; "
            f"{owner} accepts at most {limit} (on_long='truncate' cuts it)"
        )
    plan.counts.truncated += len(over)


def cut_batches(
    plan: CallPlan, batch_size: int, max_batch_tokens: int | None, limit: int | None
) -> list[list[int]]:
    """Indices into ``plan.texts``, shortest first, cut into batches: ``batch_size`` texts
    each, or, with ``max_batch_tokens`` and token counts, at most ``batch_size`` texts
    that keep batch x longest text within the budget (at least one) and, past
    ``MIN_TOKEN_BATCH`` texts, padding under ``MAX_PADDING``. Counts the call's tokens
    and padding when its lengths are tokens (a text runs at most ``limit`` of them)."""
    lengths = plan.lengths
    if plan.counted and limit:
        lengths = [min(length, limit) for length in lengths]
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    budget = max_batch_tokens if plan.counted else None
    if budget is None:
        batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    else:
        batches, current, real = [], [], 0
        for index in order:
            padded = (len(current) + 1) * lengths[index]
            over_budget = current and (padded > budget or len(current) >= batch_size)
            too_padded = len(current) >= MIN_TOKEN_BATCH and padded > MAX_PADDING * (
                real + lengths[index]
            )
            if over_budget or too_padded:
                batches.append(current)
                current, real = [], 0
            current.append(index)
            real += lengths[index]
        batches.append(current)
    if plan.counted:
        plan.counts.tokens += sum(lengths)
        plan.counts.padded_tokens += sum(len(batch) * lengths[batch[-1]] for batch in batches)
    return batches
