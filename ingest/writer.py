"""The writer: events into the durable spool at once, batches from the spool into ClickHouse in the background."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

import orjson

from ingest.event import RequestEvent
from ingest.metrics import Metrics
from ingest.spool import Segment, Spool, SpoolFull
from storage.clickhouse import ClickHouse, ClickHouseError

log = logging.getLogger("llmlens.writer")
TABLE = "request_events"
LAZY_SYNC_S = 0.2


class Writer:
    """`submit()` returns once events are fsynced in the spool; it never waits on ClickHouse.

    A background task seals the open segment when `batch_rows` rows are waiting or the oldest has waited
    `max_wait_s`, inserts it, and deletes it. A segment ClickHouse rejects as bad data is halved until the bad
    rows are found; those go to `rejected_dir` with the server's message and the rest flow on. When ClickHouse
    is unavailable, sealed segments stay on disk and are retried in order with backoff.
    """

    def __init__(
        self,
        clickhouse: ClickHouse,
        spool: Spool,
        *,
        metrics: Metrics,
        rejected_dir: Path,
        batch_rows: int = 5000,
        max_wait_s: float = 1.0,
    ) -> None:
        self.ch = clickhouse
        self.spool = spool
        self.metrics = metrics
        self.rejected_dir = rejected_dir
        self.batch_rows = batch_rows
        self.max_wait_s = max_wait_s
        self._first_unsealed_at: float | None = None
        self._wake = asyncio.Event()
        self._sync_task: asyncio.Task[None] | None = None
        self._sync_waiters: list[asyncio.Future[None]] = []
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._lazy_sync_pending = False
        self.last_error: str = ""
        metrics.gauge("llmlens_spool_bytes", "Bytes held in the durable spool.", lambda: float(spool.bytes_used))
        metrics.gauge("llmlens_spool_segments", "Spool segments not yet in ClickHouse.", lambda: float(spool.segments))

    # --- accepting ---------------------------------------------------------------------------------------
    def _append(self, events: Sequence[RequestEvent]) -> None:
        data = b"".join(ev.to_row() for ev in events)
        with self.spool.lock:
            self.spool.append(data, len(events))
        if self._first_unsealed_at is None:
            self._first_unsealed_at = time.monotonic()
        if self.spool.open_rows >= self.batch_rows:
            self._wake.set()

    async def submit(self, events: Sequence[RequestEvent], *, source: str = "api") -> None:
        """Durably accept events (fsynced, group-committed with concurrent callers); SpoolFull when over quota."""
        if not events:
            return
        self._append(events)
        await self._group_commit()
        self.metrics.events_accepted.inc(len(events), source=source)

    def submit_nowait(self, event: RequestEvent) -> bool:
        """Accept without waiting for fsync (the proxy: logging must never slow the user's call).

        Nobody waits on these events, so they are fsynced lazily, within LAZY_SYNC_S, in one group: a crash of
        the whole machine can lose that last fraction of a second of proxy logs, never an acknowledged log.
        """
        try:
            self._append([event])
        except (SpoolFull, OSError):
            self.metrics.events_dropped.inc()
            return False
        self.metrics.events_accepted.inc(source=event.source)
        if not self._lazy_sync_pending:
            self._lazy_sync_pending = True
            asyncio.get_running_loop().call_later(LAZY_SYNC_S, self._lazy_sync)
        return True

    def _lazy_sync(self) -> None:
        self._lazy_sync_pending = False
        self._schedule_sync()

    async def _group_commit(self) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sync_waiters.append(fut)
        self._schedule_sync()
        await fut

    def _schedule_sync(self) -> None:
        if self._sync_task is None or self._sync_task.done():
            self._sync_task = asyncio.get_running_loop().create_task(self._sync_loop())

    async def _sync_loop(self) -> None:
        # One fsync covers every append made before it started; callers arriving meanwhile wait for the next.
        while True:
            waiters, self._sync_waiters = self._sync_waiters, []
            with self.spool.lock:
                fd = self.spool.sync_target()
            if fd is None and not waiters:
                return
            try:
                if fd is not None:
                    await asyncio.to_thread(_fsync_close, fd)
            except OSError as exc:
                for w in waiters:
                    if not w.done():
                        w.set_exception(exc)
                continue
            for w in waiters:
                if not w.done():
                    w.set_result(None)

    # --- draining ----------------------------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="llmlens-writer")

    async def _run(self) -> None:
        backoff = 0.5
        while not self._stopping:
            self._seal_if_due()
            seg = self.spool.oldest_sealed()
            if seg is None:
                timeout = self.max_wait_s if self._first_unsealed_at is None else max(
                    0.0, self._first_unsealed_at + self.max_wait_s - time.monotonic()
                )
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=timeout)
                except TimeoutError:
                    pass
                continue
            ok = await self._insert_segment(seg)
            if ok:
                backoff = 0.5
            else:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)

    def _seal_if_due(self) -> None:
        first = self._first_unsealed_at
        if first is None:
            return
        if self.spool.open_rows >= self.batch_rows or time.monotonic() - first >= self.max_wait_s or self._stopping:
            with self.spool.lock:
                self.spool.seal()
            self._first_unsealed_at = None

    async def _insert_segment(self, seg: Segment) -> bool:
        try:
            started = time.perf_counter()
            await asyncio.to_thread(self.ch.insert_file, TABLE, seg.path, seg.token)
            rows = self.spool.rows_of(seg)
            self.metrics.insert_seconds.observe(time.perf_counter() - started)
            self.metrics.batch_rows.observe(rows)
            self.metrics.events_written.inc(rows)
        except ClickHouseError as exc:
            if not exc.bad_data:
                self._unavailable(exc)
                return False
            data = await asyncio.to_thread(seg.path.read_bytes)
            lines = [line + b"\n" for line in data.splitlines() if line.strip()]
            try:
                await self._bisect(lines, seg, 0)
            except ClickHouseError as exc2:
                self._unavailable(exc2)
                return False
        self.last_error = ""
        with self.spool.lock:
            self.spool.drop(seg)
        return True

    def _unavailable(self, exc: ClickHouseError) -> None:
        self.metrics.insert_errors.inc()
        if self.last_error != str(exc):
            log.warning("ClickHouse insert failed, keeping the batch in the spool: %s", str(exc)[:300])
        self.last_error = str(exc)

    async def _insert(self, lines: list[bytes], token: str) -> None:
        started = time.perf_counter()
        await asyncio.to_thread(self.ch.insert_jsonl, TABLE, b"".join(lines), token)
        self.metrics.insert_seconds.observe(time.perf_counter() - started)
        self.metrics.batch_rows.observe(len(lines))
        self.metrics.events_written.inc(len(lines))

    async def _bisect(self, lines: list[bytes], seg: Segment, offset: int) -> None:
        """Insert what ClickHouse accepts; set aside the rows it refuses (bad_data) with its message."""
        if len(lines) == 1:
            try:
                await self._insert(lines, f"{seg.token}-{offset}")
            except ClickHouseError as exc:
                if not exc.bad_data:
                    raise
                self._reject(lines[0], str(exc), seg)
            return
        half = len(lines) // 2
        for part, start in ((lines[:half], offset), (lines[half:], offset + half)):
            try:
                await self._insert(part, f"{seg.token}-{start}-{len(part)}")
            except ClickHouseError as exc:
                if not exc.bad_data:
                    raise
                await self._bisect(part, seg, start)

    def _reject(self, line: bytes, message: str, seg: Segment) -> None:
        self.rejected_dir.mkdir(parents=True, exist_ok=True)
        record = orjson.dumps({"error": message[:2000], "segment": seg.path.name, "row": line.decode("utf-8", "replace")})
        with open(self.rejected_dir / f"{seg.path.stem}.jsonl", "ab") as f:
            f.write(record + b"\n")
            f.flush()
            os.fsync(f.fileno())
        self.metrics.events_rejected.inc()
        log.error("ClickHouse refused an event; set aside in %s: %s", self.rejected_dir, message[:300])

    async def flush(self, timeout: float = 30.0) -> bool:
        """Seal and insert everything accepted so far; False if ClickHouse did not take it all in time."""
        deadline = time.monotonic() + timeout
        while self._sync_task is not None and not self._sync_task.done():
            await asyncio.sleep(0.001)
        with self.spool.lock:
            self.spool.seal()
        self._first_unsealed_at = None
        if self._task is not None and not self._task.done():
            # The background task owns inserts while it runs; wake it and wait for the spool to empty.
            self._wake.set()
            while self.spool.oldest_sealed() is not None:
                if time.monotonic() > deadline:
                    return False
                await asyncio.sleep(0.005)
            return True
        while (seg := self.spool.oldest_sealed()) is not None:
            if time.monotonic() > deadline or not await self._insert_segment(seg):
                return False
        return True

    async def close(self, timeout: float = 30.0) -> None:
        """Stop the background task and flush (SIGTERM path); what cannot be inserted stays in the spool."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, timeout=timeout)
            except (TimeoutError, asyncio.CancelledError):
                self._task.cancel()
        await self.flush(timeout)
        with self.spool.lock:
            self.spool.close()


def _fsync_close(fd: int) -> None:
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
