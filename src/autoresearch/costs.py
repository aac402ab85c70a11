"""What the agent spends: tokens per proposal and their price in USD. The price table lives here.

Prices are USD per million tokens, from the providers' published pricing pages (checked
2026-11): input, output, prompt-cache reads and prompt-cache writes (Anthropic's 5-minute
writes). A model missing from the table has an unknown cost: its tokens are still recorded,
its dollars are not guessed. `[agent.prices]` in autoresearch.toml adds or overrides entries.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Mapping, Optional

from .config import Price

# ---------------------------------------------------------------------------- the price table

PRICES: dict[str, Price] = {
    # model id                          input   output  cache read  cache write (5 min)
    "claude-fable-5-2": Price(input=8.00, output=40.00, cache_read=0.20, cache_write=10.00),
    "claude-fable-5-1": Price(input=10.00, output=50.00, cache_read=0.25, cache_write=12.50),
    "claude-fable-5": Price(input=10.00, output=50.00, cache_read=1.00, cache_write=12.50),
    "claude-opus-5-5": Price(input=4.00, output=20.00, cache_read=0.20, cache_write=5.00),
    "claude-opus-5": Price(input=5.00, output=25.00, cache_read=0.50, cache_write=6.25),
    "claude-opus-4-8": Price(input=5.00, output=25.00, cache_read=0.50, cache_write=6.25),
    "claude-opus-4-7": Price(input=5.00, output=25.00, cache_read=0.50, cache_write=6.25),
    "claude-opus-4-6": Price(input=5.00, output=25.00, cache_read=0.50, cache_write=6.25),
    "claude-opus-4-5": Price(input=5.00, output=25.00, cache_read=0.50, cache_write=6.25),
    "claude-sonnet-5-5": Price(input=2.00, output=10.00, cache_read=0.10, cache_write=2.50),
    "claude-sonnet-5": Price(input=2.00, output=10.00, cache_read=0.20, cache_write=2.50),
    "claude-sonnet-4-6": Price(input=3.00, output=15.00, cache_read=0.30, cache_write=3.75),
    "claude-sonnet-4-5": Price(input=3.00, output=15.00, cache_read=0.30, cache_write=3.75),
    # Haiku 5.5 bills prompts over 100k tokens at 5x; the research memory keeps prompts far below that
    "claude-haiku-5-5": Price(input=0.10, output=0.50, cache_read=0.01, cache_write=0.125),
    "claude-haiku-4-5": Price(input=1.00, output=5.00, cache_read=0.10, cache_write=1.25),
}


def price_of(model: str, overrides: Optional[Mapping[str, Price]] = None) -> Optional[Price]:
    """The price of `model` (an exact id, or a dated snapshot of one: `claude-haiku-4-5-20251001`)."""
    table = {**PRICES, **(overrides or {})}
    if model in table:
        return table[model]
    prefixes = [name for name in table if model.startswith(name + "-") and model[len(name) + 1:].isdigit()]
    return table[max(prefixes, key=len)] if prefixes else None


# ---------------------------------------------------------------------------- usage


@dataclass(frozen=True)
class Usage:
    """Tokens one proposal used (every request it made), and their cost; None: the price is unknown.

    `input_tokens` counts uncached input only; cache reads and writes are counted apart, as the
    providers bill them. `checks` and `check_seconds`: the agent's `check` tool runs of its code (compute spent
    on this machine, not billed by the provider)."""

    model: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    requests: int = 0
    cost_usd: Optional[float] = 0.0
    checks: int = 0
    check_seconds: float = 0.0

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens + self.cache_read_tokens + self.cache_write_tokens

    def __add__(self, other: "Usage") -> "Usage":
        cost = None if self.cost_usd is None or other.cost_usd is None else self.cost_usd + other.cost_usd
        return Usage(self.model or other.model, self.input_tokens + other.input_tokens,
                     self.output_tokens + other.output_tokens, self.cache_read_tokens + other.cache_read_tokens,
                     self.cache_write_tokens + other.cache_write_tokens, self.requests + other.requests, cost,
                     self.checks + other.checks, self.check_seconds + other.check_seconds)

    def as_dict(self) -> dict:
        return {"model": self.model, "input_tokens": self.input_tokens, "output_tokens": self.output_tokens,
                "cache_read_tokens": self.cache_read_tokens, "cache_write_tokens": self.cache_write_tokens,
                "requests": self.requests, "cost_usd": self.cost_usd, "checks": self.checks,
                "check_seconds": self.check_seconds}


def priced(model: str, input_tokens: int = 0, output_tokens: int = 0, cache_read_tokens: int = 0,
           cache_write_tokens: int = 0, requests: int = 1, overrides: Optional[Mapping[str, Price]] = None) -> Usage:
    """The usage of one request, with its cost from the price table (None for an unknown model)."""
    price = price_of(model, overrides)
    cost = None
    if price is not None:
        read = price.input if price.cache_read is None else price.cache_read
        write = price.input if price.cache_write is None else price.cache_write
        cost = (input_tokens * price.input + output_tokens * price.output + cache_read_tokens * read
                + cache_write_tokens * write) / 1e6
    return Usage(model, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, requests, cost)


def with_cost(usage: Usage, cost_usd: Optional[float]) -> Usage:
    return replace(usage, cost_usd=cost_usd)


def dollars(cost: Optional[float]) -> str:
    return "unknown" if cost is None else f"${cost:.4f}" if cost < 1 else f"${cost:.2f}"
