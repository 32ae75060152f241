"""Pricing an event at ingest: the one place the write path turns usage into cost."""

from __future__ import annotations

from datetime import datetime

from ingest.event import RequestEvent
from pricing.prices import PriceBook, Usage


def price(prices: PriceBook, ev: RequestEvent) -> None:
    """Set an event's cost from the price book unless it carries its own (an unknown price stays None)."""
    if ev.cost_nanos is not None:
        ev.cost_source = "provided"
    elif ev.model:
        ev.cost_nanos, ev.cost_source = cost_of(prices, ev.provider, ev.model, Usage(
            ev.prompt_tokens, ev.completion_tokens, ev.cache_read_tokens, ev.cache_write_tokens), ev.created_at)


def cost_of(prices: PriceBook, provider: str, model: str, usage: Usage, at: datetime) -> tuple[int | None, str]:
    """(nano-USD, 'registry' | 'override') or (None, '') when no price is known."""
    nanos = prices.cost_nanos(provider, model, usage, at=at)
    if nanos is None:
        return None, ""
    return nanos, prices.source(provider, model)
