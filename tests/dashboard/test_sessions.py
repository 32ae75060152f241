"""Sessions: a multi-step agent run through the proxy (real SDKs) plus a tool step logged through the async
endpoint → the session's tree, totals and timeline; the sessions list, per-name stats and pages."""

from __future__ import annotations

import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import openai
import pytest

from llmlens.settings import Settings
from tests.dashboard.test_pages import PASSWORD, login
from tests.fake_provider import FakeProvider
from tests.proxied import Proxied, running


@pytest.fixture
def agent(settings: Settings) -> Iterator[Proxied]:
    with FakeProvider() as fake, running(settings, fake) as p:
        yield p


def session_headers(path: str, sid: str = "run-1", name: str = "Research agent") -> dict[str, str]:
    return {"Helicone-Session-Id": sid, "Helicone-Session-Path": path, "Helicone-Session-Name": name}


def chat(p: Proxied, path: str, text: str, **headers: str) -> Any:
    client = p.openai(**{**session_headers(path), **headers})
    return client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": text}])


def run_agent(p: Proxied) -> None:
    """plan → search → fetch (a tool step, then a call that fails) → answer (Anthropic)."""
    chat(p, "/plan", "Plan a search for llama facts")
    chat(p, "/plan/search", "search terms for llama facts")
    start = time.time()
    time.sleep(0.02)
    tool = {
        "providerRequest": {"url": "fetch_url", "json": {"_type": "tool", "toolName": "fetch_url",
                                                         "input": {"url": "https://example.com/llamas"}}, "meta": {}},
        "providerResponse": {"json": {"_type": "tool", "toolName": "fetch_url", "status": "ok", "bytes": 5120},
                             "status": 200, "headers": {}},
        "timing": {"startTime": {"seconds": int(start), "milliseconds": int(start * 1000) % 1000},
                   "endTime": {"seconds": int(start + 0.25), "milliseconds": int((start + 0.25) * 1000) % 1000}},
    }
    r = httpx.post(f"{p.url}/custom/v1/log", json=tool, headers={
        "Authorization": f"Bearer {p.key}", **session_headers("/plan/search/fetch")})
    assert r.status_code == 200, r.text
    time.sleep(0.3)  # the proxied calls below start after the tool step has ended
    p.fake.fail_next(status=500, body={"error": {"message": "upstream exploded", "type": "server_error"}})
    with pytest.raises(openai.InternalServerError):
        chat(p, "/plan/search/fetch", "summarise the fetched page")
    client = p.anthropic(headers=session_headers("/answer"), api_key="sk-ant-provider-secret")
    client.messages.create(model="claude-haiku-4-5", max_tokens=64, messages=[{"role": "user", "content": "Answer"}])
    # another session of the same name, and one of another name
    chat(p, "/plan", "Plan again", **session_headers("/plan", sid="run-2"))
    chat(p, "/", "hello", **session_headers("/", sid="chat-1", name="Chat"))


