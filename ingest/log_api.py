"""POST /api/v1/logs: llmlens's own event format (JSON array or JSONL), acknowledged once events are in the spool."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from ingest.auth import authenticate
from ingest.costing import price
from ingest.errors import IngestError, PayloadTooLarge, SpoolFullError
from ingest.event import EventError, RequestEvent, event_from_api
from ingest.spool import SpoolFull
from ingest.writer import Writer
from pricing.prices import PriceBook, nanos_from_usd
from storage.controlplane import KeyCache

MAX_EVENTS = 10_000


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) anything over `limit` bytes before reading it all."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the body is {declared} bytes; the limit is {limit} bytes (LLMLENS_MAX_LOG_BYTES)")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the body is over the limit of {limit} bytes (LLMLENS_MAX_LOG_BYTES)")
        chunks.append(chunk)
    body = b"".join(chunks)
    if request.headers.get("content-encoding", "").lower() == "gzip":
        body = gunzip(body, limit)
    return body


def gunzip(body: bytes, limit: int) -> bytes:
    import zlib

    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = d.decompress(body, limit + 1)
    except zlib.error:
        raise IngestError("the body is not valid gzip") from None
    if len(out) > limit:
        raise PayloadTooLarge(f"the decompressed body is over the limit of {limit} bytes (LLMLENS_MAX_LOG_BYTES)")
    return out


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


async def submit_durably(writer: Writer, events: list[RequestEvent], source: str) -> None:
    try:
        await writer.submit(events, source=source)
    except SpoolFull:
        raise SpoolFullError() from None


def routes(*, keys: KeyCache, writer: Writer, prices: PriceBook, max_bytes: int) -> list[Route]:
    async def post_logs(request: Request) -> JSONResponse:
        principal = await authenticate(keys, request.headers)
        items = parse_items(await read_body(request, max_bytes))
        if len(items) > MAX_EVENTS:
            raise PayloadTooLarge(f"{len(items)} events in one request; the limit is {MAX_EVENTS}")
        now = datetime.now(UTC)
        events: list[RequestEvent] = []
        errors: list[dict[str, Any]] = []
        for index, item in enumerate(items):
            try:
                cost = None
                if isinstance(item, dict) and item.get("cost_usd") is not None:
                    try:
                        cost = nanos_from_usd(item["cost_usd"])
                    except (ValueError, TypeError, ArithmeticError):
                        raise EventError(f"cost_usd {item['cost_usd']!r} is not a non-negative decimal") from None
                ev = event_from_api(item, org_id=principal.org_id, api_key_id=principal.key_id, now=now, cost_nanos=cost)
                price(prices, ev)
                events.append(ev)
            except EventError as exc:
                errors.append({"index": index, "error": str(exc)})
        if not events:
            raise IngestError("no valid events in the body", extra={"errors": errors})
        await submit_durably(writer, events, "api")
        return JSONResponse({"accepted": len(events), "errors": errors}, status_code=202)

    return [Route("/api/v1/logs", post_logs, methods=["POST"])]
