"""Dashboard panels: one org-scoped, parameterized query function per panel; pages and /api/v1 twins share them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from dashboard import rollup
from dashboard.queries import Filters
from pricing.prices import usd_from_nanos
from storage.clickhouse import ClickHouse

RANGES = {"1h": timedelta(hours=1), "24h": timedelta(days=1), "7d": timedelta(days=7), "30d": timedelta(days=30)}
# Grouping identifiers come only from here; user input picks a key, never a column.
GROUP_BY = {"model": "model", "provider": "provider", "user": "user_id"}


@dataclass(frozen=True)
class Window:
    start: datetime
    end: datetime

    @property
    def bucket(self) -> tuple[str, int]:
        """(ClickHouse interval function, seconds) for time series over this window."""
        span = (self.end - self.start).total_seconds()
        if span <= 2 * 3600:
            return "toStartOfMinute", 60
        if span <= 2 * 86400:
            return "toStartOfHour", 3600
        return "toStartOfDay", 86400


def window(range_key: str, now: datetime | None = None) -> Window:
    now = now or datetime.now(UTC)
    return Window(now - RANGES.get(range_key, RANGES["24h"]), now)


def _usd(nanos: Any) -> str | None:
    return None if nanos is None else usd_from_nanos(int(nanos))


# Each panel has a plain query over request_events FINAL and a twin over rollup.source() (whole days from the
# daily rollup, the rest from FINAL) that merges partial aggregates into the same columns, so both answer alike.
COST = "if(sum(cost_n) = 0, NULL, sum(cost)) AS cost_sum"  # sum() of a Nullable: NULL when no cost is known
QUANTILES = "quantilesExactMerge(0.5, 0.95)(latency) AS q"


def _rows(ch: ClickHouse, name: str, plain: str, rolled: str, source: tuple[str, dict[str, Any]] | None,
          params: dict[str, Any]) -> list[dict[str, Any]]:
    if source is None:
        return ch.query(plain, params, name=name)
    return ch.query(rolled.replace("{source}", source[0]), {**source[1], **params}, name=name + "_rollup")


KPIS = """
SELECT count() AS requests,
       sum(cost_nanos) AS cost_sum,
       countIf(cost_nanos IS NULL AND model != '') AS unpriced,
       sum(prompt_tokens) AS prompt_sum, sum(completion_tokens) AS completion_sum,
       round(avg(latency_ms), 1) AS latency_avg,
       quantileExact(0.5)(latency_ms) AS latency_p50, quantileExact(0.95)(latency_ms) AS latency_p95,
       countIf(status >= 400 OR status < 0) AS errors,
       countIf(cache_hit) AS cache_hits, sum(cache_saved_nanos) AS saved_sum
FROM request_events FINAL WHERE {where}
"""
KPIS_ROLLED = f"""
SELECT sum(n) AS requests, {COST}, sum(unpriced) AS unpriced,
       sum(prompt) AS prompt_sum, sum(completion) AS completion_sum,
       round(sum(latency_total) / sum(n), 1) AS latency_avg,
       {QUANTILES}, q[1] AS latency_p50, q[2] AS latency_p95,
       sum(errors) AS errors, sum(cache_hits) AS cache_hits, sum(saved) AS saved_sum
