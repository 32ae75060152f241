"""Alerts end to end: rules over the API and the Alerts page, evaluation against real chDB, state in real PostgreSQL,
delivery to a real HTTP receiver (webhook and Slack shapes) and a real SMTP server (aiosmtpd) on loopback."""

from __future__ import annotations

import dataclasses
import email
import email.policy
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import httpx
import orjson
import pytest
from aiosmtpd.controller import Controller
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from dashboard import notify
from dashboard.alerts import MAX_ATTEMPTS, Alerts
from llmlens.app import Services, create_app, open_services
from llmlens.settings import Settings
from tests.dashboard.test_pages import PASSWORD, csrf_of, login
from tests.servers import serve


def iso(ts: datetime) -> str:
    return ts.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class Receiver:
    """A webhook receiver on loopback: records every POST; `fail` makes the next N answer 500."""

    def __init__(self) -> None:
        self.received: list[tuple[str, dict[str, str], bytes]] = []
        self.fail = 0
        self.lock = threading.Lock()

    async def hook(self, request: Request) -> Response:
        body = await request.body()
        with self.lock:
            self.received.append((request.url.path, dict(request.headers), body))
            if self.fail:
                self.fail -= 1
                return Response("receiver is down", status_code=500)
        return Response("ok")

    def bodies(self, path: str) -> list[dict[str, Any]]:
        return [orjson.loads(b) for p, _, b in self.received if p == path]


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, str]]:
    rec = Receiver()
    with serve(Starlette(routes=[Route("/{name}", rec.hook, methods=["POST"])])) as url:
        yield rec, url


class Mailbox:
    def __init__(self) -> None:
        self.messages: list[email.message.EmailMessage] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(email.message_from_bytes(envelope.content, policy=email.policy.default))  # type: ignore[arg-type]
        return "250 OK"


@pytest.fixture
def mailbox() -> Iterator[tuple[Mailbox, int]]:
    box = Mailbox()
    with socket.socket() as probe:  # aiosmtpd checks readiness by connecting, so it needs a real port up front
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield box, port
    finally:
        controller.stop()


@pytest.fixture
def settings(settings: Settings, mailbox: tuple[Mailbox, int]) -> Settings:
    return dataclasses.replace(settings, smtp_url=f"smtp://127.0.0.1:{mailbox[1]}", alert_from="alerts@llmlens.test",
                               public_url="https://llmlens.example.com")


@pytest.fixture
def alerts(services: Services) -> Alerts:
    services.alerts.retry_base_s = 0.01  # the backoff between inline retries; its shape is what the test checks
    return services.alerts


NOW = datetime.now(UTC).replace(microsecond=0)
SEED = [
    {"request_id": "a1", "created_at": iso(NOW - timedelta(minutes=10)), "model": "gpt-4o", "provider": "openai",
     "status": 200, "latency_ms": 100, "cost_usd": "0.006", "user_id": "alice", "properties": {"team": "search"}},
    {"request_id": "a2", "created_at": iso(NOW - timedelta(minutes=8)), "model": "gpt-4o", "provider": "openai",
     "status": 500, "latency_ms": 300, "cost_usd": "0.005", "user_id": "alice", "properties": {"team": "search"}},
    {"request_id": "b1", "created_at": iso(NOW - timedelta(minutes=6)), "model": "claude-haiku-4-5",
     "provider": "anthropic", "status": 200, "latency_ms": 200, "cost_usd": "0.002", "user_id": "bob",
     "properties": {"team": "chat"}},
    {"request_id": "b2", "created_at": iso(NOW - timedelta(minutes=4)), "model": "claude-haiku-4-5",
     "provider": "anthropic", "status": 200, "latency_ms": 400, "cost_usd": "0.001", "user_id": "bob",
     "properties": {"team": "chat"}},
]


def seed(server: str, api_key: str, services: Services, items: list[dict[str, Any]]) -> None:
    before = services.ch.query("SELECT count() AS n FROM request_events FINAL")[0]["n"]
    r = httpx.post(f"{server}/api/v1/logs", json=items, headers={"Authorization": f"Bearer {api_key}"})
    assert r.status_code == 202, r.text
    deadline = time.monotonic() + 15
    while services.ch.query("SELECT count() AS n FROM request_events FINAL")[0]["n"] < before + len(items):
        assert time.monotonic() < deadline
        time.sleep(0.05)


