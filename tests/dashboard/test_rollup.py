"""The daily rollup behind long-window panels answers exactly what the plain FINAL queries answer, re-sends included."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from dashboard import panels, rollup
from dashboard.queries import Filters
from ingest.event import RequestEvent
from llmlens.app import Services
from storage.clickhouse import ClickHouse

# Days well before today: the rollup never computes today, and a test run crossing midnight stays correct.
D = datetime.now(UTC).date() - timedelta(days=6)


def at(day: int, hour: int) -> datetime:
    return datetime(D.year, D.month, D.day, hour, tzinfo=UTC) + timedelta(days=day)


def event(rid: str, when: datetime, model: str, status: int, latency: int, cost: int | None, user: str,
          props: dict[str, str], org: str = "o1", **more: Any) -> RequestEvent:
    provider = "anthropic" if model.startswith("claude") else "openai"
    return RequestEvent(org_id=org, request_id=rid, created_at=when, source="async", provider=provider, model=model,
                        status=status, latency_ms=latency, prompt_tokens=latency // 10, completion_tokens=7,
                        cost_nanos=cost, cost_source="registry" if cost is not None else "", user_id=user,
                        properties=props, **more)


# The window [day 0 06:00, day 4 12:00): days 1-3 are whole (day 3 has no events), days 0 and 4 are cut.
START, END = at(0, 6), at(4, 12)
EVENTS = [
    event("e0", at(0, 3), "gpt-4o", 200, 999, 5, "alice", {"team": "search"}),  # before the window
    event("e1", at(0, 9), "claude-sonnet-4-6", 500, 300, None, "bob", {"team": "chat"}),
    event("e2", at(1, 1), "gpt-4o", 200, 200, 2000, "alice", {"team": "search", "env": "dev"}, session_id="s1"),
    event("e3", at(1, 5), "gpt-4o-mini", 429, 400, 500, "carol", {}),
    event("e4", at(1, 23), "gpt-4o", 200, 50, 0, "bob", {"team": "search"}, cache_hit=True, cache_saved_nanos=700),
    event("e5", at(2, 0), "claude-sonnet-4-6", 200, 250, 3000, "alice", {"env": "prod"}),
    event("e6", at(2, 12), "gpt-4o", 200, 150, 1500, "", {"team": "chat", "env": "prod"}),
    event("e7", at(4, 10), "gpt-4o", 200, 500, 100, "alice", {"team": "search"}),
    event("e8", at(4, 13), "gpt-4o", 200, 999, 5, "alice", {"team": "search"}),  # after the window
    event("x1", at(1, 2), "gpt-4o", 200, 10, 99999, "alice", {"team": "search"}, org="o2"),
]

FILTERS: dict[str, dict[str, Any]] = {
    "all": {},
    "model": {"model": "gpt-4o"},
    "provider": {"provider": "openai"},
    "status": {"status": 429},
    "2xx": {"status_class": 2},
    "user": {"user_id": "alice"},
    "team": {"properties": [("team", "search")]},
    "env": {"properties": [("env", "prod")]},
    "team+model": {"properties": [("team", "search")], "model": "gpt-4o"},
    "user+team": {"user_id": "alice", "properties": [("team", "search")]},
    "user+model": {"user_id": "alice", "model": "gpt-4o"},
    "two properties": {"properties": [("team", "chat"), ("env", "prod")]},
    "session": {"session_id": "s1"},
    "no session": {"session_id": ""},
}


def insert(ch: ClickHouse, events: list[RequestEvent]) -> None:
    ch.insert_jsonl("request_events", b"".join(e.to_row() for e in events))
    time.sleep(0.01)  # a later insert is a newer version (updated_at has millisecond precision)


def snapshot(ch: ClickHouse, f: Filters) -> dict[str, Any]:
    w = panels.Window(START, END)
    return {
        "kpis": panels.kpis(ch, "o1", f),
        "series": panels.series(ch, "o1", f, w),
        "top models": panels.top(ch, "o1", f, "model"),
        "top providers": panels.top(ch, "o1", f, "provider"),
        "top users": panels.top(ch, "o1", f, "user"),
        "keys": panels.property_keys(ch, "o1", f),
        "team values": panels.property_values(ch, "o1", f, "team"),
        "env values": panels.property_values(ch, "o1", f, "env"),
        "team series": panels.property_series(ch, "o1", f, "team", w),
        "users": panels.users(ch, "o1", f),
    }


def rollup_queries(services: Services) -> int:
    """How many panel queries went through the rollup so far (from the query histogram /metrics shows)."""
    counts = re.findall(r'_count\{query="\w+_rollup"\} (\d+)', services.metrics.render())
    return sum(int(c) for c in counts)


def test_rollup_answers_what_final_answers(services: Services) -> None:
    ch = services.ch
    insert(ch, EVENTS)
    plain = {name: snapshot(ch, Filters(start=START, end=END, **kw)) for name, kw in FILTERS.items()}
    assert rollup_queries(services) == 0
    assert rollup.refresh(ch) == 0  # nothing has settled yet
    assert rollup.refresh(ch, settle_s=0) == 5  # o1 days 0, 1, 2, 4 and o2 day 1
    p = rollup.plan(ch, "o1", START, END)
    assert p is not None
    assert ([d for d, _ in p.days], p.raw) == ([at(1, 0).date().isoformat(), at(2, 0).date().isoformat()],
                                               [(START, at(1, 0)), (at(3, 0), END)])
    for name, kw in FILTERS.items():
        assert snapshot(ch, Filters(start=START, end=END, **kw)) == plain[name], name
    assert rollup_queries(services) > 80  # most of the 130 panel queries; the rest have no rollup to use

    # Whole values, by hand: e1-e7 are in the window.
    assert plain["all"]["kpis"] == {
        "requests": 7, "cost_usd": "0.000007100", "prompt_tokens": 185, "completion_tokens": 49,
        "latency_avg_ms": 264.3, "latency_p50_ms": 250, "latency_p95_ms": 500, "errors": 2, "error_rate": 0.2857,
        "unpriced": 1, "cost_coverage": 0.8571, "cache_hits": 1, "cache_saved_usd": "0.000000700",
    }
    assert [(s["t"], s["requests"], s["latency_p50_ms"]) for s in plain["all"]["series"]] == [
        (at(d, 0).strftime("%Y-%m-%dT%H:%M:%SZ"), n, p50) for d, n, p50 in [(0, 1, 300), (1, 3, 200), (2, 2, 250), (4, 1, 500)]
    ]
    assert plain["env"]["team values"] == [
        {"value": "chat", "requests": 1, "cost_usd": "0.000001500", "tokens": 22, "latency_p50_ms": 150,
         "latency_p95_ms": 150, "error_rate": 0.0},
    ]
    assert plain["team"]["keys"] == ["team", "env"]
    assert [(u["user_id"], u["requests"], u["cost_usd"]) for u in plain["all"]["users"]] == [
        ("alice", 3, "0.000005100"), ("carol", 1, "0.000000500"), ("bob", 2, "0.000000000"),
    ]


def test_resent_repriced_and_rescored_events_count_once(services: Services) -> None:
    ch = services.ch
    insert(ch, EVENTS)
    rollup.refresh(ch, settle_s=0)
    before = panels.kpis(ch, "o1", Filters(start=START, end=END))
    assert (before["requests"], before["cost_usd"]) == (7, "0.000007100")

    # e2 repriced, e5 re-sent unchanged, e6 re-scored: new versions of the same rows.
    e2, e5, e6 = (next(e for e in EVENTS if e.request_id == rid) for rid in ("e2", "e5", "e6"))
    insert(ch, [event("e2", e2.created_at, "gpt-4o", 200, 200, 9000, "alice", {"team": "search", "env": "dev"},
                      session_id="s1"), e5])
    ch.insert_jsonl("request_events", e6.to_row()[:-2] + b', "scores": {"helpful": 1}}\n')
    assert rollup.plan(ch, "o1", START, END) is None  # days 1 and 2 are dirty: read from request_events
    expected = {name: snapshot(ch, Filters(start=START, end=END, **kw)) for name, kw in FILTERS.items()}
    assert (expected["all"]["kpis"]["requests"], expected["all"]["kpis"]["cost_usd"]) == (7, "0.000014100")
    assert expected["team"]["top models"] == [{"value": "gpt-4o", "requests": 3, "cost_usd": "0.000009100", "tokens": 96}]

    assert rollup.refresh(ch, settle_s=0) == 2
    assert rollup.plan(ch, "o1", START, END) is not None
    for name, kw in FILTERS.items():
        assert snapshot(ch, Filters(start=START, end=END, **kw)) == expected[name], name
    # the old versions of the recomputed days are gone from the rollup
    (n,) = ch.query("SELECT count(DISTINCT version) AS n FROM request_rollup WHERE org_id = 'o1' AND day = {d:Date}",
                    {"d": at(1, 0).date().isoformat()})
    assert n == {"n": 1}


def test_today_is_never_computed(services: Services) -> None:
    ch = services.ch
    now = datetime.now(UTC)
    insert(ch, [event("t1", now - timedelta(minutes=1), "gpt-4o", 200, 100, 1, "alice", {}),
                event("y1", now - timedelta(days=1), "gpt-4o", 200, 100, 1, "alice", {})])
    assert rollup.refresh(ch, settle_s=0) == 1  # yesterday (and t1 too, a minute after midnight)
    days = ch.query("SELECT toString(day) AS d FROM request_rollup WHERE org_id = 'o1' GROUP BY day ORDER BY day")
    assert now.date().isoformat() not in [d["d"] for d in days]


def test_days_with_many_properties_per_request_skip_pairs_and_still_answer(services: Services) -> None:
    ch = services.ch
    many = {f"k{i}": f"v{i}" for i in range(5)}  # 25 pairs a request, over the limit of 16
    insert(ch, [event(f"m{i}", at(1, i), "gpt-4o", 200, 100 * i, i, "alice", many | {"team": "search" if i % 2 else "chat"})
                for i in range(6)])
    f = Filters(start=START, end=END, properties=[("team", "search")])
    plain = (panels.property_keys(ch, "o1", f), panels.property_values(ch, "o1", f, "k1"), panels.kpis(ch, "o1", f))
    rollup.refresh(ch, settle_s=0)
    assert rollup.plan(ch, "o1", START, END, pairs=True) is None
    assert rollup.plan(ch, "o1", START, END) is not None
    assert (panels.property_keys(ch, "o1", f), panels.property_values(ch, "o1", f, "k1"), panels.kpis(ch, "o1", f)) == plain
    assert plain[0] == ["k0", "k1", "k2", "k3", "k4", "team"]
    assert (plain[2]["requests"], plain[2]["latency_p50_ms"]) == (3, 300)


def test_a_day_without_events_computes_to_nothing(services: Services) -> None:
    rollup.compute_day(services.ch, "o1", D)
    assert services.ch.query("SELECT count() AS n FROM request_rollup") == [{"n": 0}]
