"""POST /api/v1/logs: per-item errors by index, size limits, a full spool answers 503, nothing stored from bad input."""

from __future__ import annotations

import gzip
import time

import httpx
import orjson

from llmlens.app import Services


def post(server: str, key: str, content: bytes, **headers: str) -> httpx.Response:
    return httpx.post(f"{server}/api/v1/logs", content=content, headers={"Authorization": f"Bearer {key}", **headers})


def test_valid_items_accepted_invalid_reported_by_index(server: str, api_key: str, services: Services) -> None:
    items = [
        {"request_id": "ok-1", "model": "gpt-4o"},
        {"request_id": "bad-1", "status": "200"},
        {"request_id": "bad-2", "colour": "red"},
        {"request_id": "bad-3", "created_at": "last tuesday"},
        {"request_id": "bad-4", "properties": {"a": 1}},
        {"request_id": "bad-5", "cost_usd": "-1"},
        "not an object",
        {"request_id": "bad-7", "cost_usd": 18446744074.0},
        {"request_id": "ok-2", "model": "gpt-4o", "source": "otlp"},
    ]
    r = post(server, api_key, orjson.dumps(items), **{"Content-Type": "application/json"})
    assert (r.status_code, r.json()) == (202, {"accepted": 2, "errors": [
        {"index": 1, "error": "status must be a non-negative integer, not '200'"},
        {"index": 2, "error": "unknown field 'colour'"},
        {"index": 3, "error": "created_at 'last tuesday' is not an ISO 8601 time"},
        {"index": 4, "error": "property 'a' must have a non-empty name and a string value"},
        {"index": 5, "error": "cost_usd '-1' is not a non-negative decimal of at most 1e9 USD"},
        {"index": 6, "error": "expected an object, got str"},
        {"index": 7, "error": "cost_usd 18446744074.0 is not a non-negative decimal of at most 1e9 USD"},
    ]})
    deadline = time.monotonic() + 10
    while len(rows := services.ch.query("SELECT request_id FROM request_events FINAL ORDER BY request_id")) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert rows == [{"request_id": "ok-1"}, {"request_id": "ok-2"}]


def test_jsonl_and_gzip_bodies(server: str, api_key: str) -> None:
    body = b'{"request_id": "l1"}\n{"request_id": "l2"}\n'
    assert post(server, api_key, body).json() == {"accepted": 2, "errors": []}
    assert post(server, api_key, gzip.compress(body), **{"Content-Encoding": "gzip"}).json() == {"accepted": 2, "errors": []}


def test_bad_bodies(server: str, api_key: str) -> None:
    r = post(server, api_key, b"{nope")
    assert r.status_code == 400 and r.json()["error"].startswith("the body is not valid JSON")
    r = post(server, api_key, b"")
    assert (r.status_code, r.json()) == (400, {"error": "the body is empty; expected a JSON array of events or JSON Lines"})
    r = post(server, api_key, orjson.dumps([{"status": -1}]))
    assert (r.status_code, r.json()) == (400, {
        "error": "no valid events in the body", "errors": [{"index": 0, "error": "status must be a non-negative integer, not -1"}]})
    r = post(server, api_key, orjson.dumps([{}] * 10_001))
    assert (r.status_code, r.json()) == (413, {"error": "10001 events in one request; the limit is 10000"})


def test_oversize_body_gets_413(server: str, api_key: str, services: Services) -> None:
    limit = services.settings.max_log_bytes
    r = post(server, api_key, b"[" + b" " * limit + b"]")
    assert (r.status_code, r.json()) == (
        413, {"error": f"the body is {limit + 2} bytes; the limit is {limit} bytes (LLMLENS_MAX_LOG_BYTES)"})


def test_full_spool_answers_503_with_retry_after(server: str, api_key: str, services: Services) -> None:
    services.writer.spool.max_bytes = 10  # the disk quota is reached
    r = post(server, api_key, orjson.dumps([{"request_id": "x"}]))
    assert (r.status_code, r.headers["retry-after"], r.json()) == (
        503, "5", {"error": "llmlens cannot accept events right now: its spool is full; retry later"})
    assert services.ch.query("SELECT count() AS n FROM request_events") == [{"n": 0}]


def test_batch_accepts_helicone_async_log_bodies(server: str, api_key: str, services: Services) -> None:
    helicone = {
        "providerRequest": {"url": "https://api.openai.com/v1", "json": {"model": "gpt-4o-mini", "messages": []},
                            "meta": {"Helicone-User-Id": "shipper", "Helicone-Property-Origin": "helicone-export"}},
        "providerResponse": {"status": 200, "headers": {}, "json": {
            "model": "gpt-4o-mini", "usage": {"prompt_tokens": 100, "completion_tokens": 10}}},
        "timing": {"startTime": "2026-11-20T08:00:00Z", "endTime": "2026-11-20T08:00:01Z"},
    }
    r = post(server, api_key, orjson.dumps([helicone, {"request_id": "own-1"}, {"providerRequest": "x"}]))
    assert (r.status_code, r.json()) == (202, {"accepted": 2, "errors": [
        {"index": 2, "error": "providerRequest must be an object"}]})
    deadline = time.monotonic() + 10
    while len(services.ch.query("SELECT 1 FROM request_events FINAL")) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    rows = services.ch.query("SELECT provider, model, user_id, properties, prompt_tokens, latency_ms, cost_source"
                             " FROM request_events FINAL ORDER BY user_id DESC")
    assert rows == [
        {"provider": "openai", "model": "gpt-4o-mini", "user_id": "shipper", "properties": {"origin": "helicone-export"},
         "prompt_tokens": 100, "latency_ms": 1000, "cost_source": "registry"},
        {"provider": "", "model": "", "user_id": "", "properties": {}, "prompt_tokens": 0, "latency_ms": 0,
         "cost_source": ""},
    ]
