"""Prompt versions: templates registered in PostgreSQL, and per version (registered or only seen in traffic through
`Helicone-Prompt-Version`) requests, cost, tokens, latency, error rate and average scores from ClickHouse."""

from __future__ import annotations

import difflib
import re
from datetime import UTC
from typing import Any

import orjson
from psycopg.types.json import Jsonb

from dashboard.queries import Filters, iso
from pricing.prices import usd_from_nanos
from storage.clickhouse import ClickHouse
from storage.postgres import Postgres

PROMPT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}")
VARIABLE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_.-]*)\s*\}\}")
ROLES = ("system", "developer", "user", "assistant", "tool")
FIELDS = {"prompt_id", "messages", "model", "parameters", "note"}
MAX_MESSAGES = 100


class PromptError(ValueError):
    """A prompt definition llmlens cannot store; the message names the field."""


def validate(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise PromptError("expected a JSON object")
    unknown = set(body) - FIELDS
    if unknown:
        raise PromptError(f"unknown field {sorted(unknown)[0]!r}; known: {', '.join(sorted(FIELDS))}")
    pid = body.get("prompt_id")
    if not isinstance(pid, str) or not PROMPT_ID.fullmatch(pid):
        raise PromptError("prompt_id must be 1 to 128 letters, digits or . _ : / - (what clients send as Helicone-Prompt-Id)")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or len(messages) > MAX_MESSAGES:
        raise PromptError(f"messages must be a list of 1 to {MAX_MESSAGES} {{role, content}} objects")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or set(m) != {"role", "content"}:
            raise PromptError(f"messages[{i}] must be an object with exactly role and content")
        if m["role"] not in ROLES:
            raise PromptError(f"messages[{i}].role must be one of {', '.join(ROLES)}, not {m['role']!r}")
        if not isinstance(m["content"], str) or not m["content"].strip():
            raise PromptError(f"messages[{i}].content must be a non-empty string")
    model = body.get("model") or ""
    if not isinstance(model, str) or len(model) > 200:
        raise PromptError("model must be a string of at most 200 characters")
    params = body.get("parameters") or {}
    if not isinstance(params, dict) or len(params) > 50 or not all(isinstance(k, str) for k in params):
        raise PromptError("parameters must be an object of at most 50 settings, e.g. {\"temperature\": 0.2}")
    note = body.get("note") or ""
    if not isinstance(note, str) or len(note) > 1000:
        raise PromptError("note must be a string of at most 1000 characters")
    variables: list[str] = []
    for m in messages:
        for v in VARIABLE.findall(m["content"]):
            if v not in variables:
                variables.append(v)
    return {"prompt_id": pid, "messages": messages, "model": model, "parameters": params, "note": note,
            "variables": variables}


def _version_out(r: dict[str, Any]) -> dict[str, Any]:
    return {"prompt_id": r["prompt_id"], "version": r["version"], "messages": r["messages"], "model": r["model"],
            "parameters": r["parameters"], "variables": r["variables"], "note": r["note"], "created_by": r["created_by"],
            "created_at": r["created_at"].astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")}


def create_version(pg: Postgres, org_id: str, body: Any, created_by: str = "") -> dict[str, Any]:
    """Register the next version of a prompt (1 for a new prompt id); concurrent creates get distinct numbers."""
    v = validate(body)
    with pg.connection() as conn, conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"prompt:{org_id}:{v['prompt_id']}",))
        row = conn.execute(
            "INSERT INTO prompt_versions (org_id, prompt_id, version, messages, model, parameters, variables, note,"
            " created_by) SELECT %(org)s, %(pid)s, coalesce(max(version), 0) + 1, %(messages)s, %(model)s,"
            " %(parameters)s, %(variables)s, %(note)s, %(by)s FROM prompt_versions"
            " WHERE org_id = %(org)s AND prompt_id = %(pid)s RETURNING *",
            {"org": org_id, "pid": v["prompt_id"], "messages": Jsonb(v["messages"]), "model": v["model"],
             "parameters": Jsonb(v["parameters"]), "variables": Jsonb(v["variables"]), "note": v["note"],
             "by": created_by}).fetchone()
    assert row is not None
    return _version_out(row)


def registered(pg: Postgres, org_id: str, prompt_id: str | None = None) -> list[dict[str, Any]]:
    rows = pg.fetchall("SELECT * FROM prompt_versions WHERE org_id = %s" + (" AND prompt_id = %s" if prompt_id else "")
                       + " ORDER BY prompt_id, version", (org_id, prompt_id) if prompt_id else (org_id,))
    return [_version_out(r) for r in rows]