FROM ({{source}})
"""


def kpis(ch: ClickHouse, org_id: str, f: Filters) -> dict[str, Any]:
    where, params = f.where(org_id)
    src = rollup.source(ch, org_id, f, ["n", "cost", "cost_n", "unpriced", "prompt", "completion", "latency_total",
                                        "errors", "cache_hits", "saved", "latency"])
    (r,) = _rows(ch, "overview_kpis", KPIS.replace("{where}", where), KPIS_ROLLED, src, params)
    n = int(r["requests"])
    return {
        "requests": n,
        "cost_usd": _usd(r["cost_sum"] or 0),
        "prompt_tokens": int(r["prompt_sum"]), "completion_tokens": int(r["completion_sum"]),
        "latency_avg_ms": float(r["latency_avg"]) if n else None,
        "latency_p50_ms": int(r["latency_p50"]) if n else None,
        "latency_p95_ms": int(r["latency_p95"]) if n else None,
        "errors": int(r["errors"]),
        "error_rate": round(int(r["errors"]) / n, 4) if n else 0.0,
        "unpriced": int(r["unpriced"]),
        "cost_coverage": round(1 - int(r["unpriced"]) / n, 4) if n else 1.0,
        "cache_hits": int(r["cache_hits"]),
        "cache_saved_usd": _usd(r["saved_sum"] or 0),
    }


SERIES = """
SELECT {bucket}(created_at) AS t, count() AS requests, sum(cost_nanos) AS cost_sum,
       countIf(status >= 400 OR status < 0) AS errors,
       quantileExact(0.5)(latency_ms) AS p50, quantileExact(0.95)(latency_ms) AS p95
FROM request_events FINAL WHERE {where}
GROUP BY t ORDER BY t
"""
SERIES_ROLLED = f"""
SELECT g_t AS t, sum(n) AS requests, {COST}, sum(errors) AS errors, {QUANTILES}, q[1] AS p50, q[2] AS p95
FROM ({{source}}) GROUP BY t ORDER BY t
"""


def series(ch: ClickHouse, org_id: str, f: Filters, w: Window) -> list[dict[str, Any]]:
    where, params = f.where(org_id)
    fn, _ = w.bucket
    src = rollup.source(ch, org_id, f, ["n", "cost", "cost_n", "errors", "latency"], daily=True) if fn == "toStartOfDay" else None
    rows = _rows(ch, "overview_series", SERIES.replace("{bucket}", fn).replace("{where}", where), SERIES_ROLLED, src, params)
    return [{"t": r["t"].replace(" ", "T") + "Z", "requests": int(r["requests"]), "cost_usd": _usd(r["cost_sum"] or 0),
             "errors": int(r["errors"]), "latency_p50_ms": int(r["p50"]), "latency_p95_ms": int(r["p95"])} for r in rows]


TOP = """
SELECT {column} AS value, count() AS requests, sum(cost_nanos) AS cost_sum,
       sum(prompt_tokens + completion_tokens) AS tokens
FROM request_events FINAL WHERE {where} AND {column} != ''
GROUP BY value ORDER BY cost_sum DESC NULLS LAST, requests DESC, value LIMIT {limit:UInt32}
"""
TOP_ROLLED = f"""
SELECT g_by AS value, sum(n) AS requests, {COST}, sum(prompt) + sum(completion) AS tokens
FROM ({{source}}) WHERE g_by != ''
GROUP BY value ORDER BY cost_sum DESC NULLS LAST, requests DESC, value LIMIT {{limit:UInt32}}
"""


def top(ch: ClickHouse, org_id: str, f: Filters, by: str, limit: int = 10) -> list[dict[str, Any]]:
    column = GROUP_BY[by]
    where, params = f.where(org_id)
    src = rollup.source(ch, org_id, f, ["n", "cost", "cost_n", "prompt", "completion"], by=by)
    rows = _rows(ch, f"top_{by}", TOP.replace("{column}", column).replace("{where}", where), TOP_ROLLED, src,
                 {**params, "limit": limit})
    return [{"value": r["value"], "requests": int(r["requests"]), "cost_usd": _usd(r["cost_sum"] or 0),
             "tokens": int(r["tokens"])} for r in rows]


PROPERTY_KEYS = """
SELECT arrayJoin(arrayDistinct(mapKeys(properties))) AS key, count() AS requests
FROM request_events FINAL WHERE {where} GROUP BY key ORDER BY requests DESC, key LIMIT 200
"""
PROPERTY_KEYS_ROLLED = """
SELECT g_by AS key, sum(n) AS requests FROM ({source}) GROUP BY key ORDER BY requests DESC, key LIMIT 200
"""


def property_keys(ch: ClickHouse, org_id: str, f: Filters) -> list[str]:
    where, params = f.where(org_id)
    src = rollup.source(ch, org_id, f, ["n"], by="keys")
    return [r["key"] for r in _rows(ch, "property_keys", PROPERTY_KEYS.replace("{where}", where), PROPERTY_KEYS_ROLLED,
                                    src, params)]


PROPERTY_VALUES = """
SELECT properties[{pkey:String}] AS value, count() AS requests, sum(cost_nanos) AS cost_sum,
       sum(prompt_tokens + completion_tokens) AS tokens,
       quantileExact(0.5)(latency_ms) AS p50, quantileExact(0.95)(latency_ms) AS p95,
       countIf(status >= 400 OR status < 0) AS errors
