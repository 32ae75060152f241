"""The writer against real chDB: outages, poisoned rows, ordering, and flush on close."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from ingest.event import RequestEvent
from llmlens.app import Services


def event(i: int, **fields: object) -> RequestEvent:
    ev = RequestEvent(
        org_id="o1", request_id=f"req-{i:05d}", created_at=datetime(2026, 11, 21, 9, 0, i % 60, tzinfo=UTC),
        source="async", model="gpt-4o", status=200,
    )
    for k, v in fields.items():
        setattr(ev, k, v)
    return ev


def stored_ids(services: Services) -> list[str]:
    rows = services.ch.query("SELECT request_id FROM request_events FINAL ORDER BY request_id")
    return [r["request_id"] for r in rows]


async def test_outage_events_wait_in_spool_and_land_once(services: Services) -> None:
    writer = services.writer
    services.ch.command("DETACH TABLE request_events")  # the store is unavailable: inserts fail
    writer.start()
    try:
        await writer.submit([event(i) for i in range(50)])
        await writer.submit([event(i) for i in range(50, 120)])
        await asyncio.sleep(0.5)
        assert writer.last_error != ""
        assert writer.spool.bytes_used > 0
        assert services.metrics.insert_errors.value() >= 1

        services.ch.command("ATTACH TABLE request_events")  # the store returns
        assert await writer.flush(timeout=30)
        assert stored_ids(services) == [f"req-{i:05d}" for i in range(120)]
        assert services.ch.query("SELECT count() AS n FROM request_events") == [{"n": 120}]
        assert writer.spool.bytes_used == 0 and writer.last_error == ""
    finally:
        await writer.close()


async def test_poisoned_row_is_set_aside_and_the_rest_flow_on(services: Services) -> None:
    writer = services.writer
    writer.start()
    try:
        batch = [event(i) for i in range(40)]
        batch[17].status = "not a number"  # type: ignore[assignment]  # ClickHouse refuses this row
        await writer.submit(batch)
        assert await writer.flush(timeout=30)
    finally:
        await writer.close()
    assert stored_ids(services) == [f"req-{i:05d}" for i in range(40) if i != 17]
    rejected = list((services.settings.data_dir / "rejected").glob("*.jsonl"))
    assert len(rejected) == 1
    text = rejected[0].read_text()
    assert text.count("\n") == 1 and "req-00017" in text and "not a number" in text
    assert services.metrics.events_rejected.value() == 1
    assert services.metrics.events_written.value() == 39


async def test_close_flushes_what_was_accepted(services: Services) -> None:
    writer = services.writer
    writer.batch_rows, writer.max_wait_s = 10_000, 60.0  # nothing would be due for a minute
    writer.start()
    await writer.submit([event(i) for i in range(30)])
    await writer.close()
    assert stored_ids(services) == [f"req-{i:05d}" for i in range(30)]
