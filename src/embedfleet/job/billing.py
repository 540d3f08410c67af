"""Tokens as the provider bills them.

``plan()`` estimates a run's tokens and each shard task reserves its tokens in the
run's budget; both count with this one function, so an estimate and the budget it
is checked against agree. (``tokens.count_tokens`` counts with tiktoken, and an
embedding function's ``token_lengths`` counts what its model runs on: neither is what
a run is billed.)
"""

from __future__ import annotations

from embedfleet import tokens
from embedfleet.embedding_functions.base import EmbeddingFunction


def billed_tokens(counter: EmbeddingFunction | None, texts: list[str]) -> int:
    """Input tokens of ``texts``: the API provider's own ``request_tokens`` (what it
    bills: tiktoken for OpenAI, a conservative estimate elsewhere), or, for local
    models (free per token), ``tokens.estimate_tokens``, which never undercounts."""
    if not texts:
        return 0
    if counter is not None:
        return int(sum(counter.request_tokens(texts)))  # type: ignore[attr-defined]
    return sum(tokens.estimate_tokens(text) for text in texts)
