"""Dashboard latency on 10 million synthetic events in embedded chDB: p50/p95 per panel query and for the
request-table page, over repeated loads with varied filters; and the memory of exporting a large set.

The events are generated inside ClickHouse (INSERT ... SELECT FROM numbers()), spread over 30 days, one org.
Pages are timed as the panels they run, one after another (the chDB backend serializes queries anyway).
Before timing, the daily rollup (dashboard/rollup.py) is computed for every day but today, as the server's
background refresh would have done; whole days come from it, the rest of a window from request_events FINAL.
Run from the repository root: python -m bench.dashboard_latency [--events 10000000] [--runs 7] [--data DIR]
(`python bench/dashboard_latency.py` would import an installed llmlens, not this checkout.)
With --data, a data set generated there by an earlier run (same --events) is reused, and its time range is used.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from dashboard import panels, queries, rollup
from dashboard.pages import EXPORT_PAGE
from storage.clickhouse import ChdbBackend
from storage.migrate import migrate_clickhouse

GENERATE = """
INSERT INTO request_events (org_id, created_at, request_id, source, provider, model, path, status, latency_ms,
    prompt_tokens, completion_tokens, cost_nanos, cost_source, user_id, session_id, properties, request_body, response_body)
SELECT 'bench',
       now64(3) - toIntervalMillisecond(rand(1) % (30 * 86400000)),
       toString(generateUUIDv4(number)),
       'proxy',
       ['openai', 'openai', 'anthropic', 'google'][rand(2) % 4 + 1],
       ['gpt-4o-mini', 'gpt-4o', 'claude-sonnet-4-6', 'gemini-2.0-flash', 'claude-haiku-4-5'][rand(3) % 5 + 1],
       '/v1/chat/completions',
       if(rand(4) % 100 < 3, 500, 200),
       100 + rand(5) % 3000,
       rand(6) % 4000, rand(7) % 800,
       if(rand(8) % 50 = 0, NULL, rand(9) % 10000000),
       'registry',
       concat('user-', toString(rand(10) % 5000)),
       if(rand(11) % 3 = 0, concat('s-', toString(rand(12) % 100000)), ''),
       map('team', ['search', 'support', 'growth', 'research'][rand(13) % 4 + 1],
           'env', ['prod', 'staging'][rand(14) % 2 + 1],
           'feature', concat('f', toString(rand(15) % 50))),
       '{"messages":[{"role":"user","content":"hello"}]}',
       '{"choices":[{"message":{"content":"hi"}}]}'
FROM numbers({n:UInt64})
"""


def timed(fn: Callable[[], Any], runs: int) -> tuple[float, float]:
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    return statistics.median(samples), samples[min(len(samples) - 1, int(0.95 * len(samples)))]


def generate(ch: ChdbBackend, events: int) -> None:
    started = time.perf_counter()
    for chunk in range(0, events, 2_000_000):
        ch.command(GENERATE, {"n": min(2_000_000, events - chunk)})
    ch.command("OPTIMIZE TABLE request_events FINAL")
    print(f"generated {events:,} events in {time.perf_counter() - started:.0f} s (merged)")


def pages(ch: ChdbBackend, f: queries.Filters, w: panels.Window) -> list[tuple[str, Callable[[], Any]]]:
    """The panels each page runs (dashboard/pages.py), as one timed unit per page."""

    def overview() -> None:
        panels.kpis(ch, "bench", f)
        panels.series(ch, "bench", f, w)
        panels.top(ch, "bench", f, "model")
        panels.top(ch, "bench", f, "user")
        keys = panels.property_keys(ch, "bench", f)
        panels.property_values(ch, "bench", f, keys[0])

    def properties() -> None:
        panels.property_keys(ch, "bench", f)
        panels.property_values(ch, "bench", f, "team")
        panels.property_series(ch, "bench", f, "team", w)

    return [
        ("page /", overview),
        ("page /properties", properties),
        ("page /users", lambda: panels.users(ch, "bench", f)),
        ("page /requests", lambda: queries.list_requests(ch, "bench", f, limit=50)),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--data", type=Path, help="keep the generated data here and reuse it on later runs")
    args = ap.parse_args()
    root = args.data or Path(tempfile.mkdtemp(prefix="llmlens-dash-bench-"))
    ch = ChdbBackend(root / "chdb", "bench")
    migrate_clickhouse(ch)
    (have,) = ch.query("SELECT count() AS n, max(created_at) AS newest FROM request_events")
    if int(have["n"]) != args.events:
        ch.command("TRUNCATE TABLE request_events")
        generate(ch, args.events)
        now = datetime.now(UTC)
    else:
        print(f"reusing {args.events:,} events in {root}")
        now = datetime.fromisoformat(have["newest"]).replace(tzinfo=UTC) + timedelta(seconds=1)
    started, days = time.perf_counter(), 0
    while n := rollup.refresh(ch, settle_s=0):
        days += n
    print(f"rollup: {days} days computed in {time.perf_counter() - started:.0f} s")

    days30 = {"start": now - timedelta(days=30), "end": now}
    views: dict[str, queries.Filters] = {
        "30d": queries.Filters(**days30),
        "24h": queries.Filters(start=now - timedelta(days=1), end=now),
        "30d model=gpt-4o": queries.Filters(**days30, model="gpt-4o"),
        "30d team=search": queries.Filters(**days30, properties=[("team", "search")]),
        "30d user=user-42": queries.Filters(**days30, user_id="user-42"),
        "24h team=search": queries.Filters(start=now - timedelta(days=1), end=now, properties=[("team", "search")]),
    }
    print(f"{'panel':<22}{'view':<20}{'p50 ms':>9}{'p95 ms':>9}")
    for view, f in views.items():
        w = panels.Window(f.start or now, f.end or now)
        for name, fn in [
            ("kpis", lambda f=f: panels.kpis(ch, "bench", f)),
            ("series", lambda f=f, w=w: panels.series(ch, "bench", f, w)),
            ("top models", lambda f=f: panels.top(ch, "bench", f, "model")),
            ("top users", lambda f=f: panels.top(ch, "bench", f, "user")),
            ("property keys", lambda f=f: panels.property_keys(ch, "bench", f)),
            ("property values", lambda f=f: panels.property_values(ch, "bench", f, "team")),
            ("property series", lambda f=f, w=w: panels.property_series(ch, "bench", f, "team", w)),
            ("users", lambda f=f: panels.users(ch, "bench", f)),
            ("request table", lambda f=f: queries.list_requests(ch, "bench", f, limit=50)),
            *pages(ch, f, w),
        ]:
            p50, p95 = timed(fn, args.runs)
            print(f"{name:<22}{view:<20}{p50:>9.0f}{p95:>9.0f}", flush=True)

    # Export memory: stream a large filtered set page by page, as /requests/export.jsonl does.
    f = queries.Filters(start=now - timedelta(days=7), end=now, model="gpt-4o")
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    cursor, rows, samples = None, 0, []
    started = time.perf_counter()
    while True:
        page, cursor = queries.list_requests(ch, "bench", f, limit=EXPORT_PAGE, cursor=cursor)
        rows += len(page)
        if rows % 50_000 < EXPORT_PAGE:
            samples.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
        if cursor is None or rows >= 300_000:
            break
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"export: {rows:,} rows in {time.perf_counter() - started:.1f} s; max RSS {rss0 / 1024:.0f} MB before, "
          f"{rss1 / 1024:.0f} MB after (samples every 50k rows: {[round(s / 1024) for s in samples]} MB)")


if __name__ == "__main__":
    main()
