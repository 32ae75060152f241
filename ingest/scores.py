"""Scores, feedback and properties set after the fact, in Helicone's API shapes.

`POST /v1/request/{id}/score`, `POST /v1/request/{id}/feedback`, `PUT /v1/request/{id}/property` and
`POST /v1/session/{id}/feedback`. An update re-inserts the request's stored row, server-side (bodies never pass
through Python), with the maps merged and a newer `updated_at`; the ReplacingMergeTree keeps the newest version and
every query reads with FINAL, so the request still counts once. Helicone does the same
(`valhalla/jawn/src/lib/stores/request/VersionedRequestStore.ts`). The answer is 200 only once ClickHouse has taken
the insert; a 4xx changes nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from ingest.auth import authenticate
from ingest.errors import IngestError, NotFound, Unavailable
from ingest.event import MAX_ID_LEN
from ingest.http import read_body
from ingest.writer import Writer
from storage.clickhouse import ClickHouse, ClickHouseError
from storage.controlplane import KeyCache

# Helicone stores request feedback as this score, 1 or 0 (docs: "Feedback"; helicone.md §6).
FEEDBACK_SCORE = "helicone-score-feedback"
# Helicone sets the property `Helicone-Session-Feedback` ("1"/"0") on the session's earliest request. llmlens sets it
# (lower-cased, as it stores every header-derived property) and a score of the same name on one request per session,
# so averages over sessions count each session once, however many requests it has.
SESSION_FEEDBACK = "helicone-session-feedback"
MAX_BODY = 64 * 1024
MAX_SCORES = 100
MAX_NAME = 256
MAX_VALUE = 10_000
INT64 = 2**63
POLL_S = 0.05

EXISTS = """
SELECT 1 AS ok FROM request_events WHERE org_id = {org_id:String} AND request_id = {request_id:String} LIMIT 1
"""
# The row that carries a session's feedback: the one already carrying it, else the session's earliest request.
SESSION_ROW = """
SELECT request_id, created_at FROM request_events FINAL
WHERE org_id = {org_id:String} AND session_id = {session_id:String}
ORDER BY mapContains(scores, {name:String}) DESC, created_at, request_id LIMIT 1
"""
# A new version of the row: same sort key, merged maps, an updated_at newer than the version it was built from
# (even if the clock stepped back). Deduplication is off so an identical re-insert cannot be dropped as a retry.
UPDATE = """
INSERT INTO request_events SETTINGS insert_deduplicate = 0
SELECT * REPLACE (
    mapUpdate(scores, JSONExtract({scores:String}, 'Map(String, Int64)')) AS scores,
    mapUpdate(properties, JSONExtract({properties:String}, 'Map(String, String)')) AS properties,
    greatest(now64(3), updated_at + INTERVAL 1 MILLISECOND) AS updated_at)
