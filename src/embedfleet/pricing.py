"""What embedding costs: a price per model, the cost of tokens, a per-run token budget.

Prices are USD per million input tokens, keyed by provider name and model. The
default table below is an ESTIMATE copied from the providers' public price pages
on 2026-11-25 (``PRICES_AS_OF``). Prices change and differ by contract, batch API
and region, so a job spec's ``budget.price_per_million_tokens`` always wins over it.

- Local providers (``default``, ``sentence_transformer``, ``instructor``, ``hash``,
  anything that is not an HTTP provider) cost nothing per token.
- An API model missing from the table has an unknown price: ``embedfleet plan``
  says so, and ``budget.max_cost`` refuses to run until the spec sets a price.

``TokenBudget`` is the ledger a job's shard tasks reserve their tokens in before
embedding. The runner makes it a Ray actor, so reservations from shards running
in parallel happen one at a time and can never together exceed the limit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from embedfleet.errors import ConfigError

PRICES_AS_OF = "2026-11-25"

#: USD per million input tokens (estimates as of ``PRICES_AS_OF``).
DEFAULT_PRICES: dict[tuple[str, str], float] = {
    ("openai", "text-embedding-3-small"): 0.02,
    ("openai", "text-embedding-3-large"): 0.13,
    ("openai", "text-embedding-ada-002"): 0.10,
    ("cohere", "embed-v4.0"): 0.12,
    ("google_generative_ai", "gemini-embedding-001"): 0.15,
}

UNKNOWN = "unknown (set budget.price_per_million_tokens)"


@dataclass(frozen=True)
class Price:
    """A model's price and where it came from (shown next to every cost)."""

    per_million_tokens: float | None  # USD; None: unknown
    source: str

    @property
    def known(self) -> bool:
        return self.per_million_tokens is not None

    def cost(self, tokens: int) -> float | None:
        """USD for ``tokens`` input tokens; None when the price is unknown."""
        if self.per_million_tokens is None:
            return None
        return tokens * self.per_million_tokens / 1_000_000

    def tokens_for(self, cost: float) -> int | None:
        """The most tokens ``cost`` USD buys; None when that is unlimited (free)."""
        if self.per_million_tokens is None:
            raise ValueError("the price is unknown")
        if self.per_million_tokens == 0:
            return None
        return math.floor(cost * 1_000_000 / self.per_million_tokens + 1e-9)

    def describe(self) -> str:
        if self.per_million_tokens is None:
            return UNKNOWN
        if self.per_million_tokens == 0:
            return f"free ({self.source})"
        return f"${self.per_million_tokens:g} per million tokens ({self.source})"

    def to_dict(self) -> dict[str, Any]:
        return {"per_million_tokens": self.per_million_tokens, "source": self.source}


def price_for(
    provider: str, model: str | None, *, api: bool, override: float | None = None
) -> Price:
    """The price of one provider + model: the spec's override, local (free), the table."""
    if override is not None:
        return Price(override, "budget.price_per_million_tokens")
    if not api:
        return Price(0.0, "local model")
    model = (model or "").removeprefix("models/")  # Gemini accepts both spellings
    known = DEFAULT_PRICES.get((provider, model))
    if known is None:
        return Price(None, f"no price known for {provider} model {model!r}")
    return Price(known, f"estimate as of {PRICES_AS_OF}")


def token_limit(max_tokens: int | None, max_cost: float | None, price: Price) -> int | None:
    """The run's token limit from ``budget.max_tokens`` and ``budget.max_cost`` (the
    smaller wins); None: no limit. ``max_cost`` without a known price is a ConfigError."""
    limits = [] if max_tokens is None else [max_tokens]
    if max_cost is not None:
        if not price.known:
            raise ConfigError(
                f"budget.max_cost is set but the price is unknown ({price.source}): set "
                "budget.price_per_million_tokens (USD per million input tokens) in the spec"
            )
        affordable = price.tokens_for(max_cost)
        if affordable is not None:
            limits.append(affordable)
    return min(limits) if limits else None


def format_cost(cost: float | None) -> str:
    """``$0.000096``, ``$12.35``; the unknown-price hint for None."""
    if cost is None:
        return UNKNOWN
    if cost == 0:
        return "$0.00"
    if cost < 0.000001:
        return "< $0.000001"
    if cost < 1:
        return f"${cost:.6f}".rstrip("0")
    return f"${cost:,.2f}"


class TokenBudget:
    """Reservations against a token limit (None: unlimited, only counted).

    ``reserve(n)`` takes ``n`` tokens if they fit in what is left; the first
    reservation that does not fit is refused and so is every later one, so once
    a job reaches its budget no further shard starts, even a smaller one.
    """

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.reserved = 0
        self.refused = 0
        self.exhausted = False

    def reserve(self, tokens: int) -> bool:
        if tokens < 0:
            raise ValueError(f"tokens must be non-negative, got {tokens}")
        fits = self.limit is None or self.reserved + tokens <= self.limit
        if self.exhausted or not fits:
            self.exhausted = True
            self.refused += 1
            return False
        self.reserved += tokens
        return True

    def state(self) -> dict[str, Any]:
        return {
            "limit": self.limit,
            "reserved": self.reserved,
            "refused": self.refused,
            "exhausted": self.exhausted,
        }
