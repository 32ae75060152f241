"""Writer throughput: events/s from Writer.submit() until visible in embedded chDB, and time-to-visible percentiles.

Realistic ~2 KB events, 32 concurrent submitters of 100-event chunks (what concurrent log requests look like),
over a sweep of batch sizes. Run: python bench/writer_throughput.py [--events 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import string
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from ingest.event import RequestEvent
from ingest.metrics import Metrics
from ingest.spool import Spool
from ingest.writer import Writer
from storage.clickhouse import ChdbBackend
from storage.migrate import migrate_clickhouse

CHUNK = 100
SUBMITTERS = 32


def make_events(n: int, tag: str) -> list[list[RequestEvent]]:
    rnd = random.Random(7)
    words = ["".join(rnd.choices(string.ascii_lowercase, k=rnd.randint(3, 9))) for _ in range(500)]
    now = datetime.now(UTC)
    chunks = []
    for c in range(n // CHUNK):
        chunk = []
        for i in range(CHUNK):
            text = " ".join(rnd.choices(words, k=150))  # ~1 KB each way
            chunk.append(RequestEvent(
                org_id="bench", request_id=f"{tag}-{c}-{i}", created_at=now, source="async", provider="openai",
                model=rnd.choice(["gpt-4o", "gpt-4o-mini", "claude-sonnet-4-6"]), path=f"{tag}/{c}", status=200,
                latency_ms=rnd.randint(100, 3000), prompt_tokens=rnd.randint(10, 5000),
                completion_tokens=rnd.randint(10, 1000), cost_nanos=rnd.randint(1000, 10**7),
                user_id=f"user-{rnd.randint(1, 500)}", properties={"team": rnd.choice(["a", "b", "c"]), "env": "prod"},
                request_body='{"messages":[{"role":"user","content":"' + text + '"}]}',
                response_body='{"choices":[{"message":{"content":"' + text + '"}}]}',
            ))
        chunks.append(chunk)
    return chunks


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


async def run(ch: ChdbBackend, root: Path, batch_rows: int, n: int) -> tuple[float, float, float]:
    tag = f"b{batch_rows}"
    chunks = make_events(n, tag)
    writer = Writer(ch, Spool(root / tag, 8 << 30), metrics=Metrics(), rejected_dir=root / "rejected",
                    batch_rows=batch_rows, max_wait_s=1.0)
    writer.start()
    acked: dict[str, float] = {}
    visible: dict[str, float] = {}
    queue = list(enumerate(chunks))

    async def submitter() -> None:
        while queue:
            c, chunk = queue.pop()
            await writer.submit(chunk)
            acked[f"{tag}/{c}"] = time.perf_counter()

    async def watcher() -> None:
        while len(visible) < len(chunks):
            rows = await asyncio.to_thread(
                ch.query, "SELECT path, count() AS n FROM request_events WHERE org_id = 'bench' AND startsWith(path, {t:String})"
                " GROUP BY path", {"t": tag + "/"})
            now = time.perf_counter()
            for r in rows:
                if r["n"] >= CHUNK and r["path"] not in visible:
                    visible[r["path"]] = now
            await asyncio.sleep(0.05)

    started = time.perf_counter()
    await asyncio.gather(watcher(), *(submitter() for _ in range(SUBMITTERS)))
    elapsed = max(visible.values()) - started
    await writer.close()
    lags = [visible[k] - acked[k] for k in visible]
    return n / elapsed, pct(lags, 0.5), pct(lags, 0.99)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=100_000)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="llmlens-writer-bench-"))
    ch = ChdbBackend(root / "chdb", "bench")
    migrate_clickhouse(ch)
    print(f"{args.events} events of ~2 KB, {SUBMITTERS} submitters x {CHUNK}-event chunks, embedded chDB")
    print(f"{'batch rows':>10} {'events/s':>10} {'visible p50 s':>14} {'visible p99 s':>14}")
    for batch in (500, 2000, 5000, 10000):
        rate, p50, p99 = asyncio.run(run(ch, root, batch, args.events))
        print(f"{batch:>10} {rate:>10.0f} {p50:>14.2f} {p99:>14.2f}", flush=True)


if __name__ == "__main__":
    main()
