"""Sessions and traces: every request (or tool step) sharing a Helicone-Session-Id, or an OTLP trace id.

`Helicone-Session-Path` (`/plan/search/fetch`) nests steps into a tree; each node carries the totals of its subtree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from dashboard.queries import Filters, iso
from pricing.prices import usd_from_nanos
from storage.clickhouse import ClickHouse

MAX_SESSIONS = 1000
MAX_STEPS = 5000

PER_SESSION = """
SELECT session_id,
       argMaxIf(session_name, created_at, session_name != '') AS name,
       count() AS requests, sum(cost_nanos) AS cost_sum, sum(prompt_tokens + completion_tokens) AS tokens,
       min(created_at) AS started, max(created_at + toIntervalMillisecond(latency_ms)) AS ended,
       uniqExactIf(user_id, user_id != '') AS users, countIf(status >= 400 OR status < 0) AS errors
FROM request_events FINAL WHERE {where} AND session_id != ''
GROUP BY session_id
"""
LIST = "SELECT * FROM (" + PER_SESSION + ") ORDER BY started DESC, session_id LIMIT {limit:UInt32}"
BY_NAME = """
SELECT name, count() AS sessions, avg(cost_sum) AS avg_cost, avg(dateDiff('millisecond', started, ended)) AS avg_ms,
       sum(requests) AS requests
FROM (""" + PER_SESSION + """) GROUP BY name ORDER BY sessions DESC, name LIMIT 100
"""
STEPS = """
SELECT request_id, created_at, latency_ms, session_path, session_name, model, provider, path, status, error,
       cost_nanos, prompt_tokens, completion_tokens, source, user_id, scores
FROM request_events FINAL
WHERE org_id = {org_id:String} AND session_id = {session_id:String}
ORDER BY created_at, request_id LIMIT {limit:UInt32}
"""


def _ms(start: str, end: str) -> int:
    fmt = "%Y-%m-%d %H:%M:%S.%f"
    return round((datetime.strptime(end, fmt) - datetime.strptime(start, fmt)).total_seconds() * 1000)


def list_sessions(ch: ClickHouse, org_id: str, f: Filters, limit: int = MAX_SESSIONS) -> list[dict[str, Any]]:
    """Newest first: per session its name, requests, cost, tokens, duration (first start to last end), users, errors."""
    where, params = f.where(org_id)
    rows = ch.query(LIST.replace("{where}", where), {**params, "limit": limit}, name="sessions")
    return [{"session_id": r["session_id"], "name": r["name"], "requests": int(r["requests"]),
             "cost_usd": None if r["cost_sum"] is None else usd_from_nanos(int(r["cost_sum"])),
             "tokens": int(r["tokens"]), "started_at": iso(r["started"]), "ended_at": iso(r["ended"]),
             "duration_ms": _ms(r["started"], r["ended"]), "users": int(r["users"]), "errors": int(r["errors"])}
            for r in rows]


def by_name(ch: ClickHouse, org_id: str, f: Filters) -> list[dict[str, Any]]:
    """Per session name ("Research agent"): how many sessions, their average cost and duration."""
    where, params = f.where(org_id)
    return [{"name": r["name"], "sessions": int(r["sessions"]), "requests": int(r["requests"]),
             "avg_cost_usd": usd_from_nanos(round(float(r["avg_cost"] or 0))), "avg_duration_ms": round(float(r["avg_ms"]))}
            for r in ch.query(BY_NAME.replace("{where}", where), params, name="sessions_by_name")]


@dataclass
class Node:
    name: str
    path: str
    steps: list[dict[str, Any]] = field(default_factory=list)
    children: dict[str, Node] = field(default_factory=dict)

    def totals(self) -> dict[str, Any]:
        steps = list(self.walk())
        priced = [s["cost_nanos"] for s in steps if s["cost_nanos"] is not None]
        return {"requests": len(steps), "cost_usd": usd_from_nanos(sum(priced)) if priced else None,
                "unpriced": len(steps) - len(priced),
                "tokens": sum(s["prompt_tokens"] + s["completion_tokens"] for s in steps),
                "latency_ms": sum(s["latency_ms"] for s in steps),
                "errors": sum(1 for s in steps if s["status"] >= 400 or s["status"] < 0)}

    def walk(self) -> Any:
        yield from self.steps
        for child in self.children.values():
            yield from child.walk()

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "path": self.path, "totals": self.totals(),
                "steps": [_public(s) for s in self.steps], "children": [c.to_dict() for c in self.children.values()]}


def _public(step: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in step.items() if k != "cost_nanos"}
    out["cost_usd"] = None if step["cost_nanos"] is None else usd_from_nanos(step["cost_nanos"])
    return out


def session(ch: ClickHouse, org_id: str, session_id: str) -> dict[str, Any] | None:
    """The session's steps in time order, its tree (by path) with totals on every node, and its timeline."""
    rows = ch.query(STEPS, {"org_id": org_id, "session_id": session_id, "limit": MAX_STEPS}, name="session_steps")
    if not rows:
        return None
    start = rows[0]["created_at"]
    steps = []
    for r in rows:
        offset = _ms(start, r["created_at"])
        steps.append({"request_id": r["request_id"], "created_at": iso(r["created_at"]), "offset_ms": offset,
                      "latency_ms": int(r["latency_ms"]), "path": r["session_path"] or "/", "model": r["model"],
                      "provider": r["provider"], "endpoint": r["path"], "status": int(r["status"]), "error": r["error"],
                      "cost_nanos": None if r["cost_nanos"] is None else int(r["cost_nanos"]),
                      "prompt_tokens": int(r["prompt_tokens"]), "completion_tokens": int(r["completion_tokens"]),
                      "source": r["source"], "user_id": r["user_id"],
                      "scores": {k: int(v) for k, v in sorted(r["scores"].items())}})
    root = Node("session", "/")
    for s in steps:
        node = root
        prefix = ""
        for part in (p for p in s["path"].split("/") if p):
            prefix += "/" + part
            node = node.children.setdefault(part, Node(part, prefix))
        node.steps.append(s)
    names = [r["session_name"] for r in rows if r["session_name"]]
    end = max(s["offset_ms"] + s["latency_ms"] for s in steps)
    sums: dict[str, list[int]] = {}
    for st in steps:
        for k, v in st["scores"].items():
            sums.setdefault(k, []).append(v)
    return {"session_id": session_id, "name": names[-1] if names else "", "started_at": steps[0]["created_at"],
            "scores": {k: {"avg": round(sum(v) / len(v), 4), "count": len(v)} for k, v in sorted(sums.items())},
            "duration_ms": end, "users": sorted({s["user_id"] for s in steps if s["user_id"]}),
            "totals": root.totals(), "tree": root.to_dict(), "timeline": [_public(s) for s in steps],
            "truncated": len(rows) == MAX_STEPS}


def label(step: dict[str, Any]) -> str:
    """What a step is, for the tree and the timeline: the model, or for a tool step its endpoint or source."""
    return str(step["model"] or step["endpoint"] or step["source"])
