"""Dashboard pages over HTTP: login, CSRF, org scoping, inert bodies, exports, and the JSON twins."""

from __future__ import annotations

import csv
import io
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import orjson
import pytest

from llmlens.app import Services, setup_link

PASSWORD = "correct horse battery"


def iso(minutes_ago: int) -> str:
    return (datetime.now(UTC) - timedelta(minutes=minutes_ago)).strftime("%Y-%m-%dT%H:%M:%S.000Z")


SEED = [
    {"request_id": "p1", "created_at": iso(5), "model": "gpt-4o", "provider": "openai", "status": 200,
     "latency_ms": 100, "prompt_tokens": 1000, "completion_tokens": 100, "cost_usd": "0.010000000", "user_id": "alice",
     "properties": {"team": "search"}},
    {"request_id": "p2", "created_at": iso(4), "model": "gpt-4o", "provider": "openai", "status": 500,
     "latency_ms": 300, "prompt_tokens": 500, "completion_tokens": 0, "cost_usd": "0.002000000", "user_id": "bob",
     "properties": {"team": "chat"}},
    {"request_id": "p3", "created_at": iso(3), "model": "claude-haiku-4-5", "provider": "anthropic", "status": 200,
     "latency_ms": 200, "prompt_tokens": 200, "completion_tokens": 50, "cost_usd": "0.001000000", "user_id": "alice",
     "properties": {"team": "search"},
     "request_body": '{"messages": [{"role": "user", "content": "<script>alert(1)</script>"}]}',
     "response_body": '{"content": [{"type": "text", "text": "<img src=x onerror=alert(2)>"}]}'},
    {"request_id": "p4", "created_at": iso(2), "model": "mystery-model", "provider": "acme", "status": 200,
     "latency_ms": 400, "prompt_tokens": 10, "completion_tokens": 10, "user_id": "carol", "properties": {}},
]


@pytest.fixture
def seeded(server: str, api_key: str, services: Services) -> Iterator[tuple[str, str]]:
    r = httpx.post(f"{server}/api/v1/logs", json=SEED, headers={"Authorization": f"Bearer {api_key}"})
    assert r.status_code == 202
    deadline = time.monotonic() + 15
    while services.ch.query("SELECT count() AS n FROM request_events FINAL") != [{"n": len(SEED)}]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    services.control.create_user("ada@example.com", PASSWORD)
    yield server, api_key


CLIENTS: list[httpx.Client] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while CLIENTS:
        CLIENTS.pop().close()


def login(server: str, email: str = "ada@example.com", password: str = PASSWORD) -> httpx.Client:
    client = httpx.Client(base_url=server, follow_redirects=False)
    CLIENTS.append(client)
    page = client.get("/login")
    token = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
    r = client.post("/login", data={"email": email, "password": password, "csrf": token})
    assert r.status_code == 303, r.text
    return client


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)  # type: ignore[union-attr]


@pytest.mark.parametrize("path", ["/", "/requests", "/requests/p1", "/properties", "/users", "/settings", "/alerts", "/alerts/alr_x", "/sessions", "/sessions/s1", "/prompts", "/prompts/p1", "/prompts/p1/compare",
                                  "/requests/export.csv", "/requests/export.jsonl"])
def test_every_page_and_export_needs_a_login(server: str, path: str) -> None:
    r = httpx.get(f"{server}{path}")
    assert (r.status_code, r.headers["location"]) == (303, "/login?next=" + path)


def test_login_wrong_password_rate_limit_and_logout(seeded: tuple[str, str]) -> None:
    server, _ = seeded
    client = httpx.Client(base_url=server)
    CLIENTS.append(client)
    token = csrf_of(client.get("/login").text)
    bad = client.post("/login", data={"email": "ada@example.com", "password": "nope", "csrf": token})
    assert bad.status_code == 401 and "Wrong email or password." in bad.text
    assert client.post("/login", data={"email": "ada@example.com", "password": PASSWORD, "csrf": "forged"}).status_code == 403
    for _ in range(9):
        client.post("/login", data={"email": "ada@example.com", "password": "nope", "csrf": token})
    limited = client.post("/login", data={"email": "ada@example.com", "password": PASSWORD, "csrf": token})
    assert limited.status_code == 429 and "Too many failed attempts" in limited.text


