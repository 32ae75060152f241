"""Parameterized, org-scoped ClickHouse queries; pages and the JSON API call the same functions."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ingest.event import EventError, format_ts, parse_timestamp
from pricing.prices import usd_from_nanos
from storage.clickhouse import ClickHouse

MAX_LIMIT = 1000
DEFAULT_LIMIT = 50


class QueryError(ValueError):
    """A bad filter, cursor or limit; the message says which and why."""


@dataclass
class Filters:
    start: datetime | None = None
    end: datetime | None = None
    model: str | None = None
    provider: str | None = None
    status: int | None = None
    user_id: str | None = None
    session_id: str | None = None
    prompt_id: str | None = None
    api_key_id: str | None = None
    status_class: int | None = None  # 2 for 2xx, 4 for 4xx, 5 for 5xx
    properties: list[tuple[str, str]] = field(default_factory=list)
    scores: list[tuple[str, int]] = field(default_factory=list)

    # column -> (parameter name, ClickHouse type); the only identifiers that ever reach SQL text
    EQUALS = {
        "model": "String", "provider": "String", "status": "Int32",
        "user_id": "String", "session_id": "String", "prompt_id": "String", "api_key_id": "String",
    }

    def where(self, org_id: str) -> tuple[str, dict[str, Any]]:
        clauses = ["org_id = {org_id:String}"]
        params: dict[str, Any] = {"org_id": org_id}
        if self.start is not None:
            clauses.append("created_at >= {start:DateTime64(3)}")
            params["start"] = format_ts(self.start)
        if self.end is not None:
            clauses.append("created_at < {end:DateTime64(3)}")
            params["end"] = format_ts(self.end)
        for column, ch_type in self.EQUALS.items():
            value = getattr(self, column)
            if value is not None:
                clauses.append(f"{column} = {{{column}:{ch_type}}}")
                params[column] = value
        if self.status_class is not None:
            clauses.append("intDiv(status, 100) = {status_class:Int32}")
            params["status_class"] = self.status_class
        for i, (key, value) in enumerate(self.properties):
            clauses.append(f"properties[{{pk{i}:String}}] = {{pv{i}:String}}")
            params[f"pk{i}"], params[f"pv{i}"] = key, value
        for i, (name, score) in enumerate(self.scores):
            # a missing key reads as 0 in a Map, so require the key: score.x=0 means "scored 0", not "unscored"
            clauses.append(f"mapContains(scores, {{sk{i}:String}}) AND scores[{{sk{i}:String}}] = {{sv{i}:Int64}}")
            params[f"sk{i}"], params[f"sv{i}"] = name, score
        return " AND ".join(clauses), params


LIST_PARAMS = {"limit", "cursor", "start", "end", "status_class", *Filters.EQUALS}


def parse_filters(query: Mapping[str, str] | Any, *, allowed: set[str] | None = None) -> Filters:
    """Filters from query parameters (a multi-dict); unknown names are an error, not ignored."""
    allowed = LIST_PARAMS if allowed is None else allowed
    f = Filters()
    for name, value in query.multi_items() if hasattr(query, "multi_items") else query.items():
        if name.startswith("property."):
            key = name[len("property."):]
            if not key:
                raise QueryError("property filter needs a key: property.<Key>=<value>")
            f.properties.append((key, value))
        elif name.startswith("score."):
            f.scores.append((name[len("score."):], parse_score(name, value)))
        elif name not in allowed:
            raise QueryError(f"unknown filter {name!r}; known: {', '.join(sorted(allowed))}, property.<Key>, "
                             "score.<name>")
        elif name in ("start", "end"):
            try:
                setattr(f, name, parse_timestamp(value, name))
            except EventError as exc:
                raise QueryError(str(exc)) from None
        elif name == "status":
            try:
                f.status = int(value)
            except ValueError:
                raise QueryError(f"status {value!r} is not an integer") from None
        elif name == "status_class":
            if value not in ("2xx", "3xx", "4xx", "5xx"):
                raise QueryError(f"status_class must be 2xx, 3xx, 4xx or 5xx, not {value!r}")
            f.status_class = int(value[0])
        elif name in Filters.EQUALS:
            setattr(f, name, value)
    if f.start and f.end and f.start > f.end:
        raise QueryError("start is after end")
    return f


def parse_score(name: str, value: str) -> int:
    if name == "score.":
        raise QueryError("score filter needs a name: score.<name>=<integer>")
    try:
        score = int(value.strip())
    except ValueError:
        raise QueryError(f"{name} {value!r} is not an integer") from None
    if not -(2**63) <= score < 2**63:
        raise QueryError(f"{name} {value!r} is outside the range of a 64-bit integer")
    return score


def parse_limit(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_LIMIT
    try:
        limit = int(raw)
    except ValueError:
        raise QueryError(f"limit {raw!r} is not an integer") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise QueryError(f"limit must be between 1 and {MAX_LIMIT}, not {limit}")
    return limit


def encode_cursor(created_at: str, request_id: str) -> str:
    return base64.urlsafe_b64encode(f"{created_at}|{request_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[str, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created_at, request_id = raw.split("|", 1)
        datetime.strptime(created_at, "%Y-%m-%d %H:%M:%S.%f")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise QueryError(f"cursor {cursor!r} is not a cursor this API returned") from None
    return created_at, request_id


SUMMARY_COLUMNS = (
    "request_id, created_at, provider, model, path, status, latency_ms, ttft_ms, prompt_tokens, completion_tokens,"
    " cache_read_tokens, cache_write_tokens, cost_nanos, user_id, session_id, session_path, session_name,"
    " prompt_id, prompt_version, properties, source, stream, cache_hit, error"
)

LIST_REQUESTS = (
    "SELECT " + SUMMARY_COLUMNS + " FROM request_events FINAL WHERE {where} {after}"
    " ORDER BY created_at DESC, request_id DESC LIMIT {limit:UInt32}"
)
GET_REQUEST = (
    "SELECT " + SUMMARY_COLUMNS + ", request_body, response_body, body_truncated, api_key_id, target_url, scores"
    " FROM request_events FINAL WHERE org_id = {org_id:String} AND request_id = {request_id:String}"
    " ORDER BY created_at DESC LIMIT 1"
)


def list_requests(
    ch: ClickHouse, org_id: str, filters: Filters, *, limit: int = DEFAULT_LIMIT, cursor: str | None = None
) -> tuple[list[dict[str, Any]], str | None]:
    """Newest first, keyset-paginated on (created_at, request_id)."""
    where, params = filters.where(org_id)
    after = ""
    if cursor:
        params["cur_ts"], params["cur_id"] = decode_cursor(cursor)
        after = "AND (created_at, request_id) < ({cur_ts:DateTime64(3)}, {cur_id:String})"
    params["limit"] = limit + 1
    rows = ch.query(LIST_REQUESTS.replace("{where}", where).replace("{after}", after), params, name="list_requests")
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        next_cursor = encode_cursor(rows[-1]["created_at"], rows[-1]["request_id"])
    return [to_item(r) for r in rows], next_cursor


def get_request(ch: ClickHouse, org_id: str, request_id: str) -> dict[str, Any] | None:
    rows = ch.query(GET_REQUEST, {"org_id": org_id, "request_id": request_id}, name="get_request")
    return to_item(rows[0]) if rows else None


def iso(ch_ts: str) -> str:
    """ClickHouse '2026-11-22 13:45:01.123' (UTC) → '2026-11-22T13:45:01.123Z'."""
    return ch_ts.replace(" ", "T") + "Z"


def to_item(row: dict[str, Any]) -> dict[str, Any]:
    item = dict(row)
    item["created_at"] = iso(row["created_at"])
    cost = item.pop("cost_nanos")
    item["cost_usd"] = None if cost is None else usd_from_nanos(int(cost))
    for k in ("prompt_tokens", "completion_tokens", "cache_read_tokens", "cache_write_tokens", "latency_ms", "status"):
        item[k] = int(item[k])
    if item.get("ttft_ms") is not None:
        item["ttft_ms"] = int(item["ttft_ms"])
    if "scores" in item:
        item["scores"] = {k: int(v) for k, v in item["scores"].items()}
    return item


def now() -> datetime:
    return datetime.now(UTC)
