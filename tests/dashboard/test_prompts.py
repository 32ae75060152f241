"""Prompts: templates registered and versioned in PostgreSQL, per-version metrics and scores from seeded traffic,
side-by-side comparison with a template diff, the pages, and org scoping."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from llmlens.app import Services
from tests.dashboard.test_pages import PASSWORD, csrf_of, login


def iso(minutes_ago: float) -> str:
    return (datetime.now(UTC) - timedelta(minutes=minutes_ago)).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


V1 = {"prompt_id": "support-answer", "model": "gpt-4o-mini", "parameters": {"temperature": 0.2},
      "messages": [{"role": "system", "content": "You are a support agent for {{product}}."},
                   {"role": "user", "content": "Answer {{customer}}:\n{{question}}"}]}
V2 = {**V1, "parameters": {"temperature": 0.0}, "note": "more formal",
      "messages": [{"role": "system", "content": "You are a formal support agent for {{product}}."},
                   {"role": "user", "content": "Answer {{customer}}:\n{{question}}"}]}


def api(server: str, key: str, method: str, path: str, body: Any = None, **params: str) -> httpx.Response:
    return httpx.request(method, f"{server}{path}", json=body, params=params, headers={"Authorization": f"Bearer {key}"})


def seed(server: str, key: str, services: Services) -> None:
    events = [
        # version 1: three calls, one failing
        {"request_id": "v1-a", "created_at": iso(9), "model": "gpt-4o-mini", "status": 200, "latency_ms": 100,
         "prompt_tokens": 100, "completion_tokens": 10, "cost_usd": "0.001", "prompt_id": "support-answer", "prompt_version": "1"},
        {"request_id": "v1-b", "created_at": iso(8), "model": "gpt-4o-mini", "status": 200, "latency_ms": 300,
         "prompt_tokens": 200, "completion_tokens": 20, "cost_usd": "0.002", "prompt_id": "support-answer", "prompt_version": "1"},
        {"request_id": "v1-c", "created_at": iso(7), "model": "gpt-4o-mini", "status": 500, "latency_ms": 900,
         "prompt_tokens": 50, "completion_tokens": 0, "cost_usd": "0.0005", "prompt_id": "support-answer", "prompt_version": "1"},
        # version 2: two calls
        {"request_id": "v2-a", "created_at": iso(6), "model": "gpt-4o-mini", "status": 200, "latency_ms": 200,
         "prompt_tokens": 120, "completion_tokens": 30, "cost_usd": "0.0015", "prompt_id": "support-answer", "prompt_version": "2"},
        {"request_id": "v2-b", "created_at": iso(5), "model": "gpt-4o-mini", "status": 200, "latency_ms": 400,
         "prompt_tokens": 80, "completion_tokens": 40, "cost_usd": "0.0025", "prompt_id": "support-answer", "prompt_version": "2"},
        # another prompt, only seen in traffic
        {"request_id": "o-a", "created_at": iso(4), "model": "gpt-4o", "status": 200, "latency_ms": 50,
         "cost_usd": "0.01", "prompt_id": "triage", "prompt_version": "7"},
    ]
    assert api(server, key, "POST", "/api/v1/logs", events).status_code == 202
    deadline = time.monotonic() + 15
    while services.ch.query("SELECT count() AS n FROM request_events FINAL") != [{"n": len(events)}]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    for rid, scores in [("v1-a", {"accuracy": 4, "helpful": True}), ("v1-b", {"accuracy": 2}),
                        ("v2-a", {"accuracy": 5, "helpful": True}), ("v2-b", {"accuracy": 4, "helpful": False})]:
        r = api(server, key, "POST", f"/v1/request/{rid}/score", {"scores": scores})
        assert r.status_code == 200, r.text


def test_register_versions_and_their_metrics(server: str, api_key: str, services: Services) -> None:
    r1 = api(server, api_key, "POST", "/api/v1/prompts", V1)
    assert r1.status_code == 201, r1.text
    v1 = r1.json()
    assert {k: v for k, v in v1.items() if k != "created_at"} == {
        "prompt_id": "support-answer", "version": 1, "messages": V1["messages"], "model": "gpt-4o-mini",
        "parameters": {"temperature": 0.2}, "variables": ["product", "customer", "question"], "note": "",
        "created_by": f"api key {services.control.list_keys()[0].id}"}
    assert api(server, api_key, "POST", "/api/v1/prompts", V2).json()["version"] == 2
    seed(server, api_key, services)

    listed = api(server, api_key, "GET", "/api/v1/prompts", range="1h").json()["data"]
    assert [(p["prompt_id"], p["registered_versions"], p["versions_seen"], p["requests"], p["cost_usd"]) for p in listed] == [
        ("support-answer", [1, 2], 2, 5, "0.007500000"), ("triage", [], 1, 1, "0.010000000")]

    got = api(server, api_key, "GET", "/api/v1/prompts/support-answer/versions", range="1h").json()
    assert got["prompt_id"] == "support-answer"
    assert [(v["version"], v["metrics"]) for v in got["versions"]] == [
        ("1", {"requests": 3, "cost_usd": "0.003500000", "tokens": 380, "latency_p50_ms": 300, "latency_p95_ms": 900,
               "error_rate": 0.3333, "scores": {"accuracy": {"avg": 3.0, "count": 2}, "helpful": {"avg": 1.0, "count": 1}}}),
        ("2", {"requests": 2, "cost_usd": "0.004000000", "tokens": 270, "latency_p50_ms": 400, "latency_p95_ms": 400,
               "error_rate": 0.0, "scores": {"accuracy": {"avg": 4.5, "count": 2}, "helpful": {"avg": 0.5, "count": 2}}}),
    ]
    assert [v["template"]["version"] for v in got["versions"]] == [1, 2]
    seen_only = api(server, api_key, "GET", "/api/v1/prompts/triage/versions", range="1h").json()["versions"]
    assert [(v["version"], v["template"], v["metrics"]["requests"]) for v in seen_only] == [("7", None, 1)]

    c = api(server, api_key, "GET", "/api/v1/prompts/support-answer/compare", a="1", b="2", range="1h").json()
    assert (c["a"]["version"], c["b"]["version"], c["a"]["metrics"]["requests"], c["b"]["metrics"]["requests"]) == ("1", "2", 3, 2)
    assert c["diff"] == [
        "--- version 1", "+++ version 2", "@@ -1,7 +1,7 @@", " model: gpt-4o-mini",
        '-parameters: {"temperature":0.2}', '+parameters: {"temperature":0.0}', " [system]",
        "-You are a support agent for {{product}}.", "+You are a formal support agent for {{product}}.", " [user]",
        " Answer {{customer}}:", " {{question}}"]
    r = api(server, api_key, "GET", "/api/v1/prompts/support-answer/compare", a="1", b="9", range="1h")
    assert (r.status_code, r.json()) == (400, {"error": "prompt 'support-answer' has no version '9' (in this range or registered)"})
    r = api(server, api_key, "GET", "/api/v1/prompts/support-answer/compare", a="1")
    assert (r.status_code, r.json()) == (400, {"error": "compare needs two versions: ?a=<version>&b=<version>"})
    r = api(server, api_key, "GET", "/api/v1/prompts/nope/versions")
    assert (r.status_code, r.json()) == (404, {"error": "no prompt 'nope' in this org"})

    services.control.ensure_org("org-b")
    _, key_b = services.control.create_key("b", org_id="org-b")
    assert api(server, key_b, "GET", "/api/v1/prompts", range="30d").json() == {"data": []}
    assert api(server, key_b, "GET", "/api/v1/prompts/support-answer/versions").status_code == 404
    # org B registering the same id starts its own history
    assert api(server, key_b, "POST", "/api/v1/prompts", V1).json()["version"] == 1


@pytest.mark.parametrize(("body", "error"), [
    ({**V1, "prompt_id": ""}, "prompt_id must be 1 to 128 letters, digits or . _ : / - (what clients send as Helicone-Prompt-Id)"),
    ({**V1, "prompt_id": "has space"}, "prompt_id must be 1 to 128 letters, digits or . _ : / - (what clients send as Helicone-Prompt-Id)"),
    ({**V1, "messages": []}, "messages must be a list of 1 to 100 {role, content} objects"),
    ({**V1, "messages": [{"role": "user"}]}, "messages[0] must be an object with exactly role and content"),
    ({**V1, "messages": [{"role": "robot", "content": "x"}]},
     "messages[0].role must be one of system, developer, user, assistant, tool, not 'robot'"),
    ({**V1, "messages": [{"role": "user", "content": " "}]}, "messages[0].content must be a non-empty string"),
    ({**V1, "parameters": [1]}, 'parameters must be an object of at most 50 settings, e.g. {"temperature": 0.2}'),
    ({**V1, "model": 4}, "model must be a string of at most 200 characters"),
    ({**V1, "temperature": 1}, "unknown field 'temperature'; known: messages, model, note, parameters, prompt_id"),
    ("text", "expected a JSON object"),
])
def test_bad_prompts_get_clear_400s(server: str, api_key: str, body: Any, error: str) -> None:
    r = api(server, api_key, "POST", "/api/v1/prompts", body)
    assert (r.status_code, r.json()) == (400, {"error": error})
    assert api(server, api_key, "GET", "/api/v1/prompts", range="30d").json() == {"data": []}


def test_concurrent_registrations_get_distinct_versions(server: str, api_key: str) -> None:
    got: list[int] = []
    threads = [threading.Thread(target=lambda: got.append(api(server, api_key, "POST", "/api/v1/prompts", V1).json()["version"]))
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == list(range(1, 9))


def test_prompt_pages(server: str, api_key: str, services: Services) -> None:
    seed(server, api_key, services)
    services.control.create_user("ada@example.com", PASSWORD)
    web = login(server)
    page = web.get("/prompts?range=1h")
    assert page.status_code == 200 and 'href="/prompts/support-answer?range=1h"' in page.text
    created = web.post("/prompts", data={"csrf": csrf_of(page.text), "prompt_id": "support-answer", "model": "gpt-4o-mini",
                                         "parameters": '{"temperature": 0.2}', "system": V1["messages"][0]["content"],
                                         "user": V1["messages"][1]["content"]})
    assert (created.status_code, created.headers["location"]) == (303, "/prompts/support-answer")
    bad = web.post("/prompts", data={"csrf": csrf_of(page.text), "prompt_id": "x", "parameters": "{temperature"})
    assert bad.status_code == 400 and "parameters must be a JSON object" in bad.text
    detail = web.get("/prompts/support-answer?range=1h")
    assert detail.status_code == 200 and "You are a support agent for {{product}}." in detail.text
    nxt = web.post("/prompts/support-answer/versions", data={
        "csrf": csrf_of(detail.text), "model": "gpt-4o-mini", "parameters": '{"temperature": 0.0}',
        "system": V2["messages"][0]["content"], "user": V2["messages"][1]["content"], "note": "more formal"})
    assert nxt.status_code == 303
    versions = api(server, api_key, "GET", "/api/v1/prompts/support-answer/versions", range="1h").json()["versions"]
    assert [(v["version"], v["template"]["note"], v["template"]["created_by"]) for v in versions] == [
        ("1", "", "ada@example.com"), ("2", "more formal", "ada@example.com")]
    compare = web.get("/prompts/support-answer/compare?range=1h&a=1&b=2")
    assert compare.status_code == 200
    assert '<span class="del">-You are a support agent for {{product}}.</span>' in compare.text
    assert '<span class="add">+You are a formal support agent for {{product}}.</span>' in compare.text
    assert web.get("/prompts/nope").status_code == 404
    assert httpx.get(f"{server}/prompts", follow_redirects=False).status_code == 303
