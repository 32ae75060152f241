"""GET /api/v1/requests: filters, keyset pagination, org isolation and clear errors for bad parameters."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from llmlens.app import Services


def post(server: str, key: str, events: list[dict[str, Any]]) -> None:
    r = httpx.post(f"{server}/api/v1/logs", json=events, headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 202, r.text


def get(server: str, key: str, **params: str) -> httpx.Response:
    return httpx.get(f"{server}/api/v1/requests", params=params, headers={"Authorization": f"Bearer {key}"})


def settle(server: str, key: str, n: int) -> None:
    deadline = time.monotonic() + 15
    while len(get(server, key, limit="1000").json()["data"]) < n:
        assert time.monotonic() < deadline, "events did not arrive"
        time.sleep(0.05)


SEED = [
    {"request_id": f"r{i}", "created_at": f"2026-11-2{i % 3}T10:00:0{i}Z", "model": m, "provider": p, "status": s,
     "user_id": u, "session_id": "s1" if i < 3 else "", "prompt_id": "p1" if i % 2 else "",
     "properties": {"Team": t, "Env": "prod"}}
    for i, (m, p, s, u, t) in enumerate([
        ("gpt-4o", "openai", 200, "alice", "search"),
        ("gpt-4o-mini", "openai", 200, "bob", "search"),
        ("claude-sonnet-4-5", "anthropic", 500, "alice", "chat"),
        ("gpt-4o", "openai", 429, "carol", "chat"),
        ("claude-haiku-4-5", "anthropic", 200, "bob", "search"),
    ])
]


@pytest.fixture
def seeded(server: str, api_key: str) -> tuple[str, str]:
    post(server, api_key, SEED)
    settle(server, api_key, len(SEED))
    return server, api_key


def ids(resp: httpx.Response) -> list[str]:
    assert resp.status_code == 200, resp.text
    return [r["request_id"] for r in resp.json()["data"]]


def test_filters(seeded: tuple[str, str]) -> None:
    server, key = seeded
    assert ids(get(server, key)) == ["r2", "r4", "r1", "r3", "r0"]  # newest first
    assert ids(get(server, key, model="gpt-4o")) == ["r3", "r0"]
    assert ids(get(server, key, provider="anthropic")) == ["r2", "r4"]
    assert ids(get(server, key, status="500")) == ["r2"]
    assert ids(get(server, key, status_class="4xx")) == ["r3"]
    assert ids(get(server, key, user_id="bob")) == ["r4", "r1"]
    assert ids(get(server, key, session_id="s1")) == ["r2", "r1", "r0"]
    assert ids(get(server, key, prompt_id="p1")) == ["r1", "r3"]
    assert ids(get(server, key, **{"property.Team": "chat"})) == ["r2", "r3"]
    assert ids(get(server, key, **{"property.Team": "search", "property.Env": "prod", "model": "gpt-4o"})) == ["r0"]
    assert ids(get(server, key, start="2026-11-21T00:00:00Z", end="2026-11-22T00:00:00Z")) == ["r4", "r1"]


def test_keyset_pagination_walks_everything_once(seeded: tuple[str, str]) -> None:
    server, key = seeded
    seen, cursor, pages = [], None, 0
    while True:
        body = get(server, key, limit="2", **({"cursor": cursor} if cursor else {})).json()
        seen += [r["request_id"] for r in body["data"]]
        cursor, pages = body["next_cursor"], pages + 1
        if cursor is None:
            break
    assert (seen, pages) == (["r2", "r4", "r1", "r3", "r0"], 3)


def test_org_isolation(seeded: tuple[str, str], services: Services) -> None:
    server, key_a = seeded
    key_b = services.control.create_key("other", org_id="org-b")[1]
    assert get(server, key_b).json() == {"data": [], "next_cursor": None}
    assert get(server, key_b, user_id="alice").json()["data"] == []
    assert get(server, key_b, **{"property.Team": "chat"}).json()["data"] == []
    r = httpx.get(f"{server}/api/v1/requests/r0", headers={"Authorization": f"Bearer {key_b}"})
    assert (r.status_code, r.json()) == (404, {"error": "no request 'r0' in this org"})
    # and B's own events stay B's
    post(server, key_b, [{"request_id": "b0", "model": "gpt-4o"}])
    settle(server, key_b, 1)
    assert ids(get(server, key_b)) == ["b0"]
    assert "b0" not in ids(get(server, key_a))


@pytest.mark.parametrize(
    ("params", "error"),
    [
        ({"limit": "0"}, "limit must be between 1 and 1000, not 0"),
        ({"limit": "1001"}, "limit must be between 1 and 1000, not 1001"),
        ({"limit": "ten"}, "limit 'ten' is not an integer"),
        ({"cursor": "garbage!"}, "cursor 'garbage!' is not a cursor this API returned"),
        ({"colour": "red"}, "unknown filter 'colour'; known: api_key_id, cursor, end, limit, model, prompt_id, provider, "
                            "session_id, start, status, status_class, user_id, property.<Key>, score.<name>"),
        ({"status_class": "6xx"}, "status_class must be 2xx, 3xx, 4xx or 5xx, not '6xx'"),
        ({"start": "yesterday"}, "start 'yesterday' is not an ISO 8601 time"),
        ({"status": "ok"}, "status 'ok' is not an integer"),
        ({"start": "2026-11-22T00:00:00Z", "end": "2026-11-21T00:00:00Z"}, "start is after end"),
    ],
)
def test_bad_parameters_get_clear_400(server: str, api_key: str, params: dict[str, str], error: str) -> None:
    r = get(server, api_key, **params)
    assert (r.status_code, r.json()) == (400, {"error": error})


def test_auth_failures(server: str, api_key: str, services: Services) -> None:
    r = httpx.get(f"{server}/api/v1/requests")
    assert (r.status_code, r.json()) == (
        401, {"error": "Helicone-Auth or Authorization header is missing; expected 'Bearer <llmlens API key>'"})
    r = httpx.get(f"{server}/api/v1/requests", headers={"Authorization": "Basic abc"})
    assert (r.status_code, r.json()) == (
        401, {"error": "Authorization header is malformed; expected 'Bearer <llmlens API key>'"})
    r = httpx.get(f"{server}/api/v1/requests", headers={"Authorization": "Bearer sk-llmlens-nope"})
    assert (r.status_code, r.json()) == (401, {"error": "the API key is unknown or revoked"})