FROM request_events FINAL
WHERE org_id = {org_id:String} AND request_id = {request_id:String} {and_created_at}
"""

T = TypeVar("T")


# --- bodies ------------------------------------------------------------------------------------------------
def parse_body(body: bytes, fields: tuple[str, ...], example: str) -> dict[str, Any]:
    """A JSON object with exactly `fields`; anything else is a 400 naming what was wrong."""
    if not body.strip():
        raise IngestError(f"the body is empty; expected {example}")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise IngestError(f"the body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise IngestError(f"expected a JSON object like {example}")
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise IngestError(f"unknown field {unknown[0]!r}; expected {example}")
    for name in fields:
        if name not in data:
            raise IngestError(f"{name} is missing; expected {example}")
    return data


def _key(name: str, what: str) -> str:
    if not name.strip():
        raise IngestError(f"{what} must be a non-empty string")
    if len(name) > MAX_NAME:
        raise IngestError(f"{what} is longer than {MAX_NAME} characters")
    return name


def parse_scores(body: bytes) -> dict[str, int]:
    """`{"scores": {"name": int | bool}}`, booleans as 1/0; Helicone rejects fractions too (scale them, e.g. ×100)."""
    raw = parse_body(body, ("scores",), '{"scores": {"name": 1}}')["scores"]
    if not isinstance(raw, dict):
        raise IngestError(f"scores must be an object of names to integers or booleans, not {_type(raw)}")
    if not raw:
        raise IngestError("scores is empty; send at least one name")
    if len(raw) > MAX_SCORES:
        raise IngestError(f"scores has {len(raw)} names; the limit is {MAX_SCORES} per request")
    out: dict[str, int] = {}
    for name, value in raw.items():
        if not name.strip():
            raise IngestError("scores has an empty name; score names must be non-empty")
        if len(name) > MAX_NAME:
            raise IngestError(f"scores has a name longer than {MAX_NAME} characters: {name[:40]!r}...")
        field = f"scores.{name}"
        if isinstance(value, bool):
            out[name] = int(value)
        elif isinstance(value, int) and -INT64 <= value < INT64:
            out[name] = value
        elif isinstance(value, int) or (isinstance(value, float) and value.is_integer() and abs(value) >= INT64):
            # orjson reads integers beyond 64 bits as floats
            raise IngestError(f"{field} is outside the range of a 64-bit integer")
        else:
            raise IngestError(f"{field} must be an integer or a boolean, not {value!r}; scale fractions (75 for 0.75)")
    return out


def parse_rating(body: bytes) -> bool:
    rating = parse_body(body, ("rating",), '{"rating": true}')["rating"]
    if not isinstance(rating, bool):
        raise IngestError(f"rating must be true or false, not {rating!r}")
    return rating


def parse_property(body: bytes) -> tuple[str, str]:
    data = parse_body(body, ("key", "value"), '{"key": "name", "value": "text"}')
    key, value = data["key"], data["value"]
    if not isinstance(key, str):
        raise IngestError(f"key must be a non-empty string, not {_type(key)}")
    _key(key, "key")
    if not isinstance(value, str):
        raise IngestError(f"value must be a string, not {_type(value)}")
    if len(value) > MAX_VALUE:
        raise IngestError(f"value is longer than {MAX_VALUE} characters")
    return key, value


def _type(value: Any) -> str:
    return {list: "an array", dict: "an object", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number")


# --- updates -----------------------------------------------------------------------------------------------
class Annotator:
    """Updates requests in ClickHouse; a request acknowledged but not yet inserted is waited for before a 404.

    An update is one INSERT ... SELECT (read the newest version, write the next), and statements on one ClickHouse
    connection run one at a time, so concurrent updates from this process never lose one another. Two processes
    sharing a ClickHouse server could interleave on the same request and lose one of the two updates.
    """

    def __init__(self, ch: ClickHouse, writer: Writer, *, wait_s: float) -> None:
        self.ch, self.writer, self.wait_s = ch, writer, wait_s

    async def _ch(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        try:
            return await asyncio.to_thread(fn, *args, **kw)
        except ClickHouseError as exc:
            raise Unavailable(f"ClickHouse did not answer; nothing was changed: {str(exc)[:300]}") from None

    async def _visible(self, lookup: Callable[[], Awaitable[T | None]]) -> T | None:
        """`lookup()`, waiting for the writer when it finds nothing: the event may still be in the spool."""
        found = await lookup()
        if found is not None:
            return found
        deadline = time.monotonic() + self.wait_s
        flushed = await self.writer.flush(timeout=self.wait_s)
        while (found := await lookup()) is None and time.monotonic() < deadline:
            await asyncio.sleep(POLL_S)  # a proxied call is logged just after its response, so may come later still
        if found is None and not flushed:
            raise Unavailable("not found yet, and events are still waiting in the spool for ClickHouse; retry later")
        return found

    async def _exists(self, org_id: str, request_id: str) -> bool | None:
        rows = await self._ch(self.ch.query, EXISTS, {"org_id": org_id, "request_id": request_id}, name="score_exists")
        return True if rows else None

    async def _update(self, org_id: str, request_id: str, *, scores: dict[str, int] | None = None,
                      properties: dict[str, str] | None = None, created_at: str | None = None) -> None:
        params = {"org_id": org_id, "request_id": request_id, "scores": orjson.dumps(scores or {}).decode(),
                  "properties": orjson.dumps(properties or {}).decode()}
        and_created_at = ""
        if created_at is not None:
            and_created_at, params["created_at"] = "AND created_at = {created_at:DateTime64(3, 'UTC')}", created_at
        await self._ch(self.ch.command, UPDATE.replace("{and_created_at}", and_created_at), params)

    async def update_request(self, org_id: str, request_id: str, *, scores: dict[str, int] | None = None,
                             properties: dict[str, str] | None = None) -> None:
        if len(request_id) > MAX_ID_LEN or not await self._visible(lambda: self._exists(org_id, request_id)):
            raise NotFound(f"no request {request_id!r} in this org")
        await self._update(org_id, request_id, scores=scores, properties=properties)

    async def rate_session(self, org_id: str, session_id: str, rating: bool) -> str:
        """Set the session's feedback on the one request that carries it; returns that request's id."""
        async def row() -> dict[str, Any] | None:
            rows = await self._ch(self.ch.query, SESSION_ROW, {"org_id": org_id, "session_id": session_id,
                                                               "name": SESSION_FEEDBACK}, name="session_feedback_row")
            return rows[0] if rows else None

        target = await self._visible(row)
        if target is None:
            raise NotFound(f"no session {session_id!r} in this org")
        await self._update(org_id, target["request_id"], scores={SESSION_FEEDBACK: int(rating)},
                           properties={SESSION_FEEDBACK: str(int(rating))}, created_at=target["created_at"])
        return str(target["request_id"])


def routes(*, keys: KeyCache, ch: ClickHouse, writer: Writer, wait_s: float) -> list[Route]:
    annotator = Annotator(ch, writer, wait_s=wait_s)

    def ok(data: dict[str, Any]) -> JSONResponse:
        return JSONResponse({"data": data, "error": None})  # Helicone's Result shape

    async def score(request: Request) -> JSONResponse:
        principal = await authenticate(keys, request.headers)
        scores = parse_scores(await read_body(request, MAX_BODY, setting=""))
        request_id = request.path_params["request_id"]
        await annotator.update_request(principal.org_id, request_id, scores=scores)
        return ok({"request_id": request_id, "scores": scores})

    async def feedback(request: Request) -> JSONResponse:
        principal = await authenticate(keys, request.headers)
        rating = parse_rating(await read_body(request, MAX_BODY, setting=""))
        request_id = request.path_params["request_id"]
        await annotator.update_request(principal.org_id, request_id, scores={FEEDBACK_SCORE: int(rating)})
        return ok({"request_id": request_id, "rating": rating})

    async def put_property(request: Request) -> JSONResponse:
        principal = await authenticate(keys, request.headers)
        key, value = parse_property(await read_body(request, MAX_BODY, setting=""))
        request_id = request.path_params["request_id"]
        await annotator.update_request(principal.org_id, request_id, properties={key: value})
        return ok({"request_id": request_id, "key": key, "value": value})

    async def session_feedback(request: Request) -> JSONResponse:
        principal = await authenticate(keys, request.headers)
        rating = parse_rating(await read_body(request, MAX_BODY, setting=""))
        session_id = request.path_params["session_id"]
        request_id = await annotator.rate_session(principal.org_id, session_id, rating)
        return ok({"session_id": session_id, "rating": rating, "request_id": request_id})

    return [
        Route("/v1/request/{request_id}/score", score, methods=["POST"]),
        Route("/v1/request/{request_id}/feedback", feedback, methods=["POST"]),
        Route("/v1/request/{request_id}/property", put_property, methods=["PUT"]),
        Route("/v1/session/{session_id}/feedback", session_feedback, methods=["POST"]),
    ]
