"""`llmlens import`: Helicone bodies and llmlens exports, resumable and idempotent, through the real write path."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson

from ingest.bulk_import import import_file
from llmlens.app import Services
from storage.controlplane import Principal

HELICONE = {
    "providerRequest": {"url": "https://api.anthropic.com/v1", "json": {"model": "claude-haiku-4-5", "messages": []},
                        "meta": {"Helicone-Property-Source": "backfill"}},
    "providerResponse": {"status": 200, "headers": {}, "json": {"model": "claude-haiku-4-5", "usage": {
        "input_tokens": 10, "output_tokens": 5, "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0}}},
}


def write_file(path: Path, n: int) -> None:
    lines = []
    for i in range(n):
        if i % 2:
            lines.append({"request_id": f"own-{i}", "created_at": "2026-10-01T00:00:00Z", "model": "gpt-4o", "cost_usd": "0.5"})
        else:
            lines.append({**HELICONE, "timing": {"startTime": {"seconds": 1790000000 + i, "milliseconds": 0},
                                                   "endTime": {"seconds": 1790000001 + i, "milliseconds": 0}}})
    path.write_bytes(b"\n".join(orjson.dumps(x) for x in lines) + b"\n{broken\n")


def count(services: Services) -> int:
    return int(services.ch.query("SELECT count() AS n FROM request_events FINAL")[0]["n"])


async def test_import_resumes_and_counts_each_event_once(tmp_path: Path, services: Services) -> None:
    f = tmp_path / "history.jsonl"
    write_file(f, 12_000)
    state = tmp_path / "state"
    principal = Principal(org_id="default", key_id="import")
    services.writer.start()
    try:
        first = await import_file(f, writer=services.writer, prices=services.prices, principal=principal,
                                  state_dir=state, max_body=1 << 20)
        assert (first.imported, first.error_count) == (12_000, 1)
        assert first.errors[0].startswith("line 12001: not valid JSON")
        # a second run resumes at the end: nothing new
        again = await import_file(f, writer=services.writer, prices=services.prices, principal=principal,
                                  state_dir=state, max_body=1 << 20)
        assert (again.imported, again.skipped_bytes) == (0, f.stat().st_size)
        # starting over imports everything again, and it still counts once
        over = await import_file(f, writer=services.writer, prices=services.prices, principal=principal,
                                 state_dir=state, max_body=1 << 20, restart=True)
        assert over.imported == 12_000
        assert await services.writer.flush(30)
    finally:
        await services.writer.close()
    await asyncio.sleep(0)
    assert count(services) == 12_000
    rows = services.ch.query("SELECT provider, count() AS n, sum(cost_nanos) AS cost FROM request_events FINAL "
                             "GROUP BY provider ORDER BY provider")
    assert rows[0] == {"provider": "", "n": 6000, "cost": 3_000_000_000_000}
    assert (rows[1]["provider"], rows[1]["n"]) == ("anthropic", 6000)
