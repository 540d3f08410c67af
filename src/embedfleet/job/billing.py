"""Tokens as the provider bills them.

``plan()`` estimates a run's tokens and each shard task reserves its tokens in the
run's budget; both count with this one function, so an estimate and the budget it
is checked against agree. The embedding function says how it is billed
(:meth:`~embedfleet.embedding_functions.base.EmbeddingFunction.billed_tokens`: an API
provider counts as the provider does; other functions give an estimate that never
undercounts), which is neither ``tokens.count_tokens`` (a tokenizer's count) nor
``token_lengths`` (what a model runs on).
"""

from __future__ import annotations

from embedfleet.embedding_functions.base import EmbeddingFunction


def billed_tokens(function: EmbeddingFunction, texts: list[str]) -> int:
    """Input tokens of ``texts`` as ``function`` is billed for them."""
    return int(sum(function.billed_tokens(texts))) if texts else 0
