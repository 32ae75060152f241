"""Daily rollups behind the long-window panels: whole (org, day)s recomputed from request_events FINAL.

A panel over a window reads the clean full days inside it from `request_rollup` and the rest (the partial first
and last day, today, days not recomputed since their last insert) from `request_events FINAL`, in one UNION ALL,
and merges both halves the same way; so it answers exactly what the plain FINAL query answers. Nothing is added
to a rollup on insert (a re-sent, repriced or re-scored event would count twice): inserts only mark their
(org, day) dirty (a materialized view, migrations/clickhouse/0002_request_rollup.sql), and `refresh` recomputes
dirty days once they are over and quiet.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from dashboard.queries import Filters
from ingest.event import format_ts
from storage.clickhouse import ClickHouse

# A day is recomputed only this long after the last insert touching it: the marking view sees a block just
# before ClickHouse commits the block's part, and a recomputation must not start in between.
SETTLE_S = 60.0
# prop_pair rows cost k² per request carrying k properties; a day averaging more than this (4 properties each)
# gets none, and panels that need them read that day from request_events.
MAX_PAIRS_PER_REQUEST = 16

DIRTY = """
SELECT org_id, toString(day) AS d, max(computed_at) > toDateTime64(0, 6, 'UTC') AS seen FROM request_rollup_days
GROUP BY org_id, day
HAVING max(marked_at) >= max(computed_at) AND day < toDate(now64(6, 'UTC'))
   AND max(marked_at) < now64(6, 'UTC') - toIntervalMillisecond({settle_ms:UInt64})
ORDER BY day DESC, org_id LIMIT {limit:UInt32}
"""

COMPUTE = """
INSERT INTO request_rollup (org_id, kind, key, value, sub, sub_value, day, provider, model, status, version, n, cost,
    cost_n, unpriced, prompt, completion, latency_total, errors, cache_hits, saved, first_seen, last_seen, latency)
SELECT org_id, g.1 AS g_kind, g.2 AS g_key, g.3 AS g_value, g.4 AS g_sub, g.5 AS g_sub_value, toDate(created_at) AS g_day,
       if(g_kind IN ('all', 'prop'), provider, '') AS g_provider,
       if(g_kind IN ('all', 'prop', 'user'), model, '') AS g_model,
       if(g_kind IN ('all', 'prop'), status, 0) AS g_status,
       fromUnixTimestamp64Micro({version:Int64}, 'UTC'),
       count(), sum(ifNull(cost_nanos, 0)), count(cost_nanos), countIf(cost_nanos IS NULL AND model != ''),
       sum(prompt_tokens), sum(completion_tokens), sum(latency_ms), countIf(status >= 400 OR status < 0),
       countIf(cache_hit), sum(cache_saved_nanos), min(created_at), max(created_at),
       quantilesExactState(0.5, 0.95)(latency_ms)