def api(server: str, api_key: str, method: str, path: str, body: Any = None) -> httpx.Response:
    return httpx.request(method, f"{server}{path}", json=body, headers={"Authorization": f"Bearer {api_key}"})


def requests_link(start: datetime, end: datetime, **filters: str) -> str:
    return "https://llmlens.example.com/requests?" + urlencode(
        {"range": "custom", "start": start.isoformat().replace("+00:00", "Z"),
         "end": end.isoformat().replace("+00:00", "Z"), **filters})


def test_fires_once_resolves_after_cooldown_and_signs(server: str, api_key: str, services: Services, alerts: Alerts,
                                                      receiver: tuple[Receiver, str], mailbox: tuple[Mailbox, int]) -> None:
    rec, url = receiver
    seed(server, api_key, services, SEED)
    r = api(server, api_key, "POST", "/api/v1/alerts", {
        "name": "Spend over a cent", "metric": "cost", "window": "1h", "threshold": 0.01,
        "channels": [{"type": "webhook", "url": f"{url}/hook"}, {"type": "slack", "url": f"{url}/slack"},
                     {"type": "email", "to": ["oncall@example.com"]}]})
    assert r.status_code == 201, r.text
    rule = r.json()
    assert {k: rule[k] for k in ("name", "metric", "window", "comparator", "threshold", "min_requests", "filter",
                                 "group_by", "cooldown", "paused", "state", "value")} == {
        "name": "Spend over a cent", "metric": "cost", "window": "1h", "comparator": ">=", "threshold": 0.01,
        "min_requests": 0, "filter": {}, "group_by": None, "cooldown": "5m", "paused": False, "state": "ok", "value": None}

    t0 = NOW
    assert alerts.evaluate_due(t0) == 1
    assert alerts.evaluate_due(t0) == 0  # evaluated this interval already
    assert alerts.deliver_pending(t0) == 3
    (hook,) = rec.bodies("/hook")
    expected = {
        "event": "fired", "rule": {"id": rule["id"], "name": "Spend over a cent", "metric": "cost"},
        "metric_label": "Cost", "value": pytest.approx(0.014), "value_text": "$0.014", "comparator": ">=",
        "threshold": 0.01, "threshold_text": "$0.01", "requests": 4, "window": "1h", "window_s": 3600, "filter": {},
        "group_by": None, "group": None, "fired_at": iso(t0).replace(".000Z", "Z"), "resolved_at": None,
        "url": requests_link(t0 - timedelta(hours=1), t0), "delivery_id": hook["delivery_id"],
    }
    assert hook == expected
    path, headers, raw = rec.received[0]
    secret = api(server, api_key, "GET", f"/api/v1/alerts/{rule['id']}").json()["webhook_secret"]
    assert notify.verify(secret, headers["x-llmlens-signature"], raw)
    assert not notify.verify("whsec_wrong", headers["x-llmlens-signature"], raw)
    assert not notify.verify(secret, headers["x-llmlens-signature"], raw.replace(b"0.014", b"0.001"))
    assert rec.bodies("/slack") == [{"text": "*FIRING: Spend over a cent*\nCost is $0.014 (alert when >= $0.01) over "
                                     f"the last 1h, 4 requests.\n<{expected['url']}|Open the matching requests>"}]
    (mail,) = mailbox[0].messages
    assert (mail["Subject"], mail["From"], mail["To"]) == (
        "[llmlens] FIRING: Spend over a cent", "alerts@llmlens.test", "oncall@example.com")
    assert mail.get_body(("plain",)).get_content().replace("\r\n", "\n") == (  # type: ignore[union-attr]
        "FIRING: Spend over a cent\n\nCost is $0.014 (alert when >= $0.01) over the last 1h, 4 requests.\n\n"
        f"Matching requests: {expected['url']}\n")
    assert "<h2>FIRING: Spend over a cent</h2>" in mail.get_body(("html",)).get_content()  # type: ignore[union-attr]

    # still over the line a minute later: no second notification
    assert alerts.evaluate_due(t0 + timedelta(seconds=61)) == 1
    assert alerts.deliver_pending(t0 + timedelta(seconds=61)) == 0
    # two hours on the window is empty: clear, but the cooldown (5m) holds the alert open ...
    t1 = t0 + timedelta(hours=2)
    alerts.evaluate_due(t1)
    alerts.evaluate_due(t1 + timedelta(minutes=4))
    assert alerts.deliver_pending(t1 + timedelta(minutes=4)) == 0
    got = api(server, api_key, "GET", f"/api/v1/alerts/{rule['id']}").json()
    assert (got["state"], got["firing"]) == ("firing", [{"group": None, "value": 0.0, "value_text": "$0.00", "requests": 0,
                                                         "fired_at": iso(t0).replace(".000Z", "Z"),
                                                         "clear_since": iso(t1).replace(".000Z", "Z")}])
    # ... until it has stayed clear for the cooldown
    t2 = t1 + timedelta(minutes=5, seconds=1)
    alerts.evaluate_due(t2)
    assert alerts.deliver_pending(t2) == 3
    resolved = rec.bodies("/hook")[1]
    assert (resolved["event"], resolved["value"], resolved["fired_at"], resolved["resolved_at"]) == (
        "resolved", 0.0, iso(t0).replace(".000Z", "Z"), iso(t2).replace(".000Z", "Z"))
    assert rec.bodies("/slack")[1]["text"].startswith("*RESOLVED: Spend over a cent*\nCost is $0.00 ")
    assert mailbox[0].messages[1]["Subject"] == "[llmlens] RESOLVED: Spend over a cent"
    got = api(server, api_key, "GET", f"/api/v1/alerts/{rule['id']}").json()
    assert (got["state"], got["firing"], got["value"], got["requests"]) == ("ok", [], 0.0, 0)
    assert [(h["group"], h["fired_at"], h["fired_value"], h["resolved_at"], h["resolved_value"]) for h in got["history"]] == [
        (None, iso(t0).replace(".000Z", "Z"), pytest.approx(0.014), iso(t2).replace(".000Z", "Z"), 0.0)]
    assert sorted((d["event"], d["channel"], d["attempts"], d["last_error"]) for d in got["deliveries"]) == [
        ("fired", "email to oncall@example.com", 1, None), ("fired", f"slack {url[7:]}", 1, None),
        ("fired", f"webhook {url[7:]}", 1, None), ("resolved", "email to oncall@example.com", 1, None),
        ("resolved", f"slack {url[7:]}", 1, None), ("resolved", f"webhook {url[7:]}", 1, None)]


