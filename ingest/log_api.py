"""POST /api/v1/logs: llmlens's own event format (JSON array or JSONL), acknowledged once events are in the spool."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from ingest import helicone_log
from ingest.auth import authenticate
from ingest.costing import price
from ingest.errors import IngestError, PayloadTooLarge
from ingest.event import EventError, RequestEvent, event_from_api
from ingest.http import read_body, submit_durably
from ingest.writer import Writer
from pricing.prices import PriceBook, nanos_from_usd
from storage.controlplane import KeyCache, Principal

MAX_EVENTS = 10_000


def parse_items(body: bytes) -> list[Any]:
    """A JSON array, a single object, or JSON Lines."""
    text = body.strip()
    if not text:
        raise IngestError("the body is empty; expected a JSON array of events or JSON Lines")
    try:
        if text[:1] == b"[":
            items = orjson.loads(text)
        else:
            items = [orjson.loads(line) for line in text.splitlines() if line.strip()]
    except orjson.JSONDecodeError as exc:
        raise IngestError(f"the body is not valid JSON: {exc}") from None
    if not isinstance(items, list):
        raise IngestError("expected a JSON array of events")
    return items


def events_from_items(
    items: list[Any], *, principal: Principal, prices: PriceBook, max_body: int, now: datetime
) -> tuple[list[RequestEvent], list[dict[str, Any]]]:
    """Events from items in llmlens's own format or Helicone's async-log format; errors by index."""
    events: list[RequestEvent] = []
    errors: list[dict[str, Any]] = []
    for index, item in enumerate(items):
        try:
            if isinstance(item, dict) and "providerRequest" in item:
                url = item["providerRequest"].get("url", "") if isinstance(item["providerRequest"], dict) else ""
                ev = helicone_log.build_event(
                    item, route_provider=helicone_log.provider_of_url(url if isinstance(url, str) else ""),
                    http_headers=[], principal=principal, raw=orjson.dumps(item), max_body=max_body, now=now)
            else:
                cost = None
                if isinstance(item, dict) and item.get("cost_usd") is not None:
                    try:
                        cost = nanos_from_usd(item["cost_usd"])
                    except (ValueError, TypeError, ArithmeticError):
                        raise EventError(f"cost_usd {item['cost_usd']!r} is not a non-negative decimal of at most 1e9 USD") from None
                ev = event_from_api(item, org_id=principal.org_id, api_key_id=principal.key_id, now=now, cost_nanos=cost)
            price(prices, ev)
            events.append(ev)
        except (EventError, IngestError) as exc:
            errors.append({"index": index, "error": str(exc)})
    return events, errors


def routes(*, keys: KeyCache, writer: Writer, prices: PriceBook, max_bytes: int, max_body_bytes: int) -> list[Route]:
    async def post_logs(request: Request) -> JSONResponse:
        principal = await authenticate(keys, request.headers)
        items = parse_items(await read_body(request, max_bytes))
        if len(items) > MAX_EVENTS:
            raise PayloadTooLarge(f"{len(items)} events in one request; the limit is {MAX_EVENTS}")
        events, errors = events_from_items(items, principal=principal, prices=prices, max_body=max_body_bytes,
                                           now=datetime.now(UTC))
        if not events:
            raise IngestError("no valid events in the body", extra={"errors": errors})
        await submit_durably(writer, events, "api")
        return JSONResponse({"accepted": len(events), "errors": errors}, status_code=202)

    return [Route("/api/v1/logs", post_logs, methods=["POST"])]
