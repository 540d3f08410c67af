"""A batch cut into requests the provider accepts, and texts cut to its per-input limit.

A batch is sized for embedding (``batch_size``), a request for the provider's
documented limits: inputs per request, and for some providers tokens summed over
a request. Sending past either gets the whole request refused, so a batch is
split before it is sent rather than after a 400. Providers that refuse (rather
than cut) an over-long input get it cut here to the longest prefix within their
limit; ``on_long="error"`` refuses it earlier, naming its index.

Token counts come from the provider's own counter (``billed_tokens``), so the
cuts agree with what the provider counts.
"""

from __future__ import annotations

from collections.abc import Callable

from embedfleet.embedding_functions.base import Documents
from embedfleet.errors import BadRequestError

#: Tokens of each text, as the provider counts them.
TokenCounter = Callable[[Documents], list[int]]


def cut_to_limit(
    texts: Documents, counts: list[int], limit: int, count: TokenCounter
) -> tuple[Documents, list[int]]:
    """``texts`` with every one over ``limit`` tokens cut to fit, and their counts."""
    if not any(tokens > limit for tokens in counts):
        return texts, counts
    cut = [
        truncate(text, limit, count) if tokens > limit else text
        for text, tokens in zip(texts, counts, strict=True)
    ]
    return cut, [min(tokens, limit) for tokens in counts]


def truncate(text: str, limit: int, count: TokenCounter) -> str:
    """The longest prefix of ``text`` that counts at most ``limit`` tokens."""
    low, high = 0, len(text)
    while low < high:
        middle = (low + high + 1) // 2
        if count([text[:middle]])[0] <= limit:
            low = middle
        else:
            high = middle - 1
    return text[:low]


def split_requests(
    texts: Documents,
    counts: list[int],
    *,
    max_inputs: int,
    max_tokens: int | None,
    owner: str,
) -> list[tuple[Documents, int]]:
    """Consecutive requests of at most ``max_inputs`` texts and ``max_tokens`` tokens
    (None: no token limit), each with its token count (``counts``: each text's).
    A single text over ``max_tokens`` cannot be sent at all: ``owner`` names the
    provider in the error."""
    requests: list[tuple[Documents, int]] = []
    chunk: Documents = []
    chunk_tokens = 0
    for index, (text, tokens) in enumerate(zip(texts, counts, strict=True)):
        if max_tokens is not None and tokens > max_tokens:
            raise BadRequestError(
                f"text at index {index} of the batch is about {tokens} tokens, over "
                f"{owner}'s {max_tokens} tokens per request"
            )
        full = len(chunk) >= max_inputs
        if full or (max_tokens is not None and chunk_tokens + tokens > max_tokens):
            requests.append((chunk, chunk_tokens))
            chunk, chunk_tokens = [], 0
        chunk.append(text)
        chunk_tokens += tokens
    if chunk:
        requests.append((chunk, chunk_tokens))
    return requests
