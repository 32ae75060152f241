"""The RequestEvent: one LLM request, whatever path it came in by, and its ClickHouse row encoding."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

SOURCES = ("proxy", "async", "otlp")
MAX_PROPERTIES = 1000
MAX_ID_LEN = 512


@dataclass(slots=True)
class RequestEvent:
    org_id: str
    request_id: str
    created_at: datetime
    source: str
    api_key_id: str = ""
    provider: str = ""
    model: str = ""
    path: str = ""
    target_url: str = ""
    status: int = 0
    error: str = ""
    latency_ms: int = 0
    ttft_ms: int | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cost_nanos: int | None = None
    cost_source: str = ""
    user_id: str = ""
    session_id: str = ""
    session_path: str = ""
    session_name: str = ""
    prompt_id: str = ""
    prompt_version: str = ""
    properties: dict[str, str] = field(default_factory=dict)
    cache_hit: bool = False
    cache_saved_nanos: int = 0
    attempts: int = 1
    stream: bool = False
    request_headers: dict[str, str] = field(default_factory=dict)
    response_headers: dict[str, str] = field(default_factory=dict)
    request_body: str = ""
    response_body: str = ""
    body_truncated: bool = False

    def to_row(self) -> bytes:
        """One JSONEachRow line, exactly what the spool stores and ClickHouse ingests.

        orjson serializes the dataclass natively (times as RFC 3339, read with date_time_input_format=best_effort);
        schema_version and updated_at take their column defaults.
        """
        return orjson.dumps(self, option=orjson.OPT_NAIVE_UTC) + b"\n"


def format_ts(ts: datetime) -> str:
    """ClickHouse DateTime64(3) text in UTC: '2026-11-22 13:45:01.123'."""
    if ts.tzinfo is not None:
        ts = ts.astimezone(UTC)
    return ts.strftime("%Y-%m-%d %H:%M:%S.") + f"{ts.microsecond // 1000:03d}"


def new_request_id() -> str:
    return str(uuid.uuid4())


def truncate_body(body: str, limit: int) -> tuple[str, bool]:
    """The stored copy of a body and whether it was cut (at `limit` UTF-8 bytes, on a character boundary)."""
    if len(body) <= limit // 4 or len(body.encode()) <= limit:
        return body, False
    return body.encode()[:limit].decode("utf-8", "ignore"), True


class EventError(ValueError):
    """A field of an event is missing or has the wrong type; the message names it."""


# The public fields of /api/v1/logs items and /api/v1/requests results, with their JSON types.
_INT_FIELDS = ("status", "latency_ms", "prompt_tokens", "completion_tokens", "cache_read_tokens", "cache_write_tokens")
_STR_FIELDS = (
    "provider", "model", "path", "error", "user_id", "session_id", "session_path", "session_name",
    "prompt_id", "prompt_version", "request_body", "response_body", "target_url",
)
_BOOL_FIELDS = ("stream", "cache_hit")
API_FIELDS = frozenset(
    ("request_id", "created_at", "source", "ttft_ms", "cost_usd", "properties")
    + _INT_FIELDS + _STR_FIELDS + _BOOL_FIELDS
)


def parse_timestamp(value: Any, name: str) -> datetime:
    """ISO 8601 (a naive time is UTC) or epoch seconds/milliseconds."""
    if isinstance(value, bool):
        raise EventError(f"{name} must be an ISO 8601 time or epoch seconds, not {value!r}")
    if isinstance(value, int | float):
        seconds = value / 1000 if value > 1e11 else value
        try:
            return datetime.fromtimestamp(seconds, UTC)
        except (OverflowError, OSError, ValueError):
            raise EventError(f"{name} {value!r} is out of range") from None
    if isinstance(value, str):
        text = value.strip()
        if text.endswith("Z"):
            text = text[:-1] + "+00:00"
        try:
            ts = datetime.fromisoformat(text)
        except ValueError:
            raise EventError(f"{name} {value!r} is not an ISO 8601 time") from None
        ts = ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)
        if not 1970 <= ts.year <= 2299:
            raise EventError(f"{name} {value!r} is out of range (1970-2299)")
        return ts
    raise EventError(f"{name} must be an ISO 8601 time or epoch seconds, not {type(value).__name__}")


def event_from_api(item: Any, *, org_id: str, api_key_id: str, now: datetime, cost_nanos: Any = None) -> RequestEvent:
    """Build an event from one item of llmlens's own log format (the fields of GET /api/v1/requests)."""
    if not isinstance(item, dict):
        raise EventError(f"expected an object, got {type(item).__name__}")
    unknown = sorted(set(item) - API_FIELDS)
    if unknown:
        raise EventError(f"unknown field {unknown[0]!r}")
    request_id = item.get("request_id") or new_request_id()
    if not isinstance(request_id, str) or len(request_id) > MAX_ID_LEN:
        raise EventError(f"request_id must be a string of at most {MAX_ID_LEN} characters")
    created_at = parse_timestamp(item["created_at"], "created_at") if "created_at" in item else now
    source = item.get("source", "async")
    if source not in SOURCES:
        raise EventError(f"source must be one of {', '.join(SOURCES)}, not {source!r}")
    ev = RequestEvent(org_id=org_id, request_id=request_id, created_at=created_at, source=source, api_key_id=api_key_id)
    for name in _INT_FIELDS:
        if name in item:
            v = item[name]
            if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < 2**31:
                raise EventError(f"{name} must be a non-negative integer, not {v!r}")
            setattr(ev, name, v)
    for name in _STR_FIELDS:
        if name in item and item[name] is not None:
            if not isinstance(item[name], str):
                raise EventError(f"{name} must be a string, not {type(item[name]).__name__}")
            setattr(ev, name, item[name])
    for name in _BOOL_FIELDS:
        if name in item:
            if not isinstance(item[name], bool):
                raise EventError(f"{name} must be true or false, not {item[name]!r}")
            setattr(ev, name, item[name])
    ttft = item.get("ttft_ms")
    if ttft is not None:
        if not isinstance(ttft, int) or isinstance(ttft, bool) or not 0 <= ttft < 2**31:
            raise EventError(f"ttft_ms must be a non-negative integer or null, not {ttft!r}")
        ev.ttft_ms = ttft
    props = item.get("properties", {})
    if not isinstance(props, dict) or len(props) > MAX_PROPERTIES:
        raise EventError(f"properties must be an object of at most {MAX_PROPERTIES} string values")
    for k, v in props.items():
        if not isinstance(v, str) or not k:
            raise EventError(f"property {k!r} must have a non-empty name and a string value")
    ev.properties = dict(props)
    ev.cost_nanos = cost_nanos
    return ev