def test_agent_run_tree_totals_and_timeline(agent: Proxied) -> None:
    run_agent(agent)
    agent.events(7)
    auth = {"Authorization": f"Bearer {agent.key}"}
    items = httpx.get(f"{agent.url}/api/v1/requests", params={"session_id": "run-1"}, headers=auth).json()["data"]
    items.sort(key=lambda i: (i["created_at"], i["request_id"]))
    assert [(i["session_path"], i["model"], i["status"]) for i in items] == [
        ("/plan", "gpt-4o-mini-2024-07-18", 200), ("/plan/search", "gpt-4o-mini-2024-07-18", 200),
        ("/plan/search/fetch", "", 200),  # the tool step
        ("/plan/search/fetch", "gpt-4o-mini", 500),  # the failing call: the model asked for (no response to say more)
        ("/answer", "claude-haiku-4-5-20260101", 200)]
    by_path: dict[str, list[dict[str, Any]]] = {}
    for i in items:
        by_path.setdefault(i["session_path"], []).append(i)
    full = {i["request_id"]: httpx.get(f"{agent.url}/api/v1/requests/{i['request_id']}", headers=auth).json() for i in items}

    def totals(steps: list[dict[str, Any]]) -> dict[str, Any]:
        priced = [Decimal(s["cost_usd"]) for s in steps if s["cost_usd"] is not None]
        return {"requests": len(steps), "cost_usd": format(sum(priced, Decimal(0)), "f") if priced else None,
                "unpriced": len(steps) - len(priced),
                "tokens": sum(s["prompt_tokens"] + s["completion_tokens"] for s in steps),
                "latency_ms": sum(s["latency_ms"] for s in steps),
                "errors": sum(1 for s in steps if s["status"] >= 400)}

    s = httpx.get(f"{agent.url}/api/v1/sessions/run-1", headers=auth).json()
    fetch, search, plan, answer = (by_path["/plan/search/fetch"], by_path["/plan/search"], by_path["/plan"],
                                   by_path["/answer"])
    tree = s["tree"]

    def shape(node: dict[str, Any]) -> Any:
        return (node["path"], node["totals"], [st["request_id"] for st in node["steps"]], [shape(c) for c in node["children"]])

    assert shape(tree) == ("/", totals(items), [], [
        ("/plan", totals(plan + search + fetch), [plan[0]["request_id"]], [
            ("/plan/search", totals(search + fetch), [search[0]["request_id"]], [
                ("/plan/search/fetch", totals(fetch), [f["request_id"] for f in fetch], [])])]),
        ("/answer", totals(answer), [answer[0]["request_id"]], [])])
    assert totals(items)["errors"] == 1 and totals(fetch)["latency_ms"] >= 250  # the tool step's own 250 ms
    assert fetch[0]["latency_ms"] == 250
    # the timeline: every step, in order, from its start to its end (ms since the session's first start)
    t0 = items[0]["created_at"]

    def ms(a: str, b: str) -> int:
        from datetime import datetime

        def parse(x: str) -> datetime:
            return datetime.fromisoformat(x.replace("Z", "+00:00"))

        return round((parse(b) - parse(a)).total_seconds() * 1000)

    assert [(st["request_id"], st["offset_ms"], st["latency_ms"], st["status"], st["path"]) for st in s["timeline"]] == [
        (i["request_id"], ms(t0, i["created_at"]), i["latency_ms"], i["status"], i["session_path"]) for i in items]
    end = max(ms(t0, i["created_at"]) + i["latency_ms"] for i in items)
    assert {k: s[k] for k in ("session_id", "name", "started_at", "duration_ms", "users", "totals", "truncated")} == {
        "session_id": "run-1", "name": "Research agent", "started_at": t0, "duration_ms": end, "users": ["u42"],
        "totals": totals(items), "truncated": False}
    assert full[fetch[1]["request_id"]]["error"] != ""
    assert s["scores"] == {}
    # feedback on the session and a score on one step show on the session
    assert httpx.post(f"{agent.url}/v1/session/run-1/feedback", json={"rating": True}, headers=auth).status_code == 200
    assert httpx.post(f"{agent.url}/v1/request/{answer[0]['request_id']}/score", json={"scores": {"accuracy": 3}},
                      headers=auth).status_code == 200
    scored = httpx.get(f"{agent.url}/api/v1/sessions/run-1", headers=auth).json()
    assert scored["scores"] == {"accuracy": {"avg": 3.0, "count": 1}, "helicone-session-feedback": {"avg": 1.0, "count": 1}}
    assert [st["scores"] for st in scored["timeline"]] == [{"helicone-session-feedback": 1}, {}, {}, {}, {"accuracy": 3}]
    assert scored["totals"] == s["totals"]  # a new row version, not a new request

    listed = httpx.get(f"{agent.url}/api/v1/sessions", params={"range": "1h"}, headers=auth).json()
    run1 = next(r for r in listed["sessions"] if r["session_id"] == "run-1")
    assert run1 == {"session_id": "run-1", "name": "Research agent", "requests": 5, "cost_usd": totals(items)["cost_usd"],
                    "tokens": totals(items)["tokens"], "started_at": t0,
                    "ended_at": run1["ended_at"], "duration_ms": end, "users": 1, "errors": 1}
    assert ms(t0, run1["ended_at"]) == end
    assert [r["session_id"] for r in listed["sessions"]] == ["chat-1", "run-2", "run-1"]  # newest first
    names = {n["name"]: n for n in listed["by_name"]}
    assert (names["Research agent"]["sessions"], names["Research agent"]["requests"], names["Chat"]["sessions"]) == (2, 6, 1)
    run2 = next(r for r in listed["sessions"] if r["session_id"] == "run-2")
    avg = (Decimal(run1["cost_usd"]) + Decimal(run2["cost_usd"])) / 2
    assert Decimal(names["Research agent"]["avg_cost_usd"]) == avg.quantize(Decimal("1e-9"))
    assert names["Research agent"]["avg_duration_ms"] == round((run1["duration_ms"] + run2["duration_ms"]) / 2)

    # filters apply to the list; unknown sessions and other orgs get 404
    only = httpx.get(f"{agent.url}/api/v1/sessions", params={"range": "1h", "model": "claude-haiku-4-5-20260101"},
                     headers=auth).json()
    assert [(r["session_id"], r["requests"]) for r in only["sessions"]] == [("run-1", 1)]
    assert httpx.get(f"{agent.url}/api/v1/sessions/nope", headers=auth).status_code == 404
    agent.services.control.ensure_org("org-b")
    _, key_b = agent.services.control.create_key("b", org_id="org-b")
    r = httpx.get(f"{agent.url}/api/v1/sessions/run-1", headers={"Authorization": f"Bearer {key_b}"})
    assert (r.status_code, r.json()) == (404, {"error": "no session 'run-1' in this org"})

    # the pages
    agent.services.control.create_user("ada@example.com", PASSWORD)
    web = login(agent.url)
    page = web.get("/sessions?range=1h")
    assert page.status_code == 200 and 'href="/sessions/run-1"' in page.text and "Research agent" in page.text
    detail = web.get("/sessions/run-1")
    assert detail.status_code == 200
    for i in items:
        assert f'href="/requests/{i["request_id"]}"' in detail.text
    assert detail.text.count('class="node"') == 5  # root, plan, search, fetch, answer
    assert web.get("/sessions/nope").status_code == 404


