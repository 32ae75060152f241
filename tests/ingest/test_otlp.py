"""OTLP/HTTP traces from the real OpenTelemetry SDK and exporter, shaped like each GenAI convention."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import Status, StatusCode

from llmlens.app import Services

CURRENT = {  # OpenLLMetry 0.62 / official GenAI semantic conventions
    "gen_ai.provider.name": "openai", "gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o-mini",
    "gen_ai.response.model": "gpt-4o-mini-2024-07-18", "gen_ai.usage.input_tokens": 120,
    "gen_ai.usage.output_tokens": 30, "gen_ai.usage.cache_read.input_tokens": 100,
    "gen_ai.input.messages": '[{"role":"user","parts":[{"type":"text","content":"Hi"}]}]',
    "gen_ai.output.messages": '[{"role":"assistant","parts":[{"type":"text","content":"Hello"}],"finish_reason":"stop"}]',
    "traceloop.association.properties.Team": "search",
    "traceloop.association.properties.Helicone-User-Id": "u7",
}
LEGACY = {  # OpenLLMetry 0.33 (what helicone-async emits)
    "gen_ai.system": "Anthropic", "llm.request.type": "chat", "gen_ai.request.model": "claude-3-5-haiku-latest",
    "gen_ai.response.model": "claude-3-5-haiku-20241022", "gen_ai.usage.prompt_tokens": 40,
    "gen_ai.usage.completion_tokens": 8, "gen_ai.prompt.0.role": "user", "gen_ai.prompt.0.content": "Hey",
    "gen_ai.completion.0.role": "assistant", "gen_ai.completion.0.content": "Yo",
    "traceloop.association.properties.Helicone-Session-Id": "sess-legacy",
}
OPENINFERENCE = {
    "openinference.span.kind": "LLM", "llm.model_name": "gpt-4o", "llm.provider": "openai",
    "llm.token_count.prompt": 15, "llm.token_count.completion": 5, "llm.token_count.total": 20,
    "llm.input_messages.0.message.role": "user", "llm.input_messages.0.message.content": "Q?",
    "llm.output_messages.0.message.role": "assistant", "llm.output_messages.0.message.content": "A.",
}


@pytest.fixture
def tracer(server: str, api_key: str) -> Iterator[Any]:
    exporter = OTLPSpanExporter(endpoint=f"{server}/v1/traces", headers={"Authorization": f"Bearer {api_key}",
                                                                          "Helicone-Property-Env": "ci"},
                                compression=Compression.Gzip)
    provider = TracerProvider(resource=Resource.create({"service.name": "agent-svc"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider.get_tracer("test")
    provider.shutdown()


def stored(services: Services, n: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 15
    while True:
        rows = services.ch.query(
            "SELECT provider, model, path, status, error, prompt_tokens, completion_tokens, cache_read_tokens,"
            " user_id, session_id, session_path, session_name, properties, source, request_body, response_body"
            " FROM request_events FINAL ORDER BY created_at, request_id")
        if len(rows) >= n or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


def test_each_convention_through_the_real_exporter(tracer: Any, services: Services) -> None:
    with tracer.start_as_current_span("agent.workflow", attributes={"traceloop.span.kind": "workflow"}) as root:
        trace_id = format(root.get_span_context().trace_id, "032x")
        for name, attrs in (("openai.chat", CURRENT), ("anthropic.chat", LEGACY), ("ChatCompletion", OPENINFERENCE)):
            with tracer.start_as_current_span(name, attributes=attrs):
                time.sleep(0.002)
        with tracer.start_as_current_span("weather.tool", attributes={"traceloop.span.kind": "tool"}) as tool:
            tool.set_status(Status(StatusCode.ERROR, "weather API down"))
    rows = stored(services, 4)
    common = {"source": "otlp", "session_name": "agent-svc"}
    assert [{k: r[k] for k in r if k not in ("request_body", "response_body")} for r in rows] == [
        {"provider": "openai", "model": "gpt-4o-mini-2024-07-18", "path": "openai.chat", "status": 200, "error": "",
         "prompt_tokens": 120, "completion_tokens": 30, "cache_read_tokens": 100, "user_id": "u7",
         "session_id": trace_id, "session_path": "/openai.chat", "properties": {"team": "search", "env": "ci"},
         **common},
        {"provider": "anthropic", "model": "claude-3-5-haiku-20241022", "path": "anthropic.chat", "status": 200,
         "error": "", "prompt_tokens": 40, "completion_tokens": 8, "cache_read_tokens": 0, "user_id": "",
         "session_id": "sess-legacy", "session_path": "/anthropic.chat", "properties": {"env": "ci"}, **common},
        {"provider": "openai", "model": "gpt-4o", "path": "ChatCompletion", "status": 200, "error": "",
         "prompt_tokens": 15, "completion_tokens": 5, "cache_read_tokens": 0, "user_id": "",
         "session_id": trace_id, "session_path": "/ChatCompletion", "properties": {"env": "ci"}, **common},
        {"provider": "tool", "model": "", "path": "weather.tool", "status": 500, "error": "weather API down",
         "prompt_tokens": 0, "completion_tokens": 0, "cache_read_tokens": 0, "user_id": "",
         "session_id": trace_id, "session_path": "/weather.tool", "properties": {"env": "ci"}, **common},
    ]
    assert orjson.loads(rows[1]["request_body"])["messages"] == [{"role": "user", "content": "Hey"}]
    assert orjson.loads(rows[2]["response_body"])["messages"] == [{"role": "assistant", "content": "A."}]


def _json_attr(k: str, v: Any) -> dict[str, Any]:
    if isinstance(v, bool):
        return {"key": k, "value": {"boolValue": v}}
    if isinstance(v, int):
        return {"key": k, "value": {"intValue": v}}  # JS sends numbers, Python strings: both accepted
    return {"key": k, "value": {"stringValue": v}}


def otlp_json(spans: list[tuple[str, str, str, dict[str, Any]]]) -> dict[str, Any]:
    return {"resourceSpans": [{"resource": {"attributes": [_json_attr("service.name", "node-app")]},
                               "scopeSpans": [{"scope": {"name": "x"}, "spans": [
        {"traceId": "5b8efff798038103d269b633813fc60c", "spanId": sid, "parentSpanId": parent, "name": name,
         "kind": 3, "startTimeUnixNano": "1795343663000000000", "endTimeUnixNano": "1795343664500000000",
         "attributes": [_json_attr(k, v) for k, v in attrs.items()], "status": {"code": 0}}
        for sid, parent, name, attrs in spans]}]}]}


def test_json_with_parentage_paths_and_idempotency(server: str, api_key: str, services: Services) -> None:
    body = otlp_json([
        ("eee19b7ec3c1b174", "", "plan.workflow", {"traceloop.span.kind": "workflow"}),
        ("eee19b7ec3c1b175", "eee19b7ec3c1b174", "openai.chat", {**CURRENT, "gen_ai.usage.input_tokens": "77"}),
    ])
    for path in ("/v1/trace/log", "/v1/trace/log", "/api/v1/traces"):
        r = httpx.post(f"{server}{path}", json=body, headers={"Authorization": f"Bearer {api_key}"})
        assert (r.status_code, r.json()) == (200, {"partialSuccess": {}})
    rows = stored(services, 1)
    time.sleep(0.3)
    rows = stored(services, 1)
    assert [(r["session_id"], r["session_path"], r["prompt_tokens"], r["session_name"]) for r in rows] == [
        ("5b8efff798038103d269b633813fc60c", "/plan.workflow/openai.chat", 77, "node-app")]


def test_bad_otlp_is_400_and_metrics_answer_200(server: str, api_key: str, services: Services) -> None:
    auth = {"Authorization": f"Bearer {api_key}"}
    r = httpx.post(f"{server}/v1/traces", content=b"\x0a\xff\xff", headers={**auth, "Content-Type": "application/x-protobuf"})
    assert r.status_code == 400 and r.json()["error"].startswith("the body is not an OTLP ExportTraceServiceRequest")
    r = httpx.post(f"{server}/v1/traces", content=b"{", headers={**auth, "Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"].startswith("the body is not valid OTLP JSON")
    r = httpx.post(f"{server}/v1/traces", json={"resourceSpans": "x"}, headers=auth)
    assert (r.status_code, r.json()) == (400, {"error": "expected an OTLP JSON object with resourceSpans"})
    r = httpx.post(f"{server}/v1/traces", json={"resourceSpans": []})
    assert r.status_code == 401
    assert httpx.post(f"{server}/v1/metrics", content=b"\x00", headers=auth).status_code == 200
    assert services.ch.query("SELECT count() AS n FROM request_events") == [{"n": 0}]
