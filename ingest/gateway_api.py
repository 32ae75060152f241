"""/api/v1/rate-limits and /api/v1/budgets: saved rate-limit policies and hard budgets, per org."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ingest.auth import authenticate
from ingest.errors import IngestError, NotFound
from ingest.limits import Limits, parse_policy
from pricing.prices import nanos_from_usd, usd_from_nanos
from storage.controlplane import KeyCache


async def _json(request: Request) -> dict[str, Any]:
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        raise IngestError("the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise IngestError("expected a JSON object")
    return body


def _str(body: dict[str, Any], name: str, *, required: bool = True) -> str:
    value = body.get(name)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or not value.strip():
        raise IngestError(f"{name} must be a non-empty string")
    return value.strip()


def routes(*, keys: KeyCache, limits: Limits) -> list[Route]:
    pg = limits.pg

    async def list_policies(request: Request) -> Response:
        p = await authenticate(keys, request.headers)
        rows = await asyncio.to_thread(pg.fetchall, "SELECT id, name, policy, api_key_id FROM rate_limit_policies"
                                       " WHERE org_id = %s ORDER BY created_at", (p.org_id,))
        return JSONResponse({"data": rows})

    async def create_policy(request: Request) -> Response:
        p = await authenticate(keys, request.headers)
        body = await _json(request)
        text, name = _str(body, "policy"), _str(body, "name", required=False) or body.get("policy", "")
        parse_policy(text)
        key_id = body.get("api_key_id")
        if key_id is not None:
            owned = await asyncio.to_thread(pg.fetchone, "SELECT 1 AS ok FROM api_keys WHERE id = %s AND org_id = %s",
                                            (key_id, p.org_id))
            if owned is None:
                raise IngestError(f"api_key_id {key_id!r} is not a key of this org")
        row = await asyncio.to_thread(limits.add_policy, p.org_id, name, text, key_id)
        return JSONResponse(row, status_code=201)

    async def list_budgets(request: Request) -> Response:
        p = await authenticate(keys, request.headers)
        rows = await asyncio.to_thread(pg.fetchall, "SELECT id, scope, scope_key, scope_value, period, limit_nanos"
                                       " FROM budgets WHERE org_id = %s ORDER BY created_at", (p.org_id,))
        return JSONResponse({"data": [_budget(r) for r in rows]})

    async def create_budget(request: Request) -> Response:
        p = await authenticate(keys, request.headers)
        body = await _json(request)
        scope = body.get("scope")
        if scope not in ("key", "user", "property"):
            raise IngestError("scope must be 'key', 'user' or 'property'")
        period = body.get("period")
        if period not in ("day", "month"):
            raise IngestError("period must be 'day' or 'month'")
        prop = _str(body, "property") if scope == "property" else ""
        value = _str(body, "value")
        try:
            limit = nanos_from_usd(body.get("limit_usd"))  # type: ignore[arg-type]
        except (ValueError, TypeError, ArithmeticError):
            raise IngestError(f"limit_usd must be a non-negative number of USD, not {body.get('limit_usd')!r}") from None
        b = await asyncio.to_thread(limits.add_budget, p.org_id, scope, prop.lower(), value, period, limit)
        return JSONResponse(_budget({"id": b.id, "scope": b.scope, "scope_key": b.scope_key,
                                     "scope_value": b.scope_value, "period": b.period, "limit_nanos": b.limit_nanos}),
                            status_code=201)

    def deleter(table: str, what: str):  # type: ignore[no-untyped-def]
        async def delete(request: Request) -> Response:
            p = await authenticate(keys, request.headers)
            n = await asyncio.to_thread(pg.execute, f"DELETE FROM {table} WHERE id = %s AND org_id = %s",
                                        (request.path_params["id"], p.org_id))
            if not n:
                raise NotFound(f"no {what} {request.path_params['id']!r} in this org")
            limits.forget(p.org_id)
            return Response(status_code=204)
        return delete

    return [
        Route("/api/v1/rate-limits", list_policies, methods=["GET"]),
        Route("/api/v1/rate-limits", create_policy, methods=["POST"]),
        Route("/api/v1/rate-limits/{id}", deleter("rate_limit_policies", "rate-limit policy"), methods=["DELETE"]),
        Route("/api/v1/budgets", list_budgets, methods=["GET"]),
        Route("/api/v1/budgets", create_budget, methods=["POST"]),
        Route("/api/v1/budgets/{id}", deleter("budgets", "budget"), methods=["DELETE"]),
    ]


def _budget(r: dict[str, Any]) -> dict[str, Any]:
    return {"id": r["id"], "scope": r["scope"], "property": r["scope_key"] or None, "value": r["scope_value"],
            "period": r["period"], "limit_usd": usd_from_nanos(int(r["limit_nanos"]))}
