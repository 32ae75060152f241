"""Proxy overhead: the same requests direct to a fake provider and through llmlens, interleaved, in one run.

Prints added latency p50/p99 (non-stream), added time to first token p50/p99 (stream) at concurrency 1 and 32,
and the CPU milliseconds the llmlens process spends per proxied (and logged) request, read from /proc.
Run: python bench/proxy_overhead.py [--requests 2000] [--transport aiohttp|httpx] [--extra-header K:V]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{url} exited with {proc.returncode}")
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except Exception:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not come up")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def one(session: aiohttp.ClientSession, url: str, headers: dict[str, str], stream: bool) -> float:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello there, benchmark me."}]}
    if stream:
        body["stream"] = True
    started = time.perf_counter()
    async with session.post(url, json=body, headers=headers) as resp:
        if stream:
            async for _ in resp.content.iter_any():
                first = time.perf_counter() - started
                await resp.read()
                break
            else:
                first = time.perf_counter() - started
            assert resp.status == 200, resp.status
            return first * 1000
        await resp.read()
        assert resp.status == 200, resp.status
    return (time.perf_counter() - started) * 1000


async def phase(direct: str, proxied: str, headers: dict[str, str], *, n: int, concurrency: int, stream: bool,
                llmlens_pid: int) -> dict[str, float]:
    conn = aiohttp.TCPConnector(limit=concurrency * 2 + 4)
    async with aiohttp.ClientSession(connector=conn) as session:
        for _ in range(50):  # warm both paths' pools
            await one(session, direct, {}, stream)
            await one(session, proxied, headers, stream)
        times: dict[str, list[float]] = {"direct": [], "proxy": []}
        per_worker = n // concurrency
        cpu0 = cpu_seconds(llmlens_pid)

        async def worker() -> None:
            for i in range(per_worker):
                # interleave: each worker alternates which path goes first
                order = (("direct", direct, {}), ("proxy", proxied, headers))
                for name, url, h in order if i % 2 == 0 else reversed(order):
                    times[name].append(await one(session, url, h, stream))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        cpu1 = cpu_seconds(llmlens_pid)
    d, p = times["direct"], times["proxy"]
    return {
        "direct_p50": pct(d, 0.5), "proxy_p50": pct(p, 0.5), "added_p50": pct(p, 0.5) - pct(d, 0.5),
        "direct_p99": pct(d, 0.99), "proxy_p99": pct(p, 0.99), "added_p99": pct(p, 0.99) - pct(d, 0.99),
        "cpu_ms_per_request": (cpu1 - cpu0) * 1000 / len(p), "requests": len(p),
        "mean_added": statistics.mean(p) - statistics.mean(d),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--requests", type=int, default=2000, help="proxied requests per phase (as many direct)")
    ap.add_argument("--transport", default="aiohttp", choices=("aiohttp", "httpx"))
    ap.add_argument("--extra-header", action="append", default=[], help="K:V added to proxied requests")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="llmlens-bench-"))
    up_port, ll_port = free_port(), free_port()
    env = {**os.environ, "LLMLENS_DATA_DIR": str(tmp / "data"), "LLMLENS_OPENAI_BASE_URL": f"http://127.0.0.1:{up_port}",
           "LLMLENS_UPSTREAM_TRANSPORT": args.transport, "LLMLENS_LOG_LEVEL": "warning"}
    key = subprocess.run([sys.executable, "-m", "llmlens.cli", "keys", "create", "--name", "bench"], env=env,
                         check=True, capture_output=True, text=True).stdout.strip()
    upstream = subprocess.Popen([sys.executable, str(ROOT / "bench" / "upstream.py"), "--port", str(up_port)])
    server = subprocess.Popen([sys.executable, "-m", "llmlens.cli", "serve", "--port", str(ll_port)], env=env,
                              stdout=subprocess.DEVNULL)
    try:
        wait_http(f"http://127.0.0.1:{ll_port}/healthz", server)
        time.sleep(0.5)
        headers = {"Helicone-Auth": f"Bearer {key}", "Authorization": "Bearer sk-provider",
                   "Helicone-Property-Bench": "yes", "Helicone-User-Id": "bench-user"}
        for h in args.extra_header:
            k, _, v = h.partition(":")
            headers[k.strip()] = v.strip()
        direct = f"http://127.0.0.1:{up_port}/v1/chat/completions"
        proxied = f"http://127.0.0.1:{ll_port}/openai/v1/chat/completions"
        print(f"transport={args.transport} requests/phase={args.requests} (interleaved with as many direct)")
        print(f"{'phase':<26}{'direct p50':>11}{'proxy p50':>11}{'added p50':>11}{'added p99':>11}{'CPU ms/req':>12}")
        for stream in (False, True):
            for conc in (1, 32):
                r = asyncio.run(phase(direct, proxied, headers, n=args.requests, concurrency=conc, stream=stream,
                                      llmlens_pid=server.pid))
                label = f"{'stream TTFT' if stream else 'non-stream'} c={conc}"
                print(f"{label:<26}{r['direct_p50']:>10.2f} {r['proxy_p50']:>10.2f} {r['added_p50']:>10.2f} "
                      f"{r['added_p99']:>10.2f} {r['cpu_ms_per_request']:>11.3f}", flush=True)
    finally:
        server.terminate()
        upstream.terminate()
        server.wait(30)
        upstream.wait(10)


if __name__ == "__main__":
    main()
