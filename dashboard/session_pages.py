"""The Sessions pages (list, per-name stats, distributions; a session's tree and timeline) and their JSON twins."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from dashboard import charts, queries, sessions
from dashboard.web_auth import WebUser
from ingest.auth import authenticate
from ingest.errors import NotFound
from storage.clickhouse import ClickHouse
from storage.controlplane import KeyCache

Handler = Callable[[Request, WebUser], Awaitable[Response]]
Page = Callable[[Handler], Callable[[Request], Awaitable[Response]]]
SHOWN = 200  # rows in the sessions table; the distributions use up to sessions.MAX_SESSIONS


def routes(*, render: Callable[..., HTMLResponse], page: Page, q: Callable[..., Awaitable[Any]],
           view_filters: Callable[[Request], tuple[queries.Filters, dict[str, Any]]], ch: ClickHouse,
           keys: KeyCache) -> list[Route]:
    async def overview(org_id: str, f: queries.Filters) -> dict[str, Any]:
        rows = await q(sessions.list_sessions, ch, org_id, f)
        names = await q(sessions.by_name, ch, org_id, f)
        return {"sessions": rows, "by_name": names}

    async def list_page(request: Request, user: WebUser) -> Response:
        f, state = view_filters(request)
        data = await overview(user.org_id, f)
        rows = data["sessions"]
        figs = {"cost": charts.histogram("Cost per session", [float(r["cost_usd"] or 0) for r in rows], "USD"),
                "duration": charts.histogram("Duration per session", [r["duration_ms"] / 1000 for r in rows], "seconds")}
        return render("sessions.html", request, user, state=state, rows=rows[:SHOWN], total=len(rows),
                      by_name=data["by_name"], figs=figs, active="sessions")

    async def detail_page(request: Request, user: WebUser) -> Response:
        s = await q(sessions.session, ch, user.org_id, request.path_params["session_id"])
        if s is None:
            raise NotFound("no such session in this org")
        return render("session.html", request, user, s=s, label=sessions.label,
                      timeline=charts.timeline(s["timeline"], sessions.label), active="sessions")

    async def api_list(request: Request) -> Response:
        principal = await authenticate(keys, request.headers)
        f, _ = view_filters(request)
        return JSONResponse(await overview(principal.org_id, f))

    async def api_detail(request: Request) -> Response:
        principal = await authenticate(keys, request.headers)
        s = await q(sessions.session, ch, principal.org_id, request.path_params["session_id"])
        if s is None:
            raise NotFound(f"no session {request.path_params['session_id']!r} in this org")
        return JSONResponse(s)

    return [
        Route("/sessions", page(list_page)),
        Route("/sessions/{session_id}", page(detail_page)),
        Route("/api/v1/sessions", api_list, methods=["GET"]),
        Route("/api/v1/sessions/{session_id}", api_detail, methods=["GET"]),
    ]
