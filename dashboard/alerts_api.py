"""/api/v1/alerts: alert rules per org (list, create, read with state and history, update, delete, test)."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from dashboard.alerts import Alerts, RuleError
from ingest.auth import authenticate
from ingest.errors import IngestError, NotFound
from storage.controlplane import KeyCache

MAX_RULE_BYTES = 64 << 10


async def _json(request: Request) -> Any:
    raw = await request.body()
    if len(raw) > MAX_RULE_BYTES:
        raise IngestError(f"a rule definition is at most {MAX_RULE_BYTES} bytes")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise IngestError("the body is not valid JSON") from None


def routes(*, keys: KeyCache, alerts: Alerts) -> list[Route]:
    async def list_rules(request: Request) -> Response:
        p = await authenticate(keys, request.headers)
        return JSONResponse({"data": await asyncio.to_thread(alerts.list_rules, p.org_id)})

    async def create_rule(request: Request) -> Response:
        p = await authenticate(keys, request.headers)
        body = await _json(request)
        try:
            rule = await asyncio.to_thread(alerts.create, p.org_id, body)
        except RuleError as exc:
            raise IngestError(str(exc)) from None
        return JSONResponse(rule, status_code=201)

    async def get_rule(request: Request) -> Response:
        p = await authenticate(keys, request.headers)
        rule = await asyncio.to_thread(alerts.get, p.org_id, request.path_params["id"])
        if rule is None:
            raise NotFound(f"no alert rule {request.path_params['id']!r} in this org")
        return JSONResponse(rule)

    async def update_rule(request: Request) -> Response:
        p = await authenticate(keys, request.headers)
        body = await _json(request)
        try:
            rule = await asyncio.to_thread(alerts.update, p.org_id, request.path_params["id"], body)
        except RuleError as exc:
            raise IngestError(str(exc)) from None
        if rule is None:
            raise NotFound(f"no alert rule {request.path_params['id']!r} in this org")
        return JSONResponse(rule)

    async def delete_rule(request: Request) -> Response:
        p = await authenticate(keys, request.headers)
        if not await asyncio.to_thread(alerts.delete, p.org_id, request.path_params["id"]):
            raise NotFound(f"no alert rule {request.path_params['id']!r} in this org")
        return Response(status_code=204)

    async def test_rule(request: Request) -> Response:
        p = await authenticate(keys, request.headers)
        results = await asyncio.to_thread(alerts.send_test, p.org_id, request.path_params["id"])
        if results is None:
            raise NotFound(f"no alert rule {request.path_params['id']!r} in this org")
        return JSONResponse({"results": results})

    return [
        Route("/api/v1/alerts", list_rules, methods=["GET"]),
        Route("/api/v1/alerts", create_rule, methods=["POST"]),
        Route("/api/v1/alerts/{id}", get_rule, methods=["GET"]),
        Route("/api/v1/alerts/{id}", update_rule, methods=["PATCH"]),
        Route("/api/v1/alerts/{id}", delete_rule, methods=["DELETE"]),
        Route("/api/v1/alerts/{id}/test", test_rule, methods=["POST"]),
    ]