FROM request_events FINAL WHERE {where} AND mapContains(properties, {pkey:String})
GROUP BY value ORDER BY cost_sum DESC NULLS LAST, requests DESC, value LIMIT 500
"""
PROPERTY_VALUES_ROLLED = f"""
SELECT g_by AS value, sum(n) AS requests, {COST}, sum(prompt) + sum(completion) AS tokens,
       {QUANTILES}, q[1] AS p50, q[2] AS p95, sum(errors) AS errors
FROM ({{source}}) GROUP BY value ORDER BY cost_sum DESC NULLS LAST, requests DESC, value LIMIT 500
"""


def property_values(ch: ClickHouse, org_id: str, f: Filters, key: str) -> list[dict[str, Any]]:
    where, params = f.where(org_id)
    src = rollup.source(ch, org_id, f, ["n", "cost", "cost_n", "prompt", "completion", "latency", "errors"], by="values",
                        key=key)
    rows = _rows(ch, "property_values", PROPERTY_VALUES.replace("{where}", where), PROPERTY_VALUES_ROLLED, src,
                 {**params, "pkey": key})
    return [{"value": r["value"], "requests": int(r["requests"]), "cost_usd": _usd(r["cost_sum"] or 0),
             "tokens": int(r["tokens"]), "latency_p50_ms": int(r["p50"]), "latency_p95_ms": int(r["p95"]),
             "error_rate": round(int(r["errors"]) / int(r["requests"]), 4)} for r in rows]


PROPERTY_SERIES = """
SELECT {bucket}(created_at) AS t, properties[{pkey:String}] AS value, sum(cost_nanos) AS cost_sum
FROM request_events FINAL WHERE {where} AND mapContains(properties, {pkey:String})
GROUP BY t, value ORDER BY t, value
"""
PROPERTY_SERIES_ROLLED = f"""
SELECT g_t AS t, g_by AS value, {COST} FROM ({{source}}) GROUP BY t, value ORDER BY t, value
"""


def property_series(ch: ClickHouse, org_id: str, f: Filters, key: str, w: Window) -> list[dict[str, Any]]:
    where, params = f.where(org_id)
    sql = PROPERTY_SERIES.replace("{bucket}", w.bucket[0]).replace("{where}", where)
    daily = w.bucket[0] == "toStartOfDay"
    src = rollup.source(ch, org_id, f, ["cost", "cost_n"], by="values", key=key, daily=True) if daily else None
    return [{"t": r["t"].replace(" ", "T") + "Z", "value": r["value"], "cost_usd": _usd(r["cost_sum"] or 0)}
            for r in _rows(ch, "property_series", sql, PROPERTY_SERIES_ROLLED, src, {**params, "pkey": key})]


USERS = """
SELECT user_id, count() AS requests, sum(cost_nanos) AS cost_sum,
       sum(prompt_tokens + completion_tokens) AS tokens, countIf(status >= 400 OR status < 0) AS errors,
       min(created_at) AS first_seen, max(created_at) AS last_seen
