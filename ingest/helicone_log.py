"""Helicone-compatible async log endpoints: a request/response pair posted after a direct provider call."""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from ingest import headers as hh
from ingest import usage
from ingest.auth import EXPECTED, bearer, resolve
from ingest.costing import price
from ingest.errors import IngestError, Unauthorized
from ingest.event import EventError, RequestEvent, parse_timestamp, truncate_body
from ingest.http import read_body, submit_durably
from ingest.writer import Writer
from pricing.prices import PriceBook, nanos_from_usd
from storage.controlplane import KeyCache, Principal

# Route -> provider, as Helicone's worker derives it (worker/src/routers/api/apiRouter.ts).
ROUTES = {
    "/oai/v1/log": "openai",
    "/anthropic/v1/log": "anthropic",
    "/googleapis/v1/log": "google",
    "/custom/v1/log": "",
    "/v1/trace/custom/v1/log": "",
    "/v1/trace/custom/log": "",
}
_NAMESPACE = uuid.UUID("5b0c6f38-41a4-4c36-9a55-6c1f3f3f8a11")
# Helicone's own status for a stream the client cancelled (sdk/python/helpers manual_logger.py).
CANCELLED = -3


def _obj(value: Any, name: str, *, required: bool = False) -> dict[str, Any]:
    if value is None and not required:
        return {}
    if not isinstance(value, dict):
        raise IngestError(f"{name} must be an object" + ("" if value is not None else " and is missing"))
    return value


def parse_time(value: Any, name: str) -> datetime:
    """Helicone timing: {seconds, milliseconds}, an ISO 8601 string, or epoch seconds/ms (number or string)."""
    if isinstance(value, dict):
        seconds, millis = value.get("seconds"), value.get("milliseconds", 0)
        if not isinstance(seconds, int | float) or isinstance(seconds, bool) or not isinstance(millis, int | float):
            raise IngestError(f"{name} must be {{seconds, milliseconds}} numbers")
        value = seconds + millis / 1000
    if isinstance(value, str) and value.strip().replace(".", "", 1).isdigit():
        value = float(value)
    try:
        return parse_timestamp(value, name)
    except EventError as exc:
        raise IngestError(str(exc)) from None


def _auth_token(request: Request, meta: dict[str, Any]) -> str:
    # Helicone's clients send the key as Authorization; LiteLLM puts Helicone-Auth in meta.
    for header, value in (
        ("Helicone-Auth", request.headers.get("helicone-auth")),
        ("Authorization", request.headers.get("authorization")),
        ("Helicone-Auth", meta.get("Helicone-Auth") or meta.get("helicone-auth")),
    ):
        if value:
            return bearer(str(value), header)
    raise Unauthorized(f"Authorization header is missing; {EXPECTED}")


