"""Dashboard pages (Jinja2 + htmx + Plotly) and their JSON twins; every page is scoped to the signed-in user's org."""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import AsyncIterator, Awaitable, Callable
from decimal import Decimal
from html import escape
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import orjson
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from dashboard import alerts_pages, charts, panels, prompt_pages, queries, session_pages
from dashboard.alerts import Alerts
from dashboard.web_auth import COOKIE, Sessions, WebUser
from ingest import usage
from ingest.auth import authenticate
from ingest.errors import IngestError, NotFound
from ingest.limits import Limits
from pricing.prices import PriceBook, nanos_from_usd, usd_from_nanos
from storage import clickhouse
from storage.clickhouse import ClickHouse
from storage.controlplane import ControlPlane, ControlPlaneError, KeyCache

HERE = Path(__file__).resolve().parent
# Rows per keyset page of an export: 5,000 streams 2.5x faster than 1,000 at 10M events (bench/dashboard_latency.py)
# for a few MB more held at once.
EXPORT_PAGE = 5000
PAGE_FILTERS = {"model", "provider", "status_class", "user_id", "api_key_id", "session_id", "prompt_id"}
env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(default=True))
env.filters["json"] = lambda v: orjson.dumps(v, option=orjson.OPT_INDENT_2).decode()


def money(usd: str | None) -> str:
    """For reading: cents above a dollar, four significant digits below; the exact value goes in a title."""
    if usd is None:
        return "unknown"
    from decimal import Decimal

    d = Decimal(usd)
    if d >= 1 or d == 0:
        return f"${d:,.2f}"
    rounded = Decimal(f"{d:.4g}")  # four significant digits, then plain notation: $0.01808, $0.00001808
    return "$" + format(rounded, "f").rstrip("0").rstrip(".")


env.filters["money"] = money


def _htmx_version() -> str:
    return next(HERE.joinpath("static").glob("htmx-*.min.js")).name


def view_filters(request: Request, extra: frozenset[str] = frozenset()) -> tuple[queries.Filters, dict[str, Any]]:
    """Global range and filters from the URL (so a view can be shared); `state` re-renders the controls.

    `extra` names the view's own parameters, read by the caller.
    """
    qp = request.query_params
    rng = qp.get("range", "24h")
    allowed = PAGE_FILTERS | {"range", "start", "end", "cursor", "key", "live", "sort", "property", "a", "b", "_trace"} | extra
    unknown = [k for k in qp if k not in allowed and not k.startswith(("property.", "score."))]
    if unknown:
        raise IngestError(f"unknown filter {unknown[0]!r}")
    picked = {k: v for k, v in qp.multi_items()
              if (k in PAGE_FILTERS or k.startswith(("property.", "score.")) or k in ("start", "end")) and v}
    # a free-text "property" box: "team=search"
    prop = qp.get("property", "")
    if "=" in prop:
        k, _, v = prop.partition("=")
        picked[f"property.{k.strip().lower()}"] = v.strip()
    try:
        f = queries.parse_filters(picked, allowed=PAGE_FILTERS | {"start", "end"})
    except queries.QueryError as exc:
        raise IngestError(str(exc)) from None
    if rng == "custom" and f.start and f.end:
        w = panels.Window(f.start, f.end)
    else:
        w = panels.window(rng)
        f.start, f.end = w.start, w.end
    state = {"range": rng, "filters": picked, "query": urlencode([(k, v) for k, v in qp.multi_items() if k != "cursor"])}
    return f, {"window": w, **state}


def with_trace(resp: Response, trace: list[tuple[str, int, float]]) -> Response:
    """?_trace=1: the ClickHouse queries behind an HTML page (name, rows, ms), listed at its foot."""
    if not isinstance(resp, HTMLResponse):
        return resp
    rows = "".join(f"<tr><td>{escape(name)}</td><td>{n}</td><td>{seconds * 1000:.1f}</td></tr>" for name, n, seconds in trace)
    table = (f'<section class="trace" id="query-trace"><h3>Queries behind this page ({len(trace)}, '
             f'{sum(t[2] for t in trace) * 1000:.1f} ms)</h3><table><tr><th>query</th><th>rows</th><th>ms</th></tr>'
             f"{rows}</table></section>")
    body = bytes(resp.body).decode()
    body = body.replace("</main>", table + "</main>", 1) if "</main>" in body else body + table
    return HTMLResponse(body, status_code=resp.status_code, headers={
        k: v for k, v in resp.headers.items() if k.lower() not in ("content-length", "content-type")})


