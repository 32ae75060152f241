"""The Prompts pages (prompt ids, versions with metrics, new versions, side-by-side comparison) and /api/v1/prompts."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

import orjson
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from dashboard import prompts, queries
from dashboard.prompts import PromptError
from dashboard.web_auth import WebUser
from ingest.auth import authenticate
from ingest.errors import IngestError, NotFound
from storage.clickhouse import ClickHouse
from storage.controlplane import KeyCache
from storage.postgres import Postgres

Handler = Callable[[Request, WebUser], Awaitable[Response]]
Page = Callable[[Handler], Callable[[Request], Awaitable[Response]]]
MAX_PROMPT_BYTES = 256 << 10


def prompt_from_form(form: FormData, prompt_id: str | None = None) -> dict[str, Any]:
    def text(name: str) -> str:
        return str(form.get(name, "")).strip()

    messages = [{"role": role, "content": text(role)} for role in ("system", "user") if text(role)]
    body: dict[str, Any] = {"prompt_id": prompt_id or text("prompt_id"), "messages": messages, "model": text("model"),
                            "note": text("note")}
    if text("parameters"):
        try:
            body["parameters"] = orjson.loads(text("parameters"))
        except orjson.JSONDecodeError:
            raise PromptError('parameters must be a JSON object, e.g. {"temperature": 0.2}') from None
    return body


def routes(*, render: Callable[..., HTMLResponse], page: Page, q: Callable[..., Awaitable[Any]],
           view_filters: Callable[[Request], tuple[queries.Filters, dict[str, Any]]], ch: ClickHouse, pg: Postgres,
           keys: KeyCache) -> list[Route]:
    # --- pages -------------------------------------------------------------------------------------------
    async def list_page(request: Request, user: WebUser, error: str | None = None, form: Any = None) -> Response:
        f, state = view_filters(request)
        rows = await q(prompts.list_prompts, ch, pg, user.org_id, f)
        return render("prompts.html", request, user, state=state, rows=rows, error=error, form=form or {},
                      active="prompts", status=400 if error else 200)

    async def create(request: Request, user: WebUser) -> Response:
        form = await request.form()
        try:
            v = await q(prompts.create_version, pg, user.org_id, prompt_from_form(form), user.email)
        except PromptError as exc:
            return await list_page(request, user, error=str(exc), form=form)
        return RedirectResponse(f"/prompts/{quote(v['prompt_id'], safe='')}", status_code=303)

    async def detail(request: Request, user: WebUser, error: str | None = None) -> Response:
        pid = request.path_params["prompt_id"]
        f, state = view_filters(request)
        rows = await q(prompts.versions, ch, pg, user.org_id, pid, f)
        if rows is None:
            raise NotFound("no such prompt in this org")
        latest = next((r["template"] for r in reversed(rows) if r["template"]), None)
        return render("prompt.html", request, user, state=state, prompt_id=pid, rows=rows, latest=latest, error=error,
                      text=prompts.render_template, active="prompts", status=400 if error else 200)

    async def new_version(request: Request, user: WebUser) -> Response:
        pid = request.path_params["prompt_id"]
        form = await request.form()
        try:
            await q(prompts.create_version, pg, user.org_id, prompt_from_form(form, pid), user.email)
        except PromptError as exc:
            return await detail(request, user, error=str(exc))
        return RedirectResponse(f"/prompts/{quote(pid, safe='')}", status_code=303)

    async def compare_page(request: Request, user: WebUser) -> Response:
        pid = request.path_params["prompt_id"]
        f, state = view_filters(request)
        a, b = request.query_params.get("a", ""), request.query_params.get("b", "")
        try:
            result = await q(prompts.compare, ch, pg, user.org_id, pid, a, b, f)
        except PromptError as exc:
            raise IngestError(str(exc)) from None
        if result is None:
            raise NotFound("no such prompt in this org")
        return render("prompt_compare.html", request, user, state=state, c=result, text=prompts.render_template,
                      active="prompts")

    # --- JSON ---------------------------------------------------------------------------------------------
    async def api_list(request: Request) -> Response:
        p = await authenticate(keys, request.headers)
        f, _ = view_filters(request)
        return JSONResponse({"data": await q(prompts.list_prompts, ch, pg, p.org_id, f)})

    async def api_create(request: Request) -> Response:
        p = await authenticate(keys, request.headers)
        raw = await request.body()
        if len(raw) > MAX_PROMPT_BYTES:
            raise IngestError(f"a prompt version is at most {MAX_PROMPT_BYTES} bytes")
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise IngestError("the body is not valid JSON") from None
        try:
            v = await q(prompts.create_version, pg, p.org_id, body, f"api key {p.key_id}")
        except PromptError as exc:
            raise IngestError(str(exc)) from None
        return JSONResponse(v, status_code=201)

    async def api_versions(request: Request) -> Response:
        p = await authenticate(keys, request.headers)
        pid = request.path_params["prompt_id"]
        f, _ = view_filters(request)
        rows = await q(prompts.versions, ch, pg, p.org_id, pid, f)
        if rows is None:
            raise NotFound(f"no prompt {pid!r} in this org")
        return JSONResponse({"prompt_id": pid, "versions": rows})

    async def api_compare(request: Request) -> Response:
        p = await authenticate(keys, request.headers)
        pid = request.path_params["prompt_id"]
        qp = request.query_params
        if not qp.get("a") or not qp.get("b"):
            raise IngestError("compare needs two versions: ?a=<version>&b=<version>")
        f, _ = view_filters(request)
        try:
            result = await q(prompts.compare, ch, pg, p.org_id, pid, qp["a"], qp["b"], f)
        except PromptError as exc:
            raise IngestError(str(exc)) from None
        if result is None:
            raise NotFound(f"no prompt {pid!r} in this org")
        return JSONResponse(result)

    return [
        Route("/prompts", page(list_page), methods=["GET"]),
        Route("/prompts", page(create), methods=["POST"]),
        Route("/prompts/{prompt_id:path}/compare", page(compare_page), methods=["GET"]),
        Route("/prompts/{prompt_id:path}/versions", page(new_version), methods=["POST"]),
        Route("/prompts/{prompt_id:path}", page(detail), methods=["GET"]),
        Route("/api/v1/prompts", api_list, methods=["GET"]),
        Route("/api/v1/prompts", api_create, methods=["POST"]),
        Route("/api/v1/prompts/{prompt_id:path}/versions", api_versions, methods=["GET"]),
        Route("/api/v1/prompts/{prompt_id:path}/compare", api_compare, methods=["GET"]),
    ]