def test_grouped_rule_fires_per_user_and_min_requests_holds_back(server: str, api_key: str, services: Services,
                                                                  alerts: Alerts, receiver: tuple[Receiver, str]) -> None:
    rec, url = receiver
    seed(server, api_key, services, SEED)
    hook = [{"type": "webhook", "url": f"{url}/hook"}]
    per_user = api(server, api_key, "POST", "/api/v1/alerts", {
        "name": "User spend", "metric": "cost", "window": 3600, "threshold": 0.01, "group_by": "user",
        "channels": hook}).json()
    errors = api(server, api_key, "POST", "/api/v1/alerts", {
        "name": "Error rate", "metric": "error_rate", "window": "15m", "threshold": 20, "min_requests": 5,
        "channels": hook}).json()
    search_errors = api(server, api_key, "POST", "/api/v1/alerts", {
        "name": "Search errors", "metric": "error_rate", "window": "15m", "threshold": 50, "min_requests": 2,
        "filter": {"property.team": "search"}, "channels": hook}).json()
    assert alerts.evaluate_due(NOW) == 3
    alerts.deliver_pending(NOW)
    fired = sorted((b["rule"]["name"], b["group"], b["value"], b["requests"]) for b in rec.bodies("/hook"))
    assert fired == [("Search errors", None, 50.0, 2), ("User spend", "alice", pytest.approx(0.011), 2)]
    listed = {r["id"]: r for r in api(server, api_key, "GET", "/api/v1/alerts").json()["data"]}
    assert [(f["group"], f["requests"]) for f in listed[per_user["id"]]["firing"]] == [("alice", 2)]
    # 1 error in 4 requests is over 20%, but 4 requests are fewer than the 5 the rule asks for
    assert (listed[errors["id"]]["state"], listed[errors["id"]]["value"], listed[errors["id"]]["requests"]) == ("ok", 25.0, 4)
    assert listed[search_errors["id"]]["state"] == "firing"
    user_link = rec.bodies("/hook")[[b["group"] for b in rec.bodies("/hook")].index("alice")]["url"]
    assert user_link == requests_link(NOW - timedelta(hours=1), NOW, user_id="alice")