FROM (
    SELECT org_id, created_at, provider, model, status, latency_ms, cost_nanos, prompt_tokens, completion_tokens,
           cache_hit, cache_saved_nanos, user_id, properties, arrayDistinct(mapKeys(properties)) AS pkeys
    FROM request_events FINAL
    WHERE org_id = {org_id:String} AND created_at >= {start:DateTime64(3)} AND created_at < {end:DateTime64(3)}
)
ARRAY JOIN {rows} AS g
GROUP BY org_id, g_kind, g_key, g_value, g_sub, g_sub_value, g_day, g_provider, g_model, g_status
"""
# The rows each request adds, one statement per entry (each reads the day again, but holds chDB for less time).
ROWS = [
    "arrayConcat([('all', '', '', '', ''), ('user', '', '', user_id, '')], arrayMap(k -> ('prop', k, properties[k], '', ''), pkeys))",
    "arrayMap(k -> ('prop_user', k, properties[k], user_id, ''), pkeys)",
]
PAIR_ROWS = "arrayFlatten(arrayMap(k -> arrayMap(k2 -> ('prop_pair', k, properties[k], k2, properties[k2]), pkeys), pkeys))"
PAIR_COST = """
SELECT count() AS requests, sum(pow(length(arrayDistinct(mapKeys(properties))), 2)) AS pairs FROM request_events FINAL
WHERE org_id = {org_id:String} AND created_at >= {start:DateTime64(3)} AND created_at < {end:DateTime64(3)}
"""

CLEAN = """
SELECT toString(day) AS d, toUnixTimestamp64Micro(max(computed_at)) AS version FROM request_rollup_days
WHERE org_id = {org_id:String} AND day >= {first:Date} AND day < {last:Date}
GROUP BY day HAVING max(computed_at) > max(marked_at) AND ({pairs:UInt8} = 0 OR max(paired_at) = max(computed_at))
ORDER BY day
"""

# What a kind's rows are grouped by besides (org, day); the planner below only picks a kind that has every
# column a panel groups or filters by.
DIMS = {
    "all": {"provider", "model", "status"},
    "prop": {"provider", "model", "status", "prop"},
    "user": {"model", "user"},
    "prop_user": {"prop", "user"},
    "prop_pair": {"prop", "pair"},
}

# Per-row measures: the rollup's column, and the same aggregate over request_events for the raw half.
MEASURES = {
    "n": "count()",
    "cost": "sum(ifNull(cost_nanos, 0))",
    "cost_n": "count(cost_nanos)",
    "unpriced": "countIf(cost_nanos IS NULL AND model != '')",
    "prompt": "sum(prompt_tokens)",
    "completion": "sum(completion_tokens)",
    "latency_total": "sum(latency_ms)",
    "errors": "countIf(status >= 400 OR status < 0)",
    "cache_hits": "countIf(cache_hit)",
    "saved": "sum(cache_saved_nanos)",
    "first_seen": "min(created_at)",
    "last_seen": "max(created_at)",
    "latency": "quantilesExactState(0.5, 0.95)(latency_ms)",
}


def refresh(ch: ClickHouse, *, settle_s: float = SETTLE_S, limit: int = 62) -> int:
    """Recompute up to `limit` dirty (org, day)s, newest first; returns how many. Safe to run concurrently."""
    dirty = ch.query(DIRTY, {"settle_ms": int(settle_s * 1000), "limit": limit}, name="rollup_dirty")
    for row in dirty:
        compute_day(ch, row["org_id"], date.fromisoformat(row["d"]), replace=bool(row["seen"]))
    return len(dirty)


def compute_day(ch: ClickHouse, org_id: str, day: date, *, replace: bool = True) -> None:
    """Replace one (org, day) of the rollup with a new version computed from FINAL data, then drop older versions.

    The version is taken before reading, so an insert after it leaves the day dirty (its mark is newer).
    Readers take the version request_rollup_days names: the old rows until the new ones are recorded, then these.
    """
    (now,) = ch.query("SELECT toUnixTimestamp64Micro(now64(6, 'UTC')) AS v", name="rollup_version")
    version = int(now["v"])
    start = datetime.combine(day, time(), UTC)
    params = {"org_id": org_id, "start": format_ts(start), "end": format_ts(start + timedelta(days=1)),
              "version": version, "day": day.isoformat()}
    (cost,) = ch.query(PAIR_COST, params, name="rollup_pair_cost")
    paired = int(cost["pairs"] or 0) <= MAX_PAIRS_PER_REQUEST * int(cost["requests"])
    for rows in ROWS + ([PAIR_ROWS] if paired else []):
        ch.command(COMPUTE.replace("{rows}", rows), params)
    ch.command(
        "INSERT INTO request_rollup_days (org_id, day, marked_at, computed_at, paired_at) VALUES ({org_id:String},"
        " {day:Date}, toDateTime64(0, 6, 'UTC'), fromUnixTimestamp64Micro({version:Int64}, 'UTC'),"
        " if({paired:UInt8} = 1, fromUnixTimestamp64Micro({version:Int64}, 'UTC'), toDateTime64(0, 6, 'UTC')))",
        {**params, "paired": int(paired)},
    )
    if replace:
        ch.command(
            "DELETE FROM request_rollup WHERE org_id = {org_id:String} AND day = {day:Date}"
            " AND version < fromUnixTimestamp64Micro({version:Int64}, 'UTC')",
            params,
        )


@dataclass(frozen=True)
class Plan:
    """Where a window's rows come from: clean days (with the version to read) and the remaining time ranges."""

    days: list[tuple[str, int]]
    raw: list[tuple[datetime, datetime]]


def plan(ch: ClickHouse, org_id: str, start: datetime, end: datetime, *, pairs: bool = False) -> Plan | None:
    """None when no full day of the window is in the rollup (then the plain FINAL query is as fast).

    With `pairs`, only days that have prop_pair rows count as in the rollup.
    """
    start, end = start.astimezone(UTC), end.astimezone(UTC)
    first = start.date() if start.time() == time() else start.date() + timedelta(days=1)
    last = end.date()  # days before it end by `end`
    if first >= last:
        return None
    rows = ch.query(CLEAN, {"org_id": org_id, "first": first.isoformat(), "last": last.isoformat(), "pairs": int(pairs)},
                    name="rollup_plan")
    if not rows:
        return None
    raw, cursor = [], start
    for r in rows:
        day_start = datetime.combine(date.fromisoformat(r["d"]), time(), UTC)
        if day_start > cursor:
            raw.append((cursor, day_start))
        cursor = day_start + timedelta(days=1)
    if cursor < end:
        raw.append((cursor, end))
    return Plan([(r["d"], int(r["version"])) for r in rows], raw)


@dataclass(frozen=True)
class Group:
    """One grouping column of a panel: its alias, and the expression for it in rollup rows and in raw events."""

    alias: str
    rolled: str
    raw: str


DAY = Group("g_t", "toDateTime(day, 'UTC')", "toStartOfDay(created_at)")
# The filters the rollup has columns for; any other filter set (one added to Filters later too) means no rollup.
SERVED = {"start", "end", "model", "provider", "status", "status_class", "user_id", "properties"}


