"""How an embedding function counts a text's tokens, so texts can be cut to fit it.

Chunking (:mod:`embedfleet.job.chunking`) cuts documents so that no chunk passes the
function's limit *as the function counts it*. It never checks a provider class: it
asks the function for its :class:`TokenCounter`
(:meth:`~embedfleet.embedding_functions.base.EmbeddingFunction.token_counter`):

* local models: the model's own tokenizer, read from the model's files (not its
  weights), counting the prompt and special tokens the model adds, against its
  ``max_seq_length``;
* API providers: the provider's own count (tiktoken for OpenAI when its encoding
  file is local), against the provider's documented per-input limit;
* anything else: :func:`embedfleet.tokens.estimate_tokens`, which never counts
  fewer tokens than cl100k_base or o200k_base, against :meth:`max_tokens`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from embedfleet.errors import ConfigError


@dataclass(frozen=True)
class TokenCounter:
    """``count(texts)``: each text's tokens as the function counts them against ``limit``
    (prompt and special tokens included); ``limit``: the most one text may take (None:
    the function declares none); ``overhead``: what ``count`` adds to any text (its
    prompt and special tokens, ``count([""])``); ``basis``: how it counts, in words."""

    count: Callable[[Sequence[str]], list[int]]
    limit: int | None
    basis: str
    overhead: int = 0

    @classmethod
    def of(
        cls, count: Callable[[Sequence[str]], list[int]], limit: int | None, basis: str
    ) -> TokenCounter:
        """A counter whose overhead is measured: what it counts for an empty text."""
        return cls(count, limit, basis, overhead=int(count([""])[0]))

    def text_budget(self, max_tokens: int | None = None) -> int:
        """Tokens a text of its own may hold so that, framed (prompt and special tokens),
        it stays within the limit: ``max_tokens`` if given (never more than that room),
        else the whole room. Raises ConfigError where neither is known."""
        room = None if self.limit is None else self.limit - self.overhead
        if max_tokens is None:
            if room is None:
                raise ConfigError(
                    f"max_tokens is required: this embedding function ({self.basis}) "
                    "declares no token limit per text"
                )
            if room < 1:
                raise ConfigError(
                    f"the prompt and special tokens take {self.overhead} of the {self.limit} "
                    f"tokens this function reads ({self.basis}): nothing is left for text"
                )
            return room
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise ConfigError(f"max_tokens must be a positive integer, got {max_tokens!r}")
        if room is not None and max_tokens > room:
            raise ConfigError(
                f"max_tokens {max_tokens} is more than this function reads: {self.limit} "
                f"tokens ({self.basis}), {self.overhead} of them its prompt and special "
                f"tokens, so at most {room}"
            )
        return max_tokens
