"""Cost coverage: how much of the traffic in a time range has no known price, by model."""

from __future__ import annotations

from typing import Any

from dashboard.queries import Filters
from storage.clickhouse import ClickHouse

COVERAGE = """
SELECT provider, model,
       count() AS events,
       countIf(cost_nanos IS NULL) AS unpriced_events,
       sum(prompt_tokens + completion_tokens) AS tokens,
       sumIf(prompt_tokens + completion_tokens, cost_nanos IS NULL) AS unpriced_tokens
FROM request_events FINAL
WHERE {where} AND model != ''
GROUP BY provider, model
ORDER BY unpriced_tokens DESC, unpriced_events DESC, provider, model
"""


def _share(part: int, whole: int) -> float:
    return round(part / whole, 6) if whole else 0.0


def coverage(ch: ClickHouse, org_id: str, filters: Filters) -> dict[str, Any]:
    """Share of events and tokens without a price; only models with unpriced events are listed."""
    where, params = filters.where(org_id)
    rows = ch.query(COVERAGE.replace("{where}", where), params, name="pricing_coverage")
    events = sum(int(r["events"]) for r in rows)
    tokens = sum(int(r["tokens"]) for r in rows)
    unpriced_events = sum(int(r["unpriced_events"]) for r in rows)
    unpriced_tokens = sum(int(r["unpriced_tokens"]) for r in rows)
    return {
        "events": events,
        "unpriced_events": unpriced_events,
        "unpriced_event_share": _share(unpriced_events, events),
        "tokens": tokens,
        "unpriced_tokens": unpriced_tokens,
        "unpriced_token_share": _share(unpriced_tokens, tokens),
        "unpriced_models": [
            {"provider": r["provider"], "model": r["model"], "events": int(r["unpriced_events"]),
             "tokens": int(r["unpriced_tokens"])}
            for r in rows if int(r["unpriced_events"])
        ],
    }
