"""Helicone's async log endpoints with the shapes Helicone's own clients send (shared/reference/clients.md §1)."""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
import orjson
import pytest

from llmlens.app import Services

CHAT_RESPONSE = {
    "id": "chatcmpl-1", "object": "chat.completion", "created": 1795343663, "model": "gpt-4o-mini-2024-07-18",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi!"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15,
              "prompt_tokens_details": {"cached_tokens": 0}},
}


def manual_logger_body(**over: Any) -> dict[str, Any]:
    """What helicone-helpers 1.2.1's HeliconeManualLogger posts (captured on the wire)."""
    body = {
        "providerRequest": {"url": "custom-model-nopath", "json": {
            "model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello"}]}, "meta": {}},
        "providerResponse": {"headers": {"Helicone-Property-Source": "manual"}, "status": 200,
                             "json": {**CHAT_RESPONSE, "_type": "unknown", "toolName": "unknown"}, "textBody": None},
        "timing": {"startTime": {"seconds": 1795343663, "milliseconds": 592},
                   "endTime": {"seconds": 1795343664, "milliseconds": 170}, "timeToFirstToken": None},
    }
    body.update(over)
    return body


def stored(services: Services, n: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 15
    while True:
        rows = services.ch.query(
            "SELECT * EXCEPT (updated_at, schema_version, request_headers, response_headers) "
            "FROM request_events FINAL ORDER BY created_at, request_id")
        if len(rows) >= n or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


def post(server: str, path: str, key: str, body: Any, **headers: str) -> httpx.Response:
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    return httpx.post(f"{server}{path}", content=content,
                      headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json", **headers})


def test_manual_logger_openai_log(server: str, api_key: str, services: Services) -> None:
    rid = str(uuid.uuid4())
    r = post(server, "/oai/v1/log", api_key, manual_logger_body(), **{
        "Helicone-Property-Source": "manual", "Helicone-User-Id": "u1", "Helicone-Session-Id": "sess",
        "Helicone-Session-Path": "/a/b", "Helicone-Session-Name": "Agent", "Helicone-Request-Id": rid})
    assert (r.status_code, r.text, r.headers["helicone-id"]) == (200, "ok", rid)
    (row,) = stored(services, 1)
    assert {k: row[k] for k in ("request_id", "created_at", "provider", "model", "path", "target_url", "status",
                                "latency_ms", "ttft_ms", "prompt_tokens", "completion_tokens", "user_id",
                                "session_id", "session_path", "session_name", "properties", "source", "stream",
                                "error")} == {
        "request_id": rid, "created_at": "2026-11-22 10:34:23.592", "provider": "openai",
        "model": "gpt-4o-mini-2024-07-18", "path": "custom-model-nopath", "target_url": "custom-model-nopath",
        "status": 200, "latency_ms": 578, "ttft_ms": None, "prompt_tokens": 12, "completion_tokens": 3,
        "user_id": "u1", "session_id": "sess", "session_path": "/a/b", "session_name": "Agent",
        "properties": {"source": "manual"}, "source": "async", "stream": False, "error": "",
    }
    assert orjson.loads(row["request_body"])["messages"] == [{"role": "user", "content": "Hello"}]


def test_legacy_helicone_package_meta_properties_and_http_headers_win(server: str, api_key: str, services: Services) -> None:
    body = manual_logger_body()
    body["providerRequest"] = {"url": "N/A", "json": {"model": "gpt-4o", "messages": [], "api_key": None},
                               "meta": {"Helicone-Property-age": 25, "Helicone-User-Id": "meta-user",
                                        "Helicone-Property-Team": "from-meta"}}
    r = post(server, "/oai/v1/log", api_key, body, **{"Helicone-Property-Team": "from-header"})
    assert r.status_code == 200
    (row,) = stored(services, 1)
    assert (row["user_id"], row["properties"]) == ("meta-user", {"age": "25", "team": "from-header"})


def test_litellm_style_auth_in_meta_and_iso_timing(server: str, api_key: str, services: Services) -> None:
    body = manual_logger_body(timing={"startTime": "2026-11-01T10:00:00.000Z", "endTime": "2026-11-01T10:00:01.250Z"})
    body["providerRequest"]["meta"] = {"Helicone-Auth": f"Bearer {api_key}"}
    body["providerRequest"]["url"] = "https://api.openai.com/v1"
    r = httpx.post(f"{server}/oai/v1/log", json=body)
    assert r.status_code == 200, r.text
    (row,) = stored(services, 1)
    assert (row["created_at"], row["latency_ms"], row["path"]) == ("2026-11-01 10:00:00.000", 1250, "/v1")


def test_streamed_text_body_and_cancelled_status(server: str, api_key: str, services: Services) -> None:
    chunks = [
        {"id": "c", "model": "gpt-4o-mini", "choices": [{"index": 0, "delta": {"content": "Hel"}}]},
        {"id": "c", "model": "gpt-4o-mini", "choices": [{"index": 0, "delta": {"content": "lo"}}]},
        {"id": "c", "model": "gpt-4o-mini", "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 2,
                                                                    "total_tokens": 11}},
    ]
    text = "\n".join(orjson.dumps(c).decode() for c in chunks)
    body = manual_logger_body()
    body["providerRequest"]["json"]["stream"] = True
    body["providerResponse"] = {"json": {}, "textBody": text, "status": -3, "headers": {}}
    body["timing"]["timeToFirstToken"] = 11.67
    assert post(server, "/custom/v1/log", api_key, body).status_code == 200
    (row,) = stored(services, 1)
    assert {k: row[k] for k in ("provider", "model", "stream", "ttft_ms", "prompt_tokens", "completion_tokens",
                                "status", "error")} == {
        "provider": "custom", "model": "gpt-4o-mini", "stream": True, "ttft_ms": 11, "prompt_tokens": 9,
        "completion_tokens": 2, "status": -3, "error": "the stream was cancelled by the client"}
    assert row["response_body"] == text


def test_anthropic_log_and_provider_cost_wins(server: str, api_key: str, services: Services) -> None:
    body = manual_logger_body()
    body["providerRequest"]["json"] = {"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": []}
    body["providerResponse"] = {"status": 200, "headers": {}, "cost": 0.0123, "json": {
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5-20250929",
        "content": [{"type": "text", "text": "hi"}], "stop_reason": "end_turn",
        "usage": {"input_tokens": 10, "output_tokens": 5, "cache_read_input_tokens": 100,
                  "cache_creation_input_tokens": 20}}}
    assert post(server, "/anthropic/v1/log", api_key, body).status_code == 200
    (row,) = stored(services, 1)
    assert {k: row[k] for k in ("provider", "model", "prompt_tokens", "completion_tokens", "cache_read_tokens",
                                "cache_write_tokens", "cost_nanos")} == {
        "provider": "anthropic", "model": "claude-sonnet-4-5-20250929", "prompt_tokens": 130,
        "completion_tokens": 5, "cache_read_tokens": 100, "cache_write_tokens": 20, "cost_nanos": 12_300_000}


@pytest.mark.parametrize("path", ["/v1/trace/custom/v1/log", "/v1/trace/custom/log", "/googleapis/v1/log"])
def test_self_host_paths(server: str, api_key: str, services: Services, path: str) -> None:
    assert post(server, path, api_key, manual_logger_body()).status_code == 200
    (row,) = stored(services, 1)
    assert row["provider"] == ("google" if "google" in path else "custom")


def test_same_log_twice_counts_once(server: str, api_key: str, services: Services) -> None:
    body = manual_logger_body()
    ids = {post(server, "/custom/v1/log", api_key, body).headers["helicone-id"] for _ in range(3)}
    assert len(ids) == 1
    time.sleep(0.3)
    assert [r["request_id"] for r in stored(services, 1)] == list(ids)


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"{not json", None),
        ([1, 2], "expected a JSON object with providerRequest and providerResponse"),
        ({"providerResponse": {}}, "providerRequest must be an object and is missing"),
        ({"providerRequest": {"json": {}}, "providerResponse": "x"}, "providerResponse must be an object"),
        ({"providerRequest": {"json": []}, "providerResponse": {}}, "providerRequest.json must be an object"),
        ({"providerRequest": {}, "providerResponse": {"status": "200"}},
         "providerResponse.status must be an HTTP status code, not '200'"),
        ({"providerRequest": {}, "providerResponse": {}, "timing": {
            "startTime": {"seconds": 10, "milliseconds": 0}, "endTime": {"seconds": 5, "milliseconds": 0}}},
         "timing.endTime is before timing.startTime"),
        ({"providerRequest": {}, "providerResponse": {}, "timing": {"startTime": "soon"}},
         "timing.startTime 'soon' is not an ISO 8601 time"),
        ({"providerRequest": {}, "providerResponse": {"cost": "lots"}},
         "providerResponse.cost must be a non-negative number of USD, not 'lots'"),
        ({"providerRequest": {"meta": "x"}, "providerResponse": {}}, "providerRequest.meta must be an object"),
    ],
)
def test_bad_input_is_400_and_stores_nothing(server: str, api_key: str, services: Services, body: Any, error: str | None) -> None:
    r = post(server, "/custom/v1/log", api_key, body)
    assert r.status_code == 400
    if error is None:
        assert r.json()["error"].startswith("the body is not valid JSON")
    else:
        assert r.json() == {"error": error}
    time.sleep(0.2)
    assert services.ch.query("SELECT count() AS n FROM request_events") == [{"n": 0}]


def test_auth_required(server: str) -> None:
    r = httpx.post(f"{server}/oai/v1/log", json=manual_logger_body())
    assert (r.status_code, r.json()) == (401, {"error": "Authorization header is missing; expected 'Bearer <llmlens API key>'"})
    r = post(server, "/oai/v1/log", "sk-llmlens-nope", manual_logger_body())
    assert (r.status_code, r.json()) == (401, {"error": "the API key is unknown or revoked"})