def test_overview_kpis_match_the_seed(seeded: tuple[str, str]) -> None:
    server, key = seeded
    client = login(server)
    html = client.get("/?range=1h").text
    assert re.search(r'id="kpi-requests">4<', html)
    assert re.search(r'id="kpi-cost" title="\$0.013000000">\$0.013<', html)
    assert re.search(r'id="kpi-errors">25.00%<', html)
    assert re.search(r'id="kpi-coverage">75.0%<', html)
    api = httpx.get(f"{server}/api/v1/overview?range=1h", headers={"Authorization": f"Bearer {key}"}).json()
    assert api["kpis"] == {
        "requests": 4, "cost_usd": "0.013000000", "prompt_tokens": 1710, "completion_tokens": 160,
        "latency_avg_ms": 250.0, "latency_p50_ms": 300, "latency_p95_ms": 400, "errors": 1, "error_rate": 0.25,
        "unpriced": 1, "cost_coverage": 0.75, "cache_hits": 0, "cache_saved_usd": "0.000000000"}
    assert [(m["value"], m["cost_usd"]) for m in api["top_models"]] == [
        ("gpt-4o", "0.012000000"), ("claude-haiku-4-5", "0.001000000"), ("mystery-model", "0.000000000")]
    filtered = httpx.get(f"{server}/api/v1/overview?range=1h&property=team%3Dsearch",
                         headers={"Authorization": f"Bearer {key}"}).json()
    assert (filtered["kpis"]["requests"], filtered["kpis"]["cost_usd"]) == (2, "0.011000000")
    # htmx asks for the panels alone
    fragment = client.get("/?range=1h&user_id=bob", headers={"HX-Request": "true", "HX-Target": "panels"}).text
    assert "<html" not in fragment and re.search(r'id="kpi-requests">1<', fragment)


def test_properties_and_users(seeded: tuple[str, str]) -> None:
    server, key = seeded
    auth = {"Authorization": f"Bearer {key}"}
    props = httpx.get(f"{server}/api/v1/properties/team?range=1h", headers=auth).json()
    assert props["values"] == [
        {"value": "search", "requests": 2, "cost_usd": "0.011000000", "tokens": 1350, "latency_p50_ms": 200,
         "latency_p95_ms": 200, "error_rate": 0.0},
        {"value": "chat", "requests": 1, "cost_usd": "0.002000000", "tokens": 500, "latency_p50_ms": 300,
         "latency_p95_ms": 300, "error_rate": 1.0},
    ]
    users = httpx.get(f"{server}/api/v1/users?range=1h", headers=auth).json()["data"]
    assert [(u["user_id"], u["requests"], u["cost_usd"], u["error_rate"]) for u in users] == [
        ("alice", 2, "0.011000000", 0.0), ("bob", 1, "0.002000000", 1.0), ("carol", 1, "0.000000000", 0.0)]
    client = login(server)
    assert "search" in client.get("/properties?range=1h&key=team").text
    assert "carol" in client.get("/users?range=1h").text


def test_request_detail_renders_bodies_inert_and_org_b_gets_404(seeded: tuple[str, str], services: Services) -> None:
    server, _ = seeded
    client = login(server)
    html = client.get("/requests/p3").text
    # claude-haiku-4-5 at $1 in / $5 out per million: 200 in, 50 out
    assert re.search(r'id="cost-breakdown"><span class="chip">input: 200 tokens, \$0.0002</span><span class="chip">output: 50 tokens, \$0.00025</span>', html)
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<img src=x" not in html and "&lt;img src=x onerror=alert(2)&gt;" in html
    services.control.create_user("bob@b.example", PASSWORD, org_id="org-b")
    other = login(server, "bob@b.example")
    assert other.get("/requests/p3").status_code == 404
    assert "p3" not in other.get("/requests?range=30d").text


def test_csrf_is_required_on_forms_and_keys_are_shown_once(seeded: tuple[str, str], services: Services) -> None:
    server, _ = seeded
    client = login(server)
    assert client.post("/settings/keys", data={"name": "ci"}).status_code == 403
    page = client.get("/settings").text
    created = client.post("/settings/keys", data={"name": "ci", "csrf": csrf_of(page)})
    key = re.search(r'id="new-key">(sk-llmlens-[^<]+)<', created.text).group(1)  # type: ignore[union-attr]
    assert key not in client.get("/settings").text
    key_id = next(k.id for k in services.control.list_keys() if k.name == "ci")
    assert client.post(f"/settings/keys/{key_id}/revoke", data={"csrf": "x"}).status_code == 403
    assert client.post(f"/settings/keys/{key_id}/revoke", data={"csrf": csrf_of(page)}).status_code == 303
    assert httpx.get(f"{server}/api/v1/requests", headers={"Authorization": f"Bearer {key}"}).status_code == 401


def test_exports_match_the_api(seeded: tuple[str, str]) -> None:
    server, key = seeded
    client = login(server)
    api = httpx.get(f"{server}/api/v1/requests?limit=1000", headers={"Authorization": f"Bearer {key}"}).json()["data"]
    jsonl = [orjson.loads(line) for line in client.get("/requests/export.jsonl?range=30d").text.splitlines()]
    assert jsonl == api
    rows = list(csv.DictReader(io.StringIO(client.get("/requests/export.csv?range=30d").text)))
    assert [(r["request_id"], r["cost_usd"], orjson.loads(r["properties"])) for r in rows] == [
        (a["request_id"], a["cost_usd"] or "", a["properties"]) for a in api]


