"""The read side of the JSON API (/api/v1/requests...), authenticated by API key and scoped to its org."""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from dashboard import queries
from dashboard.coverage import coverage
from ingest.auth import authenticate
from ingest.errors import IngestError, NotFound
from storage.clickhouse import ClickHouse
from storage.controlplane import KeyCache


def routes(*, keys: KeyCache, ch: ClickHouse) -> list[Route]:
    async def list_requests(request: Request) -> JSONResponse:
        principal = await authenticate(keys, request.headers)
        try:
            filters = queries.parse_filters(request.query_params)
            limit = queries.parse_limit(request.query_params.get("limit"))
            cursor = request.query_params.get("cursor")
            if cursor is not None:
                queries.decode_cursor(cursor)
        except queries.QueryError as exc:
            raise IngestError(str(exc)) from None
        data, next_cursor = await asyncio.to_thread(
            queries.list_requests, ch, principal.org_id, filters, limit=limit, cursor=cursor
        )
        return JSONResponse({"data": data, "next_cursor": next_cursor})

    async def get_request(request: Request) -> JSONResponse:
        principal = await authenticate(keys, request.headers)
        request_id = request.path_params["request_id"]
        item = await asyncio.to_thread(queries.get_request, ch, principal.org_id, request_id)
        if item is None:
            raise NotFound(f"no request {request_id!r} in this org")
        return JSONResponse(item)

    async def pricing_coverage(request: Request) -> JSONResponse:
        principal = await authenticate(keys, request.headers)
        try:
            filters = queries.parse_filters(request.query_params)
        except queries.QueryError as exc:
            raise IngestError(str(exc)) from None
        return JSONResponse(await asyncio.to_thread(coverage, ch, principal.org_id, filters))

    return [
        Route("/api/v1/pricing/coverage", pricing_coverage, methods=["GET"]),
        Route("/api/v1/requests", list_requests, methods=["GET"]),
        Route("/api/v1/requests/{request_id}", get_request, methods=["GET"]),
    ]