def build_event(
    body: Any, *, route_provider: str, http_headers: list[tuple[str, str]], principal: Principal, raw: bytes,
    max_body: int, now: datetime,
) -> RequestEvent:
    if not isinstance(body, dict):
        raise IngestError("expected a JSON object with providerRequest and providerResponse")
    req = _obj(body.get("providerRequest"), "providerRequest", required=True)
    resp = _obj(body.get("providerResponse"), "providerResponse", required=True)
    meta = _obj(req.get("meta"), "providerRequest.meta")
    req_json = req.get("json")
    if req_json is not None and not isinstance(req_json, dict):
        raise IngestError("providerRequest.json must be an object")
    url = req.get("url", "")
    if not isinstance(url, str):
        raise IngestError("providerRequest.url must be a string")
    status = resp.get("status", 200)
    if not isinstance(status, int) or isinstance(status, bool) or not -10 <= status <= 999:
        raise IngestError(f"providerResponse.status must be an HTTP status code, not {status!r}")
    text_body = resp.get("textBody")
    if text_body is not None and not isinstance(text_body, str):
        raise IngestError("providerResponse.textBody must be a string")
    resp_json = resp.get("json")
    if resp_json is not None and not isinstance(resp_json, dict | list):
        raise IngestError("providerResponse.json must be an object")

    timing = _obj(body.get("timing"), "timing")
    start = parse_time(timing["startTime"], "timing.startTime") if "startTime" in timing else now
    end = parse_time(timing["endTime"], "timing.endTime") if "endTime" in timing else start
    if end < start:
        raise IngestError("timing.endTime is before timing.startTime")
    if end - start > timedelta(days=1):
        raise IngestError("timing spans more than a day; check that startTime and endTime use the same unit")
    ttft = timing.get("timeToFirstToken")
    if ttft is not None and (not isinstance(ttft, int | float) or isinstance(ttft, bool) or ttft < 0):
        raise IngestError("timing.timeToFirstToken must be a non-negative number of milliseconds")

    cost = resp.get("cost")
    cost_nanos = None
    if cost is not None:
        try:
            cost_nanos = nanos_from_usd(cost)
        except (ValueError, TypeError, ArithmeticError):
            raise IngestError(f"providerResponse.cost must be a non-negative number of USD, not {cost!r}") from None

    provider = body.get("provider")
    if provider is not None and not isinstance(provider, str):
        raise IngestError("provider must be a string")
    # Helicone reads its headers from meta merged with the POST's own headers; the HTTP headers win.
    meta_pairs = [(str(k), v if isinstance(v, str) else orjson.dumps(v).decode()) for k, v in meta.items()]
    helicone = hh.parse(meta_pairs + http_headers)

    streamed = text_body is not None and text_body.strip() != ""
    found = usage.from_stream(text_body) if streamed and text_body else usage.from_json(resp_json)
    req_model = req_json.get("model") if req_json else None
    model = found.model or (req_model if isinstance(req_model, str) else "") or helicone.model_override
    response_text = text_body if streamed else orjson.dumps(resp_json).decode() if resp_json is not None else ""
    if status == CANCELLED:
        error = "the stream was cancelled by the client"
    elif status >= 400 or status < 0:
        error = (response_text or f"status {status}")[:2000]
    else:
        error = ""

    request_text = "" if helicone.omit_request else orjson.dumps(req_json).decode() if req_json is not None else ""
    response_text = "" if helicone.omit_response else response_text
    request_text, cut1 = truncate_body(request_text or "", max_body)
    response_text, cut2 = truncate_body(response_text or "", max_body)
    # Without a Helicone-Request-Id, the id is derived from the body, so the same log posted twice counts once.
    request_id = helicone.request_id or str(uuid.uuid5(_NAMESPACE, principal.org_id + hashlib.sha256(raw).hexdigest()))
    return RequestEvent(
        org_id=principal.org_id,
        request_id=request_id,
        created_at=start,
        source="async",
        api_key_id=principal.key_id,
        provider=(route_provider or (provider or "").lower() or "custom"),
        model=model,
        path=urlpath(url),
        target_url=url,
        status=status,
        error=error,
        latency_ms=int((end - start).total_seconds() * 1000),
        ttft_ms=int(ttft) if ttft is not None else None,
        prompt_tokens=found.prompt_tokens,
        completion_tokens=found.completion_tokens,
        cache_read_tokens=found.cache_read_tokens,
        cache_write_tokens=found.cache_write_tokens,
        cost_nanos=cost_nanos,
        user_id=helicone.user_id,
        session_id=helicone.session_id,
        session_path=helicone.session_path,
        session_name=helicone.session_name,
        prompt_id=helicone.prompt_id,
        prompt_version=helicone.prompt_version,
        properties=helicone.properties,
        stream=bool(req_json and req_json.get("stream") is True) or streamed,
        request_body=request_text,
        response_body=response_text,
        body_truncated=cut1 or cut2,
    )


def provider_of_url(url: str) -> str:
    """The provider a providerRequest.url points at, for logs that arrive without a route saying it."""
    for host, provider in (("openai.azure.com", "azure"), ("api.openai.com", "openai"), ("anthropic.com", "anthropic"),
                           ("googleapis.com", "google")):
        if host in url:
            return provider
    return ""


def urlpath(url: str) -> str:
    if "://" in url:
        rest = url.split("://", 1)[1]
        return "/" + rest.split("/", 1)[1] if "/" in rest else "/"
    return url


def routes(*, keys: KeyCache, writer: Writer, prices: PriceBook, max_bytes: int, max_body_bytes: int) -> list[Route]:
    def endpoint(route_provider: str):  # type: ignore[no-untyped-def]
        async def post_log(request: Request) -> PlainTextResponse:
            raw = await read_body(request, max_bytes)
            try:
                body = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                raise IngestError(f"the body is not valid JSON: {exc}") from None
            req = body.get("providerRequest") if isinstance(body, dict) else None
            meta = req.get("meta") if isinstance(req, dict) else None
            principal = await resolve(keys, _auth_token(request, meta if isinstance(meta, dict) else {}))
            pairs = [(k, v) for k, v in request.headers.items() if k.startswith("helicone-")]
            ev = build_event(body, route_provider=route_provider, http_headers=pairs, principal=principal, raw=raw,
                             max_body=max_body_bytes, now=datetime.now(UTC))
            price(prices, ev)
            await submit_durably(writer, [ev], "async")
            return PlainTextResponse("ok", headers={"Helicone-Id": ev.request_id})

        return post_log

    return [Route(path, endpoint(provider), methods=["POST"]) for path, provider in ROUTES.items()]
