"""Repricing stored events after prices change (a new override, a registry update, a model that had no price).

Events are grouped by (provider, model, token counts, day): each group is priced once, at noon UTC of its day,
and only groups whose stored cost differs are rewritten — server-side, so bodies never pass through Python.
A rewritten row is the same row with the new cost and a newer `updated_at`; ReplacingMergeTree keeps it.
Costs sent with a log (`cost_source = 'provided'`) are never touched. A second run finds nothing to change.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime

import orjson

from ingest.costing import cost_of
from ingest.event import format_ts
from pricing.prices import PriceBook, Usage
from storage.clickhouse import ClickHouse

GROUPS = """
SELECT provider, model, prompt_tokens AS p, completion_tokens AS c, cache_read_tokens AS cr,
       cache_write_tokens AS cw, toDate(created_at) AS d, cost_nanos, cost_source, count() AS n
FROM request_events FINAL
WHERE cost_source != 'provided' AND model != '' AND created_at >= {since:DateTime64(3)}
  AND ({model:String} = '' OR model = {model:String}) AND toYYYYMM(created_at) = {month:UInt32}
GROUP BY provider, model, p, c, cr, cw, d, cost_nanos, cost_source
"""
MONTHS = """
SELECT DISTINCT toYYYYMM(created_at) AS month FROM request_events
WHERE created_at >= {since:DateTime64(3)} AND ({model:String} = '' OR model = {model:String}) ORDER BY month
"""
REWRITE = """
INSERT INTO request_events
SELECT e.* REPLACE (t.new_cost AS cost_nanos, t.new_source AS cost_source, now64(3) AS updated_at)
FROM request_events AS e FINAL
INNER JOIN {table} AS t
   ON e.provider = t.provider AND e.model = t.model AND e.prompt_tokens = t.p AND e.completion_tokens = t.c
  AND e.cache_read_tokens = t.cr AND e.cache_write_tokens = t.cw AND toDate(e.created_at) = t.d
WHERE e.cost_source != 'provided' AND toYYYYMM(e.created_at) = {month:UInt32}
"""


@dataclass
class RepriceResult:
    scanned: int = 0
    changed: int = 0


def reprice(
    ch: ClickHouse,
    prices: PriceBook,
    *,
    since: datetime | None = None,
    model: str = "",
    progress: Callable[[int, int, RepriceResult], None] | None = None,
) -> RepriceResult:
    params = {"since": format_ts(since or datetime(1970, 1, 2, tzinfo=UTC)), "model": model}
    months = [int(r["month"]) for r in ch.query(MONTHS, params, name="reprice_months")]
    result = RepriceResult()
    for i, month in enumerate(months):
        changes = []
        for g in ch.query(GROUPS, {**params, "month": month}, name="reprice_groups"):
            result.scanned += int(g["n"])
            day = date.fromisoformat(g["d"])
            at = datetime(day.year, day.month, day.day, 12, tzinfo=UTC)
            new_cost, new_source = cost_of(prices, g["provider"], g["model"], Usage(g["p"], g["c"], g["cr"], g["cw"]), at)
            old = None if g["cost_nanos"] is None else int(g["cost_nanos"])
            if (new_cost, new_source) != (old, g["cost_source"]):
                changes.append({k: g[k] for k in ("provider", "model", "p", "c", "cr", "cw", "d")}
                               | {"new_cost": new_cost, "new_source": new_source})
                result.changed += int(g["n"])
        if changes:
            _rewrite(ch, changes, month)
        if progress is not None:
            progress(i + 1, len(months), result)
    return result


def _rewrite(ch: ClickHouse, changes: list[dict[str, object]], month: int) -> None:
    table = "reprice_" + secrets.token_hex(6)
    ch.command(
        f"CREATE TABLE {table} (provider String, model String, p UInt32, c UInt32, cr UInt32, cw UInt32, d Date,"
        " new_cost Nullable(UInt64), new_source String) ENGINE = Memory"
    )
    try:
        ch.insert_jsonl(table, b"".join(orjson.dumps(row) + b"\n" for row in changes))
        ch.command(REWRITE.replace("{table}", table), {"month": month})
    finally:
        ch.command(f"DROP TABLE IF EXISTS {table}")