def source(
    ch: ClickHouse, org_id: str, f: Filters, measures: list[str], *, by: str = "", key: str | None = None,
    daily: bool = False,
) -> tuple[str, dict[str, Any]] | None:
    """A UNION ALL of rollup rows and raw events for a panel, or None when the rollup cannot serve it.

    `by` is what the panel groups by ('' for nothing, 'model', 'provider', 'user', 'keys' for property keys,
    'values' for the values of property `key`); `daily` adds the day (as `g_t`). The result has one column per
    grouping (`g_t`, `g_by`) and the named measures, as partial aggregates to merge (sum, min, max,
    quantilesExactMerge). Filters the rollup has no column for (session, prompt, API key, two properties, an
    empty property value, anything not in SERVED) leave the plain query in charge.
    """
    for field in fields(f):
        value = getattr(f, field.name)
        if field.name not in SERVED and value is not None and not (isinstance(value, list | tuple | dict) and not value):
            return None
    if f.start is None or f.end is None:
        return None
    if len(f.properties) > 1 or any(v == "" for _, v in f.properties):
        return None
    chosen = _choose(f, by, key)
    if chosen is None:
        return None
    kind, clauses, group = chosen
    p = plan(ch, org_id, f.start, f.end, pairs=kind == "prop_pair")
    if p is None:
        return None
    where, params = f.where(org_id)
    if key is not None:
        params["pkey"] = key
    groups = ([DAY] if daily else []) + ([group] if group else [])
    days = []
    for i, (day, version) in enumerate(p.days):
        days.append(f"(day = {{rd{i}:Date}} AND toUnixTimestamp64Micro(version) = {{rv{i}:Int64}})")
        params[f"rd{i}"], params[f"rv{i}"] = day, version
    rolled = (
        "SELECT " + ", ".join([f"{g.rolled} AS {g.alias}" for g in groups] + measures)
        + f" FROM request_rollup WHERE org_id = {{org_id:String}} AND kind = '{kind}'"
        + "".join(f" AND {c}" for c in clauses) + " AND (" + " OR ".join(days) + ")"
    )
    if not p.raw:
        return rolled, params
    ranges = []
    for i, (a, b) in enumerate(p.raw):
        ranges.append(f"(created_at >= {{ra{i}:DateTime64(3)}} AND created_at < {{rb{i}:DateTime64(3)}})")
        params[f"ra{i}"], params[f"rb{i}"] = format_ts(a), format_ts(b)
    extra = " AND mapContains(properties, {pkey:String})" if by == "values" else ""
    raw = (
        "SELECT " + ", ".join([f"{g.raw} AS {g.alias}" for g in groups] + [f"{MEASURES[m]} AS {m}" for m in measures])
        + f" FROM request_events FINAL WHERE {where}{extra} AND (" + " OR ".join(ranges) + ")"
        + (" GROUP BY " + ", ".join(g.alias for g in groups) if groups else "")
    )
    return f"{rolled}\nUNION ALL\n{raw}", params


def _choose(f: Filters, by: str, key: str | None) -> tuple[str, list[str], Group | None] | None:
    """(kind, conditions on rollup rows, grouping column) for a panel, or None."""
    need, clauses = set(), []
    for column, dim in (("model", "model"), ("provider", "provider"), ("status", "status"), ("status_class", "status")):
        if getattr(f, column) is not None:
            need.add(dim)
    if f.model is not None:
        clauses.append("model = {model:String}")
    if f.provider is not None:
        clauses.append("provider = {provider:String}")
    if f.status is not None:
        clauses.append("status = {status:Int32}")
    if f.status_class is not None:
        clauses.append("intDiv(status, 100) = {status_class:Int32}")
    if f.user_id is not None:
        need.add("user")
        clauses.append("sub = {user_id:String}")
    filter_key = f.properties[0][0] if f.properties else None
    if filter_key is not None:
        need.add("prop")
        clauses.append("key = {pk0:String} AND value = {pv0:String}")

    group: Group | None = None
    if by in ("model", "provider"):
        need.add(by)
        group = Group("g_by", by, by)
    elif by == "user":
        need.add("user")
        group = Group("g_by", "sub", "user_id")
    elif by == "keys":
        if filter_key is None:
            need.add("prop")
            group = Group("g_by", "key", "arrayJoin(arrayDistinct(mapKeys(properties)))")
        else:
            need.add("pair")  # keys of requests having the filtered property: pairs with it
            group = Group("g_by", "sub", "arrayJoin(arrayDistinct(mapKeys(properties)))")
    elif by == "values":
        if filter_key is None:
            need.add("prop")
            clauses.append("key = {pkey:String}")
            group = Group("g_by", "value", "properties[{pkey:String}]")
        elif filter_key == key:
            group = Group("g_by", "value", "properties[{pkey:String}]")
        else:
            need.add("pair")
            clauses.append("sub = {pkey:String}")
            group = Group("g_by", "sub_value", "properties[{pkey:String}]")

    for kind, dims in DIMS.items():
        if need <= dims:
            return kind, clauses, group
    return None