SEEN = """
SELECT prompt_id, uniqExact(prompt_version) AS versions, count() AS requests, sum(cost_nanos) AS cost_sum,
       max(created_at) AS last_seen
FROM request_events FINAL WHERE {where} AND prompt_id != ''
GROUP BY prompt_id ORDER BY requests DESC, prompt_id LIMIT 500
"""
PER_VERSION = """
SELECT prompt_version AS version, count() AS requests, sum(cost_nanos) AS cost_sum,
       sum(prompt_tokens + completion_tokens) AS tokens,
       quantileExact(0.5)(latency_ms) AS p50, quantileExact(0.95)(latency_ms) AS p95,
       countIf(status >= 400 OR status < 0) AS errors,
       sumMap(scores) AS score_sums, sumMap(mapApply((k, v) -> (k, toInt64(1)), scores)) AS score_counts
FROM request_events FINAL WHERE {where} AND prompt_id = {pid:String}
GROUP BY version
"""


def list_prompts(ch: ClickHouse, pg: Postgres, org_id: str, f: Filters) -> list[dict[str, Any]]:
    """Every prompt id seen in the range or registered, with its versions and traffic."""
    where, params = f.where(org_id)
    seen = {r["prompt_id"]: r for r in ch.query(SEEN.replace("{where}", where), params, name="prompts")}
    reg: dict[str, list[int]] = {}
    for r in pg.fetchall("SELECT prompt_id, version FROM prompt_versions WHERE org_id = %s ORDER BY version", (org_id,)):
        reg.setdefault(r["prompt_id"], []).append(r["version"])
    out = []
    for pid in sorted(set(seen) | set(reg), key=lambda p: (-int(seen[p]["requests"]) if p in seen else 0, p)):
        s = seen.get(pid)
        out.append({"prompt_id": pid, "registered_versions": reg.get(pid, []),
                    "versions_seen": int(s["versions"]) if s else 0, "requests": int(s["requests"]) if s else 0,
                    "cost_usd": usd_from_nanos(int(s["cost_sum"] or 0) if s else 0),
                    "last_seen": iso(s["last_seen"]) if s else None})
    return out


def _version_key(v: str) -> tuple[int, Any]:
    return (0, int(v)) if v.isdigit() else (1, v)


def versions(ch: ClickHouse, pg: Postgres, org_id: str, prompt_id: str, f: Filters) -> list[dict[str, Any]] | None:
    """Per version: the template when registered, and its traffic in the range; None when the id is unknown."""
    where, params = f.where(org_id)
    rows = {r["version"]: r for r in ch.query(PER_VERSION.replace("{where}", where), {**params, "pid": prompt_id},
                                              name="prompt_versions")}
    templates = {str(t["version"]): t for t in registered(pg, org_id, prompt_id)}
    if not rows and not templates:
        exists = ch.query("SELECT 1 AS ok FROM request_events WHERE org_id = {org_id:String} AND prompt_id = {pid:String}"
                          " LIMIT 1", {"org_id": org_id, "pid": prompt_id}, name="prompt_exists")
        if not exists:
            return None
    out = []
    for v in sorted(set(rows) | set(templates), key=_version_key):
        r = rows.get(v)
        metrics = None
        if r is not None:
            n = int(r["requests"])
            counts = {k: int(c) for k, c in r["score_counts"].items()}
            metrics = {"requests": n, "cost_usd": usd_from_nanos(int(r["cost_sum"] or 0)), "tokens": int(r["tokens"]),
                       "latency_p50_ms": int(r["p50"]), "latency_p95_ms": int(r["p95"]),
                       "error_rate": round(int(r["errors"]) / n, 4),
                       "scores": {k: {"avg": round(int(r["score_sums"][k]) / c, 4), "count": c}
                                  for k, c in sorted(counts.items()) if c}}
        out.append({"version": v, "template": templates.get(v), "metrics": metrics})
    return out


def render_template(t: dict[str, Any] | None) -> list[str]:
    """A registered template as lines of text, for reading and for diffs."""
    if t is None:
        return []
    lines = [f"model: {t['model'] or '(any)'}"]
    if t["parameters"]:
        lines.append("parameters: " + orjson.dumps(t["parameters"], option=orjson.OPT_SORT_KEYS).decode())
    for m in t["messages"]:
        lines.append(f"[{m['role']}]")
        lines.extend(m["content"].splitlines() or [""])
    return lines


def compare(ch: ClickHouse, pg: Postgres, org_id: str, prompt_id: str, a: str, b: str, f: Filters) -> dict[str, Any] | None:
    """Two versions side by side: their metrics, and a unified diff of their templates when both are registered."""
    all_versions = versions(ch, pg, org_id, prompt_id, f)
    if all_versions is None:
        return None
    by_v = {v["version"]: v for v in all_versions}
    missing = [x for x in (a, b) if x not in by_v]
    if missing:
        raise PromptError(f"prompt {prompt_id!r} has no version {missing[0]!r} (in this range or registered)")
    ta, tb = by_v[a]["template"], by_v[b]["template"]
    diff = None
    if ta is not None and tb is not None:
        diff = list(difflib.unified_diff(render_template(ta), render_template(tb), f"version {a}", f"version {b}",
                                         lineterm="", n=3))
    return {"prompt_id": prompt_id, "a": by_v[a], "b": by_v[b], "diff": diff}