def test_projected_month_end_spend_on_a_seeded_month(server: str, api_key: str, services: Services, alerts: Alerts,
                                                     receiver: tuple[Receiver, str]) -> None:
    rec, url = receiver
    month = datetime(2026, 9, 1, tzinfo=UTC)  # 30 days; evaluated at the start of day 11: 10 days elapsed
    seed(server, api_key, services, [
        {"request_id": f"m{d}", "created_at": iso(month + timedelta(days=d, hours=3)), "model": "gpt-4o",
         "cost_usd": "1.00", "user_id": "alice" if d % 2 else "bob"} for d in range(10)]
        + [{"request_id": "aug", "created_at": iso(month - timedelta(days=2)), "model": "gpt-4o", "cost_usd": "500"}])
    hook = [{"type": "webhook", "url": f"{url}/hook"}]
    over = api(server, api_key, "POST", "/api/v1/alerts", {
        "name": "Month over $25", "metric": "projected_month_spend", "threshold": 25, "channels": hook}).json()
    under = api(server, api_key, "POST", "/api/v1/alerts", {
        "name": "Month over $31", "metric": "projected_month_spend", "threshold": 31, "channels": hook}).json()
    per_user = api(server, api_key, "POST", "/api/v1/alerts", {
        "name": "User month over $14", "metric": "projected_month_spend", "threshold": 14, "group_by": "user",
        "channels": hook}).json()
    at = month + timedelta(days=10)
    alerts.evaluate_due(at)
    alerts.deliver_pending(at)
    got = {r["id"]: r for r in api(server, api_key, "GET", "/api/v1/alerts").json()["data"]}
    assert (got[over["id"]]["state"], got[over["id"]]["value"], got[over["id"]]["value_text"]) == ("firing", 30.0, "$30.00")
    assert (got[under["id"]]["state"], got[under["id"]]["value"]) == ("ok", 30.0)
    assert [(f["group"], f["value"]) for f in got[per_user["id"]]["firing"]] == [("alice", 15.0), ("bob", 15.0)]
    assert sorted((b["rule"]["name"], b["group"], b["value"]) for b in rec.bodies("/hook")) == [
        ("Month over $25", None, 30.0), ("User month over $14", "alice", 15.0), ("User month over $14", "bob", 15.0)]


def test_budget_warning_before_the_budget_refuses(server: str, api_key: str, services: Services, alerts: Alerts,
                                                  receiver: tuple[Receiver, str]) -> None:
    rec, url = receiver
    seed(server, api_key, services, SEED)
    budget = api(server, api_key, "POST", "/api/v1/budgets",
                 {"scope": "user", "value": "alice", "period": "day", "limit_usd": "0.0125"}).json()
    rule = api(server, api_key, "POST", "/api/v1/alerts", {
        "name": "Alice at 80% of her daily budget", "metric": "budget_used_pct", "budget_id": budget["id"],
        "threshold": 80, "channels": [{"type": "webhook", "url": f"{url}/hook"}]}).json()
    alerts.evaluate_due(NOW)
    alerts.deliver_pending(NOW)
    (body,) = rec.bodies("/hook")
    day = NOW.replace(hour=0, minute=0, second=0)
    assert (body["value"], body["value_text"], body["requests"], body["url"]) == (
        pytest.approx(88.0), "88.0%", 2, requests_link(day, NOW, user_id="alice"))
    if NOW - timedelta(minutes=10) < day:  # the seed straddles midnight; alice's first request is yesterday's
        pytest.skip("run at midnight UTC")
    assert api(server, api_key, "GET", f"/api/v1/alerts/{rule['id']}").json()["state"] == "firing"
    # deleting the budget deletes the rules that watch it
    assert api(server, api_key, "DELETE", f"/api/v1/budgets/{budget['id']}").status_code == 204
    assert api(server, api_key, "GET", f"/api/v1/alerts/{rule['id']}").status_code == 404