def test_an_otlp_trace_is_a_session_with_the_same_tree(server: str, api_key: str, services: Any) -> None:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    chat = {"gen_ai.provider.name": "openai", "gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o-mini",
            "gen_ai.usage.input_tokens": 100, "gen_ai.usage.output_tokens": 10}
    provider = TracerProvider(resource=Resource.create({"service.name": "research-agent"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(
        endpoint=f"{server}/v1/traces", headers={"Authorization": f"Bearer {api_key}"})))
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("research", attributes={"traceloop.span.kind": "workflow"}) as root:
        trace_id = format(root.get_span_context().trace_id, "032x")
        with tracer.start_as_current_span("plan.chat", attributes=chat):
            time.sleep(0.01)
        with tracer.start_as_current_span("search", attributes={"traceloop.span.kind": "task"}):
            with tracer.start_as_current_span("fetch.tool", attributes={"traceloop.span.kind": "tool"}):
                time.sleep(0.01)
            with tracer.start_as_current_span("summarise.chat", attributes=chat):
                time.sleep(0.01)
    provider.force_flush()
    provider.shutdown()
    auth = {"Authorization": f"Bearer {api_key}"}
    deadline = time.monotonic() + 15
    while httpx.get(f"{server}/api/v1/sessions/{trace_id}", headers=auth).status_code == 404:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    while len((s := httpx.get(f"{server}/api/v1/sessions/{trace_id}", headers=auth).json())["timeline"]) < 3:
        assert time.monotonic() < deadline
        time.sleep(0.05)

    def shape(node: dict[str, Any]) -> Any:
        return (node["path"], node["totals"]["requests"], node["totals"]["tokens"],
                [st["model"] or st["endpoint"] for st in node["steps"]], [shape(c) for c in node["children"]])

    assert s["name"] == "research-agent"
    assert shape(s["tree"]) == ("/", 3, 220, [], [
        ("/research", 3, 220, [], [
            ("/research/plan.chat", 1, 110, ["gpt-4o-mini"], []),
            ("/research/search", 2, 110, [], [
                ("/research/search/fetch.tool", 1, 0, ["fetch.tool"], []),
                ("/research/search/summarise.chat", 1, 110, ["gpt-4o-mini"], [])])])])
    assert [st["path"] for st in s["timeline"]] == [
        "/research/plan.chat", "/research/search/fetch.tool", "/research/search/summarise.chat"]
