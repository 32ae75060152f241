"""/healthz, /readyz and /metrics on a running server."""

from __future__ import annotations

import time

import httpx

from llmlens.app import Services


def test_health_and_readiness(server: str, services: Services) -> None:
    assert httpx.get(f"{server}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{server}/readyz").json() == {"status": "ready"}
    services.writer.spool.max_bytes = 0
    r = httpx.get(f"{server}/readyz")
    assert (r.status_code, r.json()) == (503, {"status": "unavailable", "reasons": [
        "the spool is nearly full (0 of 0 bytes)"]})
    services.writer.spool.max_bytes = 1 << 30
    services.ch.command("DETACH TABLE schema_migrations")
    r = httpx.get(f"{server}/readyz")
    assert r.status_code == 503 and r.json()["reasons"][0].startswith("migrations cannot be checked: Code: 60.")
    services.ch.command("ATTACH TABLE schema_migrations")
    assert httpx.get(f"{server}/readyz").status_code == 200


def test_metrics_count_what_happened(server: str, api_key: str, services: Services) -> None:
    events = [{"request_id": f"m{i}", "model": "gpt-4o"} for i in range(3)]
    assert httpx.post(f"{server}/api/v1/logs", json=events, headers={"Authorization": f"Bearer {api_key}"}).status_code == 202
    deadline = time.monotonic() + 10
    while services.metrics.events_written.value() < 3:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    httpx.get(f"{server}/api/v1/requests/nope", headers={"Authorization": f"Bearer {api_key}"})
    text = httpx.get(f"{server}/metrics").text
    lines = set(text.splitlines())
    assert 'llmlens_events_accepted_total{source="api"} 3' in lines
    assert "llmlens_events_written_total 3" in lines
    assert "llmlens_events_rejected_total 0" in lines
    assert "llmlens_spool_bytes 0" in lines
    assert 'llmlens_http_requests_total{route="/api/v1/logs",status="202"} 1' in lines
    assert 'llmlens_http_requests_total{route="/api/v1/requests/{request_id}",status="404"} 1' in lines
    assert "llmlens_insert_batch_rows_count 1" in lines
    assert any(line.startswith('llmlens_query_seconds_count{query="get_request"}') for line in lines)