def test_failing_webhook_is_retried_and_reported(server: str, api_key: str, services: Services, alerts: Alerts,
                                                 receiver: tuple[Receiver, str]) -> None:
    rec, url = receiver
    seed(server, api_key, services, SEED)
    rule = api(server, api_key, "POST", "/api/v1/alerts", {
        "name": "Requests", "metric": "requests", "window": "1h", "threshold": 1,
        "channels": [{"type": "webhook", "url": f"{url}/hook"}]}).json()
    alerts.evaluate_due(NOW)
    rec.fail = 2  # two 500s, then the third inline try lands
    assert alerts.deliver_pending(NOW) == 1
    assert [p for p, _, _ in rec.received] == ["/hook"] * 3
    got = api(server, api_key, "GET", f"/api/v1/alerts/{rule['id']}").json()
    assert [(d["attempts"], d["last_error"]) for d in got["deliveries"]] == [(1, None)]  # delivered on one inline round

    # a receiver that stays down: retried with backoff, reported on the rule, given up after MAX_ATTEMPTS
    t1 = NOW + timedelta(hours=2)
    alerts.evaluate_due(t1)
    alerts.evaluate_due(t1 + timedelta(minutes=6))  # resolves: one more notification to send
    rec.fail = 10**6
    t = t1 + timedelta(minutes=6)
    assert alerts.deliver_pending(t) == 0
    got = api(server, api_key, "GET", f"/api/v1/alerts/{rule['id']}").json()
    error = f"POST {url[7:]} answered 500: receiver is down"
    assert got["last_delivery_error"] == f"webhook {url[7:]}: {error} (will retry)"
    assert [(d["event"], d["attempts"], d["last_error"], d["failed_at"]) for d in got["deliveries"]][0] == (
        "resolved", 3, error, None)
    assert alerts.deliver_pending(t + timedelta(seconds=30)) == 0  # not due yet: the next try is two minutes on
    assert len(rec.received) == 3 + 3
    for _ in range(MAX_ATTEMPTS // 3 - 1):
        t += timedelta(hours=1)
        alerts.deliver_pending(t)
    got = api(server, api_key, "GET", f"/api/v1/alerts/{rule['id']}").json()
    assert [(d["attempts"], d["failed_at"] is not None) for d in got["deliveries"]][0] == (MAX_ATTEMPTS, True)
    assert got["last_delivery_error"] == f"webhook {url[7:]}: {error} (gave up)"
    assert len(rec.received) == 3 + MAX_ATTEMPTS
    alerts.deliver_pending(t + timedelta(days=1))
    assert len(rec.received) == 3 + MAX_ATTEMPTS


def test_restart_and_a_second_process_send_nothing_twice(server: str, api_key: str, services: Services,
                                                        alerts: Alerts, receiver: tuple[Receiver, str]) -> None:
    rec, url = receiver
    seed(server, api_key, services, SEED)
    api(server, api_key, "POST", "/api/v1/alerts", {
        "name": "Requests", "metric": "requests", "window": "1h", "threshold": 1,
        "channels": [{"type": "webhook", "url": f"{url}/hook"}]})
    # two evaluators (two llmlens processes on one PostgreSQL) race for the same due rule: one evaluates it
    other = Alerts(services.pg, services.ch, interval_s=60, base_url="https://llmlens.example.com")
    counts: list[int] = []
    threads = [threading.Thread(target=lambda a=a: counts.append(a.evaluate_due(NOW))) for a in (alerts, other)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert sorted(counts) == [0, 1]
    alerts.deliver_pending(NOW)
    other.deliver_pending(NOW)
    assert len(rec.bodies("/hook")) == 1
    # a restart mid-firing: a fresh process with the same stores keeps the alert firing and says nothing new
    settings = services.settings
    restarted = open_services(settings)
    try:
        restarted.alerts.evaluate_due(NOW + timedelta(minutes=5))
        restarted.alerts.deliver_pending(NOW + timedelta(minutes=5))
        assert len(rec.bodies("/hook")) == 1
        assert [r["state"] for r in restarted.alerts.list_rules("default")] == ["firing"]
    finally:
        restarted.pg.close()


@pytest.mark.parametrize(("body", "error"), [
    ({"metric": "cost", "window": "1h", "threshold": 1, "channels": []}, "name must be a non-empty string of at most 200 characters"),
    ({"name": "x", "metric": "vibes", "window": "1h", "threshold": 1}, "metric must be one of cost, error_rate, requests, "
     "latency_p50, latency_p95, latency_p99, tokens, projected_month_spend, budget_used_pct, not 'vibes'"),
    ({"name": "x", "metric": "cost", "threshold": 1}, "window is required: 5m to 30d"),
    ({"name": "x", "metric": "cost", "window": "1m", "threshold": 1}, "window must be between 5m and 30d, not 1m"),
    ({"name": "x", "metric": "cost", "window": "31d", "threshold": 1}, "window must be between 5m and 30d, not 31d"),
    ({"name": "x", "metric": "cost", "window": "soon", "threshold": 1}, "window 'soon' is not a duration such as 15m, 1h or 7d"),
    ({"name": "x", "metric": "cost", "window": "1h", "threshold": "1"}, "threshold must be a non-negative number"),
    ({"name": "x", "metric": "cost", "window": "1h", "threshold": -1}, "threshold must be a non-negative number"),
    ({"name": "x", "metric": "error_rate", "window": "1h", "threshold": 120}, "threshold of error_rate is a percentage: 0 to 100"),
    ({"name": "x", "metric": "cost", "window": "1h", "threshold": 1, "comparator": "=="},
     "comparator must be one of >=, >, <=, <, not '=='"),
    ({"name": "x", "metric": "cost", "window": "1h", "threshold": 1, "min_requests": 1.5},
     "min_requests must be a non-negative integer"),
    ({"name": "x", "metric": "cost", "window": "1h", "threshold": 1, "filter": {"colour": "red"}},
     "filter: unknown filter 'colour'; known: api_key_id, model, provider, status_class, user_id, property.<Key>, score.<name>"),
    ({"name": "x", "metric": "cost", "window": "1h", "threshold": 1, "group_by": "team"},
     "group_by must be user, model, provider or property.<key>, not 'team'"),
    ({"name": "x", "metric": "cost", "window": "1h", "threshold": 1, "channels": []},
     "channels must be a non-empty list of {type: webhook|slack|email, ...}"),
    ({"name": "x", "metric": "cost", "window": "1h", "threshold": 1, "channels": [{"type": "pager"}]},
     "channels[0].type must be webhook, slack or email, not 'pager'"),
    ({"name": "x", "metric": "cost", "window": "1h", "threshold": 1, "channels": [{"type": "webhook", "url": "ftp://x"}]},
     "channels[0].url must be an http(s) URL"),
    ({"name": "x", "metric": "cost", "window": "1h", "threshold": 1, "channels": [{"type": "email", "to": ["not-an-address"]}]},
     "channels[0].to must be a list of email addresses"),
    ({"name": "x", "metric": "budget_used_pct", "threshold": 80, "channels": [{"type": "slack", "url": "https://h/x"}]},
     "budget_used_pct needs budget_id: the id of a budget of this org"),
    ({"name": "x", "metric": "budget_used_pct", "threshold": 80, "budget_id": "nope",
      "channels": [{"type": "slack", "url": "https://h/x"}]}, "budget_id 'nope' is not a budget of this org"),
    ({"name": "x", "metric": "cost", "window": "1h", "threshold": 1, "colour": "red"},
     "unknown field 'colour'; known: budget_id, channels, comparator, cooldown, filter, group_by, metric, min_requests, "
     "name, paused, threshold, window"),
    ([1, 2], "expected a JSON object"),
])
def test_bad_rules_get_clear_400s_and_store_nothing(server: str, api_key: str, body: Any, error: str) -> None:
    r = api(server, api_key, "POST", "/api/v1/alerts", body)
    assert (r.status_code, r.json()) == (400, {"error": error})
    assert api(server, api_key, "GET", "/api/v1/alerts").json() == {"data": []}


def test_email_needs_smtp_configured(settings: Settings, pg_dsn: str) -> None:
    from dashboard.alerts import RuleError, validate

    with pytest.raises(RuleError, match="^email channels need LLMLENS_SMTP_URL to be set on the llmlens server$"):
        validate({"name": "x", "metric": "cost", "window": "1h", "threshold": 1,
                  "channels": [{"type": "email", "to": "a@example.com"}]}, smtp_configured=False)


def test_update_pause_and_org_scoping(server: str, api_key: str, services: Services, alerts: Alerts,
                                      receiver: tuple[Receiver, str]) -> None:
    rec, url = receiver
    rule = api(server, api_key, "POST", "/api/v1/alerts", {
        "name": "Cost", "metric": "cost", "window": "1h", "threshold": 1,
        "channels": [{"type": "webhook", "url": f"{url}/hook"}]}).json()
    r = api(server, api_key, "PATCH", f"/api/v1/alerts/{rule['id']}", {"threshold": 2.5, "paused": True})
    assert (r.status_code, r.json()["threshold"], r.json()["state"], r.json()["name"]) == (200, 2.5, "paused", "Cost")
    assert api(server, api_key, "PATCH", f"/api/v1/alerts/{rule['id']}", {"window": "2m"}).json() == {
        "error": "window must be between 5m and 30d, not 2m"}
    assert api(server, api_key, "GET", f"/api/v1/alerts/{rule['id']}").json()["window"] == "1h"
    assert alerts.evaluate_due(NOW) == 0  # paused rules are not evaluated
    test = api(server, api_key, "POST", f"/api/v1/alerts/{rule['id']}/test")
    assert test.json() == {"results": [{"channel": f"webhook {url[7:]}", "ok": True, "error": None}]}
    assert rec.bodies("/hook")[0]["event"] == "test"

    services.control.ensure_org("org-b")
    _, key_b = services.control.create_key("b", org_id="org-b")
    assert api(server, key_b, "GET", "/api/v1/alerts").json() == {"data": []}
    for method, path, body in [("GET", "", None), ("PATCH", "", {"threshold": 0}), ("POST", "/test", None), ("DELETE", "", None)]:
        r = api(server, key_b, method, f"/api/v1/alerts/{rule['id']}{path}", body)
        assert (r.status_code, r.json()) == (404, {"error": f"no alert rule {rule['id']!r} in this org"})
    assert api(server, api_key, "GET", f"/api/v1/alerts/{rule['id']}").json()["threshold"] == 2.5
    assert api(server, api_key, "DELETE", f"/api/v1/alerts/{rule['id']}").status_code == 204
    assert api(server, api_key, "GET", "/api/v1/alerts").json() == {"data": []}


def test_alerts_page_create_test_pause_and_org_b(server: str, api_key: str, services: Services,
                                                 receiver: tuple[Receiver, str]) -> None:
    rec, url = receiver
    services.control.create_user("ada@example.com", PASSWORD)
    web = login(server)
    page = web.get("/alerts")
    assert page.status_code == 200 and "No alert rules yet" in page.text
    form = {"csrf": csrf_of(page.text), "name": "Errors over 5%", "metric": "error_rate", "comparator": ">=",
            "threshold": "5", "window": "15m", "min_requests": "10", "cooldown": "10m",
            "filter": "model=gpt-4o, property.Team=search", "group_by": "property", "group_property": "env",
            "webhook_url": f"{url}/hook", "slack_url": "", "email_to": "oncall@example.com"}
    created = web.post("/alerts", data=form)
    assert created.status_code == 303
    rule_id = created.headers["location"].rsplit("/", 1)[1]
    stored = api(server, api_key, "GET", f"/api/v1/alerts/{rule_id}").json()
    assert {k: stored[k] for k in ("name", "metric", "threshold", "window", "min_requests", "cooldown", "filter",
                                   "group_by", "channels")} == {
        "name": "Errors over 5%", "metric": "error_rate", "threshold": 5.0, "window": "15m", "min_requests": 10,
        "cooldown": "10m", "filter": {"model": "gpt-4o", "property.team": "search"}, "group_by": "property.env",
        "channels": [{"type": "webhook", "url": f"{url}/hook"}, {"type": "email", "to": ["oncall@example.com"]}]}
    bad = web.post("/alerts", data={**form, "threshold": "lots"})
    assert bad.status_code == 400 and "threshold must be a non-negative number" in bad.text
    assert web.post("/alerts", data={k: v for k, v in form.items() if k != "csrf"}).status_code == 403

    detail = web.get(f"/alerts/{rule_id}")
    assert detail.status_code == 200 and "Errors over 5%" in detail.text and stored["webhook_secret"] in detail.text
    tested = web.post(f"/alerts/{rule_id}/test", data={"csrf": csrf_of(detail.text)})
    assert f"webhook {url[7:]}: sent" in tested.text
    assert "email to oncall@example.com: sent" in tested.text
    assert web.post(f"/alerts/{rule_id}/pause", data={"csrf": csrf_of(detail.text)}).status_code == 303
    assert api(server, api_key, "GET", f"/api/v1/alerts/{rule_id}").json()["state"] == "paused"
    edited = web.post(f"/alerts/{rule_id}", data={**form, "csrf": csrf_of(detail.text), "threshold": "7.5"})
    assert edited.status_code == 303
    assert api(server, api_key, "GET", f"/api/v1/alerts/{rule_id}").json()["threshold"] == 7.5

    services.alerts.smtp_url = ""  # as after a restart without LLMLENS_SMTP_URL: the email channel no longer validates
    refused = web.post(f"/alerts/{rule_id}/pause", data={"csrf": csrf_of(detail.text)})
    assert refused.status_code == 400 and "email channels need LLMLENS_SMTP_URL" in refused.text
    services.alerts.smtp_url = services.settings.smtp_url

    services.control.ensure_org("org-b")
    services.control.create_user("bea@example.com", PASSWORD, org_id="org-b")
    web_b = login(server, "bea@example.com")
    assert "Errors over 5%" not in web_b.get("/alerts").text
    assert web_b.get(f"/alerts/{rule_id}").status_code == 404
    other = web_b.get("/alerts")
    assert web_b.post(f"/alerts/{rule_id}/delete", data={"csrf": csrf_of(other.text)}).status_code == 404
    assert web.post(f"/alerts/{rule_id}/delete", data={"csrf": csrf_of(detail.text)}).status_code == 303
    assert api(server, api_key, "GET", "/api/v1/alerts").json() == {"data": []}


def test_the_server_evaluates_on_its_own(settings: Settings, receiver: tuple[Receiver, str]) -> None:
    rec, url = receiver
    settings = dataclasses.replace(settings, alert_interval_s=0.2)
    services = open_services(settings)
    try:
        _, key = services.control.create_key("k")
        with serve(create_app(settings, services)) as server:
            seed(server, key, services, SEED[:1])
            assert api(server, key, "POST", "/api/v1/alerts", {
                "name": "Any request", "metric": "requests", "window": "1h", "threshold": 1,
                "channels": [{"type": "webhook", "url": f"{url}/hook"}]}).status_code == 201
            deadline = time.monotonic() + 10
            while not rec.received:
                assert time.monotonic() < deadline, "no notification arrived"
                time.sleep(0.05)
            assert [(b["event"], b["rule"]["name"], b["value"]) for b in rec.bodies("/hook")] == [("fired", "Any request", 1.0)]
    finally:
        services.pg.close()