def breakdown(prices: PriceBook, item: dict[str, Any]) -> list[tuple[str, int, str]] | None:
    """Cost by token type (label, tokens, USD) from the price llmlens uses for the model; None without a price."""
    price = prices.lookup(item["provider"], item["model"]) if item.get("model") else None
    if price is None or item.get("cost_usd") is None:
        return None
    read, write = item["cache_read_tokens"], item["cache_write_tokens"]
    uncached = max(item["prompt_tokens"] - read - write, 0)
    inp = price.input_per_mtok or Decimal(0)
    parts = [("input", uncached, inp), ("cache read", read, price.cache_read_per_mtok if price.cache_read_per_mtok is not None else inp),
             ("cache write", write, price.cache_write_per_mtok if price.cache_write_per_mtok is not None else inp),
             ("output", item["completion_tokens"], price.output_per_mtok or Decimal(0))]
    return [(label, n, format((Decimal(n) * rate / 10**6).normalize(), "f")) for label, n, rate in parts if n]


def routes(*, ch: ClickHouse, control: ControlPlane, keys: KeyCache, sessions: Sessions, base_url: str,
           prices: PriceBook, limits: Limits, alerts: Alerts) -> list[Route]:
    def render(name: str, request: Request, user: WebUser | None, *, status: int = 200, **ctx: Any) -> HTMLResponse:
        """A page (or, for the filter form's htmx swap, its content block alone); `status` 400 re-shows a form with its error."""
        template = env.get_template(name)
        values = {"request": request, "user": user, "htmx": _htmx_version(), "base_url": base_url, **ctx}
        if request.headers.get("hx-request") and request.headers.get("hx-target") == "panels" and "content" in template.blocks:
            # the filter form swaps #panels: send the page's content alone, not the layout around it
            return HTMLResponse("".join(template.blocks["content"](template.new_context(values))), status_code=status)
        return HTMLResponse(template.render(**values), status_code=status)

    def page(handler: Callable[[Request, WebUser], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        async def guarded(request: Request) -> Response:
            user = sessions.read(request.cookies.get(COOKIE))
            if user is None:
                target = "/login?next=" + quote(request.url.path + ("?" + request.url.query if request.url.query else ""))
                if request.headers.get("hx-request"):
                    return Response(status_code=204, headers={"HX-Redirect": target})
                return RedirectResponse(target, status_code=303)
            if request.method == "POST":
                form = await request.form()
                if not sessions.csrf_ok(user, str(form.get("csrf", "")) or None):
                    return HTMLResponse("This form has expired or did not come from llmlens; go back and try again.",
                                        status_code=403)
            if "_trace" not in request.query_params:
                return await handler(request, user)
            with clickhouse.tracing() as trace:
                resp = await handler(request, user)
            return with_trace(resp, trace)
        return guarded

    async def q(fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        return await asyncio.to_thread(fn, *args, **kw)

    # --- login ---------------------------------------------------------------------------------------
    async def login(request: Request) -> Response:
        nxt = request.query_params.get("next", "/")
        if request.method == "GET":
            token = request.cookies.get("llmlens_login_csrf") or Sessions.new_form_token()
            resp = render("login.html", request, None, next=nxt, csrf=token, error=None)
            resp.set_cookie("llmlens_login_csrf", token, httponly=True, samesite="strict")
            return resp
        form = await request.form()
        token = request.cookies.get("llmlens_login_csrf", "")
        if not token or token != form.get("csrf"):
            return HTMLResponse("The login form expired; reload the page.", status_code=403)
        email = str(form.get("email", "")).strip().lower()
        who = f"{request.client.host if request.client else '?'}|{email}"
        if not sessions.allow_login(who):
            resp = render("login.html", request, None, next=nxt, csrf=token,
                          error="Too many failed attempts; wait a few minutes and try again.")
            resp.status_code = 429
            return resp
        user = await q(control.verify_user, email, str(form.get("password", "")))
        if user is None:
            sessions.failed_login(who)
            resp = render("login.html", request, None, next=nxt, csrf=token, error="Wrong email or password.")
            resp.status_code = 401
            return resp
        dest = nxt if nxt.startswith("/") and not nxt.startswith("//") else "/"
        redirect = RedirectResponse(dest, status_code=303)
        redirect.set_cookie(COOKIE, sessions.issue(user), httponly=True, samesite="lax", max_age=14 * 24 * 3600)
        return redirect

    async def logout(request: Request, user: WebUser) -> Response:
        resp = RedirectResponse("/login", status_code=303)
        resp.delete_cookie(COOKIE)
        return resp

    async def setup(request: Request) -> Response:
        token = request.path_params["token"]
        if sessions.setup_token is None or await q(control.user_count) > 0:
            return HTMLResponse("Setup is done; sign in instead.", status_code=404)
        if request.method == "GET":
            return render("setup.html", request, None, token=token, error=None)
        form = await request.form()
        if not sessions.use_setup_token(token):
            return HTMLResponse("This setup link is not valid.", status_code=404)
        try:
            await q(control.create_user, str(form.get("email", "")), str(form.get("password", "")))
        except ControlPlaneError as exc:
            sessions.setup_token = token
            return render("setup.html", request, None, token=token, error=str(exc))
        return RedirectResponse("/login", status_code=303)

    # --- overview ------------------------------------------------------------------------------------
    async def overview_data(org_id: str, f: queries.Filters, w: panels.Window) -> dict[str, Any]:
        kpis, points, models, users, keys_ = await asyncio.gather(
            q(panels.kpis, ch, org_id, f), q(panels.series, ch, org_id, f, w),
            q(panels.top, ch, org_id, f, "model"), q(panels.top, ch, org_id, f, "user"), q(panels.property_keys, ch, org_id, f))
        prop_top = await q(panels.property_values, ch, org_id, f, keys_[0]) if keys_ else []
        return {"kpis": kpis, "series": points, "top_models": models, "top_users": users,
                "top_property": {"key": keys_[0] if keys_ else None, "values": prop_top[:10]}}

    async def overview(request: Request, user: WebUser) -> Response:
        f, state = view_filters(request)
        data = await overview_data(user.org_id, f, state["window"])
        figs = {"cost": charts.cost_series(data["series"]), "requests": charts.request_series(data["series"]),
                "latency": charts.latency_series(data["series"]), "models": charts.bars("Top models by cost", data["top_models"]),
                "users": charts.bars("Top users by cost", data["top_users"])}
        return render("overview.html", request, user, state=state, data=data, figs=figs, active="overview")

    async def api_overview(request: Request) -> Response:
        principal = await authenticate(keys, request.headers)
        f, state = view_filters(request)
        return JSONResponse(await overview_data(principal.org_id, f, state["window"]))

    # --- requests ------------------------------------------------------------------------------------
    async def requests_page(request: Request, user: WebUser) -> Response:
        f, state = view_filters(request)
        cursor = request.query_params.get("cursor")
        try:
            rows, next_cursor = await q(queries.list_requests, ch, user.org_id, f, limit=50, cursor=cursor)
        except queries.QueryError as exc:
            raise IngestError(str(exc)) from None
        sort = request.query_params.get("sort", "time")
        if sort in ("cost", "latency", "tokens"):  # orders the page shown; pagination stays by time
            keyf = {"cost": lambda r: float(r["cost_usd"] or 0), "latency": lambda r: r["latency_ms"],
                    "tokens": lambda r: r["prompt_tokens"] + r["completion_tokens"]}[sort]
            rows.sort(key=keyf, reverse=True)
        name = "_request_rows.html" if request.headers.get("hx-request") and request.headers.get("hx-target") == "rows" else "requests.html"
        return render(name, request, user, state=state, rows=rows, next_cursor=next_cursor, sort=sort, active="requests")

    async def request_detail(request: Request, user: WebUser) -> Response:
        item = await q(queries.get_request, ch, user.org_id, request.path_params["request_id"])
        if item is None:
            raise NotFound("no such request in this org")
        return render("request.html", request, user, item=item, view=readable(item), costs=breakdown(prices, item),
                      active="requests")

    async def export(request: Request, user: WebUser) -> Response:
        f, _ = view_filters(request)
        fmt = request.path_params["fmt"]
        columns = ["request_id", "created_at", "provider", "model", "path", "status", "latency_ms", "ttft_ms",
                   "prompt_tokens", "completion_tokens", "cache_read_tokens", "cache_write_tokens", "cost_usd",
                   "user_id", "session_id", "session_path", "session_name", "prompt_id", "prompt_version",
                   "properties", "source", "stream", "cache_hit", "error"]

        async def rows() -> AsyncIterator[bytes]:
            if fmt == "csv":
                yield (",".join(columns) + "\r\n").encode()
            cursor = None
            while True:  # keyset pages: memory stays flat whatever the size of the set
                page, cursor = await q(queries.list_requests, ch, user.org_id, f, limit=EXPORT_PAGE, cursor=cursor)
                buf = io.StringIO()
                if fmt == "csv":
                    w = csv.writer(buf)
                    for r in page:
                        w.writerow([orjson.dumps(r[c]).decode() if c == "properties" else ("" if r[c] is None else r[c])
                                    for c in columns])
                    yield buf.getvalue().encode()
                else:
                    yield b"".join(orjson.dumps(r) + b"\n" for r in page)
                if cursor is None:
                    return

        media = "text/csv; charset=utf-8" if fmt == "csv" else "application/x-ndjson"
        return StreamingResponse(rows(), media_type=media,
                                 headers={"Content-Disposition": f'attachment; filename="llmlens-requests.{fmt}"'})

    # --- properties and users ------------------------------------------------------------------------
    async def properties_page(request: Request, user: WebUser) -> Response:
        f, state = view_filters(request)
        keys_ = await q(panels.property_keys, ch, user.org_id, f)
        key = request.query_params.get("key") or (keys_[0] if keys_ else None)
        values: list[dict[str, Any]] = []
        points: list[dict[str, Any]] = []
        if key:
            values, points = await asyncio.gather(q(panels.property_values, ch, user.org_id, f, key),
                                                  q(panels.property_series, ch, user.org_id, f, key, state["window"]))
        figs = {"values": charts.bars(f"Cost by {key}", values), "series": charts.stacked_cost(points)} if key else {}
        return render("properties.html", request, user, state=state, keys=keys_, key=key, values=values, figs=figs,
                      active="properties")

    async def api_properties(request: Request) -> Response:
        principal = await authenticate(keys, request.headers)
        f, state = view_filters(request)
        key = request.path_params.get("key")
        if key is None:
            return JSONResponse({"keys": await q(panels.property_keys, ch, principal.org_id, f)})
        return JSONResponse({"key": key, "values": await q(panels.property_values, ch, principal.org_id, f, key),
                             "series": await q(panels.property_series, ch, principal.org_id, f, key, state["window"])})

    async def users_page(request: Request, user: WebUser) -> Response:
        f, state = view_filters(request)
        rows = await q(panels.users, ch, user.org_id, f)
        return render("users.html", request, user, state=state, rows=rows, active="users")

    async def api_users(request: Request) -> Response:
        principal = await authenticate(keys, request.headers)
        f, _ = view_filters(request)
        return JSONResponse({"data": await q(panels.users, ch, principal.org_id, f)})

    async def api_scores(request: Request) -> Response:
        principal = await authenticate(keys, request.headers)
        f, _ = view_filters(request, frozenset({"by"}))
        by = request.query_params.get("by", "")
        if by not in panels.SCORE_GROUPS and not (by.startswith("property.") and by != "property."):
            raise IngestError(f"by must be {panels.score_groupings()}, not {by!r}")
        return JSONResponse({"by": by, "data": await q(panels.scores_by, ch, principal.org_id, f, by)})

    # --- settings ------------------------------------------------------------------------------------
    async def settings_page(request: Request, user: WebUser, created: str | None = None, error: str | None = None) -> Response:
        api_keys = await q(control.list_keys, user.org_id)
        members = await q(control.pg.fetchall, "SELECT email, role, created_at FROM users WHERE org_id = %s ORDER BY email",
                          (user.org_id,))
        policies = await q(control.pg.fetchall, "SELECT id, name, policy, api_key_id FROM rate_limit_policies"
                           " WHERE org_id = %s ORDER BY created_at", (user.org_id,))
        budgets = await q(control.pg.fetchall, "SELECT b.*, coalesce(s.spent_nanos, 0) AS spent FROM budgets b"
                          " LEFT JOIN budget_spend s ON s.budget_id = b.id AND s.period_start = CASE WHEN b.period = 'day'"
                          " THEN date_trunc('day', now() AT TIME ZONE 'UTC') ELSE date_trunc('month', now() AT TIME ZONE 'UTC') END"
                          " AT TIME ZONE 'UTC' WHERE b.org_id = %s ORDER BY b.created_at", (user.org_id,))
        return render("settings.html", request, user, api_keys=api_keys, members=members, created=created, error=error,
                      policies=policies, budgets=[{**b, "limit_usd": usd_from_nanos(b["limit_nanos"]),
                                                  "spent_usd": usd_from_nanos(int(b["spent"]))} for b in budgets],
                      active="settings", status=400 if error else 200)

    async def add_policy(request: Request, user: WebUser) -> Response:
        form = await request.form()
        key_id = str(form.get("api_key_id") or "") or None
        if key_id and key_id not in {k.id for k in await q(control.list_keys, user.org_id)}:
            raise NotFound("no such key in this org")
        try:
            await q(limits.add_policy, user.org_id, str(form.get("name") or form.get("policy") or ""),
                    str(form.get("policy", "")), key_id)
        except IngestError as exc:
            return await settings_page(request, user, error=exc.message)
        return RedirectResponse("/settings", status_code=303)

    async def add_budget(request: Request, user: WebUser) -> Response:
        form = await request.form()
        scope, period = str(form.get("scope", "")), str(form.get("period", ""))
        value, prop = str(form.get("value", "")).strip(), str(form.get("property", "")).strip().lower()
        try:
            limit = nanos_from_usd(str(form.get("limit_usd", "")))
        except (ValueError, ArithmeticError):
            return await settings_page(request, user, error="the limit must be a non-negative amount of USD")
        if scope not in ("key", "user", "property") or period not in ("day", "month") or not value or (scope == "property" and not prop):
            return await settings_page(request, user, error="a budget needs a scope, a value (and a property name for "
                                                            "property budgets) and a period")
        await q(limits.add_budget, user.org_id, scope, prop, value, period, limit)
        return RedirectResponse("/settings", status_code=303)

    async def delete_rule(request: Request, user: WebUser) -> Response:
        table = {"rate-limits": "rate_limit_policies", "budgets": "budgets"}[request.path_params["kind"]]
        n = await q(control.pg.execute, f"DELETE FROM {table} WHERE id = %s AND org_id = %s",
                    (request.path_params["id"], user.org_id))
        if not n:
            raise NotFound("no such rule in this org")
        limits.forget(user.org_id)
        return RedirectResponse("/settings", status_code=303)

    async def create_key(request: Request, user: WebUser) -> Response:
        form = await request.form()
        try:
            _, plaintext = await q(control.create_key, str(form.get("name", "")), user.org_id)
        except ControlPlaneError as exc:
            raise IngestError(str(exc)) from None
        return await settings_page(request, user, created=plaintext)

    async def revoke_key(request: Request, user: WebUser) -> Response:
        if not await q(control.revoke_key, request.path_params["key_id"], user.org_id):
            raise NotFound("no such active key in this org")
        keys._entries.clear()  # the revoke takes effect at once in this process
        return RedirectResponse("/settings", status_code=303)

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name == "plotly.min.js":  # shipped inside the plotly Python package; not copied into this repository
            import plotly

            return FileResponse(Path(plotly.__file__).parent / "package_data" / "plotly.min.js",
                                headers={"Cache-Control": "public, max-age=86400"})
        path = HERE / "static" / name
        if "/" in name or not path.is_file():
            raise NotFound("no such file")
        return FileResponse(path, headers={"Cache-Control": "public, max-age=86400"})

    return [
        Route("/login", login, methods=["GET", "POST"]),
        Route("/logout", page(logout), methods=["POST"]),
        Route("/setup/{token}", setup, methods=["GET", "POST"]),
        Route("/", page(overview)),
        Route("/requests", page(requests_page)),
        Route("/requests/export.{fmt:str}", page(export)),
        Route("/requests/{request_id}", page(request_detail)),
        Route("/properties", page(properties_page)),
        Route("/users", page(users_page)),
        Route("/settings", page(settings_page)),
        Route("/settings/keys", page(create_key), methods=["POST"]),
        Route("/settings/keys/{key_id}/revoke", page(revoke_key), methods=["POST"]),
        Route("/settings/rate-limits", page(add_policy), methods=["POST"]),
        Route("/settings/budgets", page(add_budget), methods=["POST"]),
        Route("/settings/{kind:str}/{id}/delete", page(delete_rule), methods=["POST"]),
        *alerts_pages.routes(render=render, page=page, q=q, alerts=alerts),
        *session_pages.routes(render=render, page=page, q=q, view_filters=view_filters, ch=ch, keys=keys),
        *prompt_pages.routes(render=render, page=page, q=q, view_filters=view_filters, ch=ch, pg=control.pg, keys=keys),
        Route("/static/{name}", static),
        Route("/api/v1/overview", api_overview),
        Route("/api/v1/properties", api_properties),
        Route("/api/v1/properties/{key}", api_properties),
        Route("/api/v1/users", api_users),
        Route("/api/v1/scores", api_scores),
    ]


def readable(item: dict[str, Any]) -> dict[str, Any]:
    """Request and response made readable: chat messages as a transcript, streams reassembled, JSON pretty."""
    def parse(text: str) -> Any:
        try:
            return orjson.loads(text) if text[:1] in ("{", "[") else None
        except orjson.JSONDecodeError:
            return None

    req = parse(item.get("request_body") or "")
    resp = parse(item.get("response_body") or "")
    if resp is None and item.get("stream") and item.get("response_body"):
        resp = usage.reassemble_stream(item["response_body"])
    transcript: list[dict[str, Any]] = []
    if isinstance(req, dict):
        if isinstance(req.get("system"), str):
            transcript.append({"role": "system", "content": req["system"]})
        for m in req.get("messages") or ([] if not isinstance(req.get("input"), str) else [{"role": "user", "content": req["input"]}]):
            if isinstance(m, dict):
                transcript.append({"role": m.get("role", "?"), "content": _text(m.get("content")),
                                   "tool_calls": m.get("tool_calls")})
    answer: list[dict[str, Any]] = []
    if isinstance(resp, dict):
        for c in resp.get("choices") or []:
            msg = c.get("message") or {}
            answer.append({"role": msg.get("role", "assistant"), "content": _text(msg.get("content")),
                           "tool_calls": msg.get("tool_calls")})
        if isinstance(resp.get("content"), list):
            answer.append({"role": "assistant", "content": _text(resp["content"]),
                           "tool_calls": [b for b in resp["content"] if isinstance(b, dict) and b.get("type") == "tool_use"] or None})
        for o in resp.get("output") or []:
            if isinstance(o, dict) and o.get("type") == "message":
                answer.append({"role": "assistant", "content": _text(o.get("content")), "tool_calls": None})
    return {"request": req, "response": resp, "transcript": transcript, "answer": answer}


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(str(p.get("text") or p.get("content") or "") for p in content if isinstance(p, dict))
    return "" if content is None else str(content)
