"""The Alerts page: rules with their current value and state, a form to create and edit them, history, test sends."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from dashboard.alerts import METRICS, Alerts, RuleError
from dashboard.web_auth import WebUser
from ingest.errors import NotFound

Handler = Callable[[Request, WebUser], Awaitable[Response]]
WINDOWS = ["5m", "10m", "15m", "30m", "1h", "6h", "1d", "7d", "30d"]


def rule_from_form(form: FormData) -> dict[str, Any]:
    """The form's fields → the API's rule definition, so both paths share one validator."""
    def text(name: str) -> str:
        return str(form.get(name, "")).strip()

    body: dict[str, Any] = {"name": text("name"), "metric": text("metric"), "comparator": text("comparator") or ">=",
                            "window": text("window") or None, "cooldown": text("cooldown") or "5m",
                            "paused": text("paused") == "on"}
    try:
        body["threshold"] = float(text("threshold"))
    except ValueError:
        body["threshold"] = text("threshold") or None
    body["min_requests"] = int(text("min_requests")) if text("min_requests").isdigit() else (text("min_requests") or 0)
    filt: dict[str, str] = {}
    for part in re.split(r"[,\n]+", text("filter")):
        if part.strip():
            key, sep, value = part.partition("=")
            if not sep:
                raise RuleError(f"filter {part.strip()!r} is not name=value (e.g. model=gpt-4o, property.team=search)")
            filt[key.strip()] = value.strip()
    body["filter"] = filt
    group = text("group_by")
    body["group_by"] = f"property.{text('group_property')}" if group == "property" else (group or None)
    if body["metric"] == "budget_used_pct":
        body["budget_id"] = text("budget_id") or None
    channels: list[dict[str, Any]] = []
    if text("webhook_url"):
        channels.append({"type": "webhook", "url": text("webhook_url")})
    if text("slack_url"):
        channels.append({"type": "slack", "url": text("slack_url")})
    if text("email_to"):
        channels.append({"type": "email", "to": text("email_to")})
    body["channels"] = channels
    return body


def routes(*, render: Callable[..., HTMLResponse], page: Callable[[Handler], Callable[[Request], Awaitable[Response]]],
           q: Callable[..., Awaitable[Any]], alerts: Alerts) -> list[Route]:
    async def context(user: WebUser) -> dict[str, Any]:
        budgets = await q(alerts.pg.fetchall, "SELECT id, scope, scope_key, scope_value, period FROM budgets"
                          " WHERE org_id = %s ORDER BY created_at", (user.org_id,))
        return {"metrics": METRICS, "windows": WINDOWS, "budgets": budgets, "smtp": bool(alerts.smtp_url),
                "active": "alerts"}

    async def list_page(request: Request, user: WebUser, error: str | None = None, form: Any = None) -> Response:
        rules = await q(alerts.list_rules, user.org_id)
        return render("alerts.html", request, user, rules=rules, error=error, form=form or {}, **await context(user),
                      status=400 if error else 200)

    async def create(request: Request, user: WebUser) -> Response:
        form = await request.form()
        try:
            rule = await q(alerts.create, user.org_id, rule_from_form(form))
        except RuleError as exc:
            return await list_page(request, user, error=str(exc), form=form)
        return RedirectResponse(f"/alerts/{rule['id']}", status_code=303)

    async def detail(request: Request, user: WebUser, error: str | None = None, tested: Any = None) -> Response:
        rule = await q(alerts.get, user.org_id, request.path_params["id"])
        if rule is None:
            raise NotFound("no such alert rule in this org")
        return render("alert.html", request, user, rule=rule, error=error, tested=tested, **await context(user),
                      status=400 if error else 200)

    async def edit(request: Request, user: WebUser) -> Response:
        form = await request.form()
        try:
            rule = await q(alerts.update, user.org_id, request.path_params["id"], rule_from_form(form))
        except RuleError as exc:
            return await detail(request, user, error=str(exc))
        if rule is None:
            raise NotFound("no such alert rule in this org")
        return RedirectResponse(f"/alerts/{rule['id']}", status_code=303)

    async def pause(request: Request, user: WebUser) -> Response:
        rule = await q(alerts.rule, user.org_id, request.path_params["id"])
        if rule is None:
            raise NotFound("no such alert rule in this org")
        try:
            await q(alerts.update, user.org_id, rule.id, {"paused": not rule.paused})
        except RuleError as exc:  # e.g. an email channel while LLMLENS_SMTP_URL has since been unset
            return await detail(request, user, error=str(exc))
        return RedirectResponse(f"/alerts/{rule.id}", status_code=303)

    async def test(request: Request, user: WebUser) -> Response:
        results = await q(alerts.send_test, user.org_id, request.path_params["id"])
        if results is None:
            raise NotFound("no such alert rule in this org")
        return await detail(request, user, tested=results)

    async def delete(request: Request, user: WebUser) -> Response:
        if not await q(alerts.delete, user.org_id, request.path_params["id"]):
            raise NotFound("no such alert rule in this org")
        return RedirectResponse("/alerts", status_code=303)

    return [
        Route("/alerts", page(list_page), methods=["GET"]),
        Route("/alerts", page(create), methods=["POST"]),
        Route("/alerts/{id}", page(detail), methods=["GET"]),
        Route("/alerts/{id}", page(edit), methods=["POST"]),
        Route("/alerts/{id}/pause", page(pause), methods=["POST"]),
        Route("/alerts/{id}/test", page(test), methods=["POST"]),
        Route("/alerts/{id}/delete", page(delete), methods=["POST"]),
    ]