FROM request_events FINAL WHERE {where} AND user_id != ''
GROUP BY user_id ORDER BY cost_sum DESC NULLS LAST, requests DESC, user_id LIMIT {limit:UInt32}
"""
USERS_ROLLED = f"""
SELECT g_by AS user_id, sum(n) AS requests, {COST}, sum(prompt) + sum(completion) AS tokens, sum(errors) AS errors,
       min(first_seen) AS first_seen, max(last_seen) AS last_seen
FROM ({{source}}) WHERE g_by != ''
GROUP BY user_id ORDER BY cost_sum DESC NULLS LAST, requests DESC, user_id LIMIT {{limit:UInt32}}
"""


def users(ch: ClickHouse, org_id: str, f: Filters, limit: int = 500) -> list[dict[str, Any]]:
    where, params = f.where(org_id)
    src = rollup.source(ch, org_id, f, ["n", "cost", "cost_n", "prompt", "completion", "errors", "first_seen", "last_seen"],
                        by="user")
    return [{"user_id": r["user_id"], "requests": int(r["requests"]), "cost_usd": _usd(r["cost_sum"] or 0),
             "tokens": int(r["tokens"]), "error_rate": round(int(r["errors"]) / int(r["requests"]), 4),
             "first_seen": r["first_seen"].replace(" ", "T") + "Z", "last_seen": r["last_seen"].replace(" ", "T") + "Z"}
            for r in _rows(ch, "users", USERS.replace("{where}", where), USERS_ROLLED, src, {**params, "limit": limit})]


# by -> (the group's columns, GROUP BY, which rows belong to some group); `property.<key>` is added in scores_by.
SCORE_GROUPS = {
    "model": ("model AS value", "value", "model != ''"),
    "user": ("user_id AS value", "value", "user_id != ''"),
    "session": ("session_id AS value", "value", "session_id != ''"),
    "prompt_version": ("prompt_version AS value, prompt_id", "prompt_id, value", "prompt_id != ''"),
}
# Sums in Int128 (as text: JSON readers stop at 64 bits) so the average is exact whatever the scores.
SCORES_BY = """
SELECT {columns}, count() AS requests, countIf(notEmpty(scores)) AS scored,
       mapApply((k, v) -> (k, toString(v)), sumMap(mapApply((k, v) -> (k, toInt128(v)), scores))) AS sums,
       sumMap(mapApply((k, v) -> (k, toUInt64(1)), scores)) AS counts
FROM request_events FINAL WHERE {where} AND {present}
GROUP BY {group} HAVING scored > 0
ORDER BY scored DESC, requests DESC, {group} LIMIT {limit:UInt32}
"""


def score_groupings() -> str:
    return ", ".join(sorted(SCORE_GROUPS)) + " or property.<key>"


def scores_by(ch: ClickHouse, org_id: str, f: Filters, by: str, limit: int = 500) -> list[dict[str, Any]]:
    """Average of each score per group (groups with at least one scored request), most-scored groups first.

    Each row: value (and prompt_id for prompt versions), requests in the group, scored requests, and per score name
    {"avg": mean over the requests that have that score, "count": how many have it}.
    """
    where, params = f.where(org_id)
    if by.startswith("property.") and by != "property.":
        columns, group, present = "properties[{pkey:String}] AS value", "value", "mapContains(properties, {pkey:String})"
        params["pkey"] = by[len("property."):]
    else:
        columns, group, present = SCORE_GROUPS[by]
    sql = (SCORES_BY.replace("{columns}", columns).replace("{group}", group).replace("{present}", present)
           .replace("{where}", where))
    out = []
    for r in ch.query(sql, {**params, "limit": limit}, name="scores_by"):
        sums, counts = r["sums"], r["counts"]
        row: dict[str, Any] = {"value": r["value"]}
        if "prompt_id" in r:
            row["prompt_id"] = r["prompt_id"]
        row |= {"requests": int(r["requests"]), "scored": int(r["scored"]),
                "scores": {k: {"avg": int(sums[k]) / int(counts[k]), "count": int(counts[k])} for k in sorted(counts)}}
        out.append(row)
    return out