def test_an_export_longer_than_a_page_is_whole_and_in_order(server: str, api_key: str, services: Services) -> None:
    from dashboard.pages import EXPORT_PAGE

    n = EXPORT_PAGE * 2 + 17
    base = datetime.now(UTC) - timedelta(hours=2)
    events = [{"request_id": f"e{i:06d}", "created_at": (base + timedelta(milliseconds=i % 997)).isoformat().replace("+00:00", "Z"),
               "model": "gpt-4o", "cost_usd": "0.000001"} for i in range(n)]  # many share a millisecond: ties break on the id
    for start in range(0, n, 10_000):
        assert httpx.post(f"{server}/api/v1/logs", json=events[start:start + 10_000],
                          headers={"Authorization": f"Bearer {api_key}"}).status_code == 202
    deadline = time.monotonic() + 30
    while services.ch.query("SELECT count() AS n FROM request_events FINAL") != [{"n": n}]:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    services.control.create_user("ada@example.com", PASSWORD)
    client = login(server)
    rows = list(csv.DictReader(io.StringIO(client.get("/requests/export.csv?range=24h").text)))
    expected = sorted(events, key=lambda e: (e["created_at"], e["request_id"]), reverse=True)
    assert [r["request_id"] for r in rows] == [e["request_id"] for e in expected]


def test_requests_page_filters_and_pages(seeded: tuple[str, str]) -> None:
    server, _ = seeded
    client = login(server)
    html = client.get("/requests?range=1h&status_class=5xx").text
    assert 'href="/requests/p2"' in html and 'href="/requests/p1"' not in html
    assert client.get("/requests?colour=red").status_code == 400


def test_setup_link_creates_the_first_admin_once(server: str, services: Services) -> None:
    link = setup_link(services)
    assert link is not None
    path = "/setup/" + link.rsplit("/", 1)[1]
    r = httpx.post(f"{server}{path}", data={"email": "first@example.com", "password": PASSWORD})
    assert r.status_code == 303
    assert httpx.post(f"{server}{path}", data={"email": "second@example.com", "password": PASSWORD}).status_code == 404
    assert setup_link(services) is None
    login(server, "first@example.com")


def test_rate_limits_and_budgets_from_the_settings_page(seeded: tuple[str, str], services: Services) -> None:
    server, key = seeded
    client = login(server)
    token = csrf_of(client.get("/settings").text)
    bad = client.post("/settings/rate-limits", data={"policy": "lots", "csrf": token})
    assert bad.status_code == 400 and "is not &#39;&lt;quota&gt;;w=&lt;seconds&gt;" in bad.text
    assert client.post("/settings/rate-limits", data={"policy": "100;w=60;s=user", "name": "per user", "csrf": token}).status_code == 303
    assert client.post("/settings/budgets", data={"scope": "user", "value": "alice", "period": "month",
                                                  "limit_usd": "12.50", "csrf": token}).status_code == 303
    assert client.post("/settings/budgets", data={"scope": "user", "value": "x", "period": "year",
                                                  "limit_usd": "1", "csrf": token}).status_code == 400
    page = client.get("/settings").text
    assert "<code>100;w=60;s=user</code>" in page and "$12.500000000" in page
    auth = {"Authorization": f"Bearer {key}"}
    assert [p["policy"] for p in httpx.get(f"{server}/api/v1/rate-limits", headers=auth).json()["data"]] == ["100;w=60;s=user"]
    (budget,) = httpx.get(f"{server}/api/v1/budgets", headers=auth).json()["data"]
    assert (budget["value"], budget["period"], budget["limit_usd"]) == ("alice", "month", "12.500000000")
    assert client.post(f"/settings/budgets/{budget['id']}/delete", data={"csrf": token}).status_code == 303
    assert httpx.get(f"{server}/api/v1/budgets", headers=auth).json()["data"] == []


def test_trace_lists_the_queries_behind_a_page(seeded: tuple[str, str]) -> None:
    server, _ = seeded
    client = login(server)
    page = client.get("/?range=1h&_trace=1")
    assert page.status_code == 200
    names = re.findall(r"<tr><td>([a-z_]+)</td><td>(\d+)</td><td>[\d.]+</td></tr>", page.text)
    assert sorted(names) == [("overview_kpis", "1"), ("overview_series", "4"), ("property_keys", "1"),
                             ("property_values", "2"), ("top_model", "3"), ("top_user", "3")]
    assert 'id="query-trace"' not in client.get("/?range=1h").text
