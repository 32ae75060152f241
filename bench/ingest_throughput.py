"""Ingest throughput over HTTP: Helicone async logs at concurrency 32, and /api/v1/logs in batches of 1,000.

Starts `llmlens serve` on embedded defaults in a temp dir, posts ~2 KB logs, waits until every one is visible in
ClickHouse (through the API), and checks the row count matches what was sent.
Run: python bench/ingest_throughput.py [--logs 20000] [--events 200000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import string
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from proxy_overhead import cpu_seconds, free_port, wait_http  # noqa: E402


def text(rnd: random.Random, n: int) -> str:
    return " ".join("".join(rnd.choices(string.ascii_lowercase, k=rnd.randint(3, 8))) for _ in range(n))


def helicone_log(rnd: random.Random) -> bytes:
    now = time.time()
    return orjson.dumps({
        "providerRequest": {"url": "https://api.openai.com/v1", "meta": {}, "json": {
            "model": "gpt-4o-mini", "messages": [{"role": "user", "content": text(rnd, 150)}]}},
        "providerResponse": {"status": 200, "headers": {}, "json": {
            "id": "chatcmpl-x", "model": "gpt-4o-mini-2024-07-18",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text(rnd, 150)}}],
            "usage": {"prompt_tokens": rnd.randint(50, 2000), "completion_tokens": rnd.randint(10, 500)}}},
        "timing": {"startTime": {"seconds": int(now) - 1, "milliseconds": 0},
                   "endTime": {"seconds": int(now), "milliseconds": 0}},
    })


async def count(session: aiohttp.ClientSession, url: str, auth: dict[str, str]) -> int:
    n, cursor = 0, None
    while True:
        params = {"limit": "1000", **({"cursor": cursor} if cursor else {})}
        async with session.get(f"{url}/api/v1/requests", params=params, headers=auth) as r:
            body = await r.json()
        n += len(body["data"])
        cursor = body["next_cursor"]
        if cursor is None:
            return n


async def wait_visible(session: aiohttp.ClientSession, url: str, auth: dict[str, str], n: int, started: float) -> float:
    while True:
        async with session.get(f"{url}/metrics") as r:
            metrics = await r.text()
        written = next(float(line.split()[-1]) for line in metrics.splitlines()
                       if line.startswith("llmlens_events_written_total"))
        if written >= n:
            return time.perf_counter() - started
        await asyncio.sleep(0.05)


async def helicone_phase(url: str, key: str, n: int, pid: int) -> None:
    rnd = random.Random(1)
    bodies = [helicone_log(rnd) for _ in range(n)]
    auth = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as session:
        queue = list(bodies)
        cpu0, started = cpu_seconds(pid), time.perf_counter()

        async def worker() -> None:
            while queue:
                body = queue.pop()
                async with session.post(f"{url}/oai/v1/log", data=body,
                                        headers={**auth, "Helicone-Request-Id": str(uuid.uuid4())}) as r:
                    assert r.status == 200, await r.text()

        await asyncio.gather(*(worker() for _ in range(32)))
        acked = time.perf_counter() - started
        visible = await wait_visible(session, url, auth, n, started)
        cpu = cpu_seconds(pid) - cpu0
        stored = await count(session, url, auth)
    print(f"Helicone /oai/v1/log, c=32: {n / acked:,.0f} logs/s acknowledged, {n / visible:,.0f} logs/s until visible, "
          f"{cpu * 1000 / n:.2f} CPU ms/log, rows {stored}/{n}", flush=True)


async def batch_phase(url: str, key: str, n: int, pid: int, already: int) -> None:
    rnd = random.Random(2)
    batches = []
    for b in range(n // 1000):
        batches.append(orjson.dumps([{
            "request_id": f"b{b}-{i}", "model": "gpt-4o", "provider": "openai", "prompt_tokens": rnd.randint(10, 3000),
            "completion_tokens": rnd.randint(10, 500), "user_id": f"u{rnd.randint(1, 300)}",
            "properties": {"team": rnd.choice("abc")}, "request_body": text(rnd, 150), "response_body": text(rnd, 150),
        } for i in range(1000)]))
    auth = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    async with aiohttp.ClientSession() as session:
        queue = list(batches)
        cpu0, started = cpu_seconds(pid), time.perf_counter()

        async def worker() -> None:
            while queue:
                body = queue.pop()
                async with session.post(f"{url}/api/v1/logs", data=body, headers=auth) as r:
                    assert r.status == 202, await r.text()

        await asyncio.gather(*(worker() for _ in range(4)))
        acked = time.perf_counter() - started
        visible = await wait_visible(session, url, auth, already + n, started)
        cpu = cpu_seconds(pid) - cpu0
        stored = await count(session, url, auth) - already
    print(f"/api/v1/logs, batches of 1,000: {n / acked:,.0f} events/s acknowledged, {n / visible:,.0f} events/s "
          f"until visible, {cpu * 1000 / n:.3f} CPU ms/event, rows {stored}/{n}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--logs", type=int, default=20_000)
    ap.add_argument("--events", type=int, default=200_000)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="llmlens-ingest-bench-"))
    port = free_port()
    env = {**os.environ, "LLMLENS_DATA_DIR": str(tmp / "data"), "LLMLENS_LOG_LEVEL": "warning"}
    key = subprocess.run([sys.executable, "-m", "llmlens.cli", "keys", "create", "--name", "bench"], env=env,
                         check=True, capture_output=True, text=True).stdout.strip()
    server = subprocess.Popen([sys.executable, "-m", "llmlens.cli", "serve", "--port", str(port)], env=env,
                              stdout=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/healthz", server)
        asyncio.run(helicone_phase(url, key, args.logs, server.pid))
        asyncio.run(batch_phase(url, key, args.events, server.pid, args.logs))
    finally:
        server.terminate()
        server.wait(60)


if __name__ == "__main__":
    main()
