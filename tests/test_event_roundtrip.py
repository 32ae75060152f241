"""An event posted to /api/v1/logs comes back from the API with every field intact."""

from __future__ import annotations

import time
from typing import Any

import httpx

from llmlens.app import Services


def wait_for(fn: Any, timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = fn()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.05)


def found(url: str, headers: dict[str, str]) -> Any:
    r = httpx.get(url, headers=headers, timeout=30)
    return r.json() if r.status_code == 200 else None


def full_event(i: int = 0) -> dict[str, Any]:
    return {
        "request_id": f"7f1c1a52-0000-4000-8000-{i:012d}",
        "created_at": "2026-11-20T10:15:30.123Z",
        "provider": "openai",
        "model": "gpt-4o-mini",
        "path": "/v1/chat/completions",
        "status": 200,
        "latency_ms": 812,
        "ttft_ms": 95,
        "prompt_tokens": 1200,
        "completion_tokens": 300,
        "cache_read_tokens": 1000,
        "cache_write_tokens": 0,
        "cost_usd": "0.000123456",
        "user_id": "ユーザー-42 🚀",
        "session_id": "s-1",
        "session_path": "/plan/search",
        "session_name": "Research — agent",
        "prompt_id": "greeting",
        "prompt_version": "3",
        "properties": {f"Key{n}": f"välue {n} ✓" for n in range(200)},
        "source": "async",
        "stream": True,
        "cache_hit": False,
        "error": "",
        "request_body": '{"messages": [{"role": "user", "content": "' + "é" * 10 + "x" * 1_000_000 + '"}]}',
        "response_body": "data: " + "ü" * 500_000 + "\n\n",
    }


def test_event_round_trips_every_field(server: str, api_key: str, services: Services) -> None:
    sent = full_event()
    auth = {"Authorization": f"Bearer {api_key}"}
    r = httpx.post(f"{server}/api/v1/logs", json=[sent], headers=auth, timeout=30)
    assert (r.status_code, r.json()) == (202, {"accepted": 1, "errors": []})

    got = wait_for(lambda: found(f"{server}/api/v1/requests/{sent['request_id']}", auth))
    key_id = services.control.list_keys()[0].id
    assert got == {**sent, "api_key_id": key_id, "body_truncated": False, "target_url": "", "scores": {}}

    listed = httpx.get(f"{server}/api/v1/requests", headers=auth).json()
    summary = {k: v for k, v in sent.items() if k not in ("request_body", "response_body")}
    assert listed == {"data": [summary], "next_cursor": None}


def test_reposted_event_counts_once(server: str, api_key: str) -> None:
    auth = {"Helicone-Auth": f"Bearer {api_key}"}
    events = [full_event(i) | {"request_body": "", "response_body": ""} for i in range(3)]
    for _ in range(3):
        assert httpx.post(f"{server}/api/v1/logs", json=events, headers=auth).status_code == 202
    rows = wait_for(lambda: (d := httpx.get(f"{server}/api/v1/requests", headers=auth).json()["data"]) and len(d) >= 3 and d)
    time.sleep(0.3)  # give any duplicate the chance to land before counting
    rows = httpx.get(f"{server}/api/v1/requests", headers=auth).json()["data"]
    assert sorted(r["request_id"] for r in rows) == sorted(e["request_id"] for e in events)
