"""OTLP/HTTP traces (protobuf or JSON, gzip or not): each LLM span of the GenAI conventions becomes an event.

Accepted attribute families (see shared/reference/clients.md §2): current GenAI semantic conventions
(`gen_ai.usage.input_tokens`, `gen_ai.input.messages`), the older OpenLLMetry ones (`gen_ai.system`,
`gen_ai.usage.prompt_tokens`, `gen_ai.prompt.N.*`) and OpenInference (`llm.model_name`, `llm.token_count.*`).
Spans that are not LLM calls are kept as session steps when they are tools or retrievers (so an agent run
shows them in its tree) and otherwise ignored: workflow and HTTP spans would only double-count requests.
"""

from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ingest import headers as hh
from ingest.auth import authenticate
from ingest.costing import price
from ingest.errors import IngestError
from ingest.event import RequestEvent, truncate_body
from ingest.http import read_body, submit_durably
from ingest.writer import Writer
from pricing.prices import PriceBook
from storage.controlplane import KeyCache, Principal

_NAMESPACE = uuid.UUID("0f5a8c3e-7d4b-4e0e-9a1b-3f1c2d5e6a7b")
ASSOCIATION = "traceloop.association.properties."
PATHS = ("/v1/traces", "/v1/trace/log", "/v1/trace/log-python", "/api/v1/traces")
LLM_MARKERS = ("gen_ai.request.model", "gen_ai.response.model", "gen_ai.system", "gen_ai.provider.name",
               "llm.model_name", "llm.request.type", "gen_ai.operation.name")
STEP_KINDS = {"tool", "retriever", "TOOL", "RETRIEVER"}
PROVIDERS = {"openai": "openai", "anthropic": "anthropic", "azure.ai.openai": "azure", "az.ai.openai": "azure",
             "gcp.gemini": "google", "gcp.vertex_ai": "google", "google": "google", "gemini": "google",
             "aws.bedrock": "bedrock", "mistral_ai": "mistral", "mistralai": "mistral", "cohere": "cohere",
             "groq": "groq", "deepseek": "deepseek", "x_ai": "x-ai", "perplexity": "perplexity"}


@dataclass(slots=True)
class Span:
    trace_id: str
    span_id: str
    parent_id: str
    name: str
    start_ns: int
    end_ns: int
    attrs: dict[str, Any]
    status_code: int = 0
    status_message: str = ""
    resource: dict[str, Any] = field(default_factory=dict)


# --- decoding ---------------------------------------------------------------------------------------------
def _any_value(v: Any) -> Any:
    """An OTLP AnyValue (protobuf message) as a Python value."""
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [_any_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _any_value(kv.value) for kv in v.kvlist_value.values}
    if kind == "bytes_value":
        return base64.b64encode(v.bytes_value).decode()
    return getattr(v, kind)


def decode_protobuf(data: bytes) -> list[Span]:
    from google.protobuf.message import DecodeError
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    req = ExportTraceServiceRequest()
    try:
        req.ParseFromString(data)
    except DecodeError as exc:
        raise IngestError(f"the body is not an OTLP ExportTraceServiceRequest: {exc}") from None
    spans = []
    for rs in req.resource_spans:
        resource = {a.key: _any_value(a.value) for a in rs.resource.attributes}
        for ss in rs.scope_spans:
            for s in ss.spans:
                spans.append(Span(
                    trace_id=s.trace_id.hex(), span_id=s.span_id.hex(), parent_id=s.parent_span_id.hex(),
                    name=s.name, start_ns=s.start_time_unix_nano, end_ns=s.end_time_unix_nano,
                    attrs={a.key: _any_value(a.value) for a in s.attributes},
                    status_code=s.status.code, status_message=s.status.message, resource=resource,
                ))
    return spans


def _json_value(v: Any) -> Any:
    if not isinstance(v, dict):
        return v
    for key, val in v.items():
        if key == "intValue":
            return int(val)  # a string from Python exporters, a number from JS ones
        if key == "doubleValue":
            return float(val)
        if key == "arrayValue":
            return [_json_value(x) for x in (val or {}).get("values", [])]
        if key == "kvlistValue":
            return {kv["key"]: _json_value(kv.get("value")) for kv in (val or {}).get("values", [])}
        if key in ("stringValue", "boolValue", "bytesValue"):
            return val
    return None


def _json_id(value: Any) -> str:
    if not isinstance(value, str):
        return ""
    text = value.strip()
    try:
        bytes.fromhex(text)
        return text.lower()
    except ValueError:  # some exporters send base64 ids
        try:
            return base64.b64decode(text).hex()
        except ValueError:
            return ""


def _status_code(code: Any) -> int:
    if isinstance(code, str):  # some JSON exporters send the enum name
        return {"STATUS_CODE_ERROR": 2, "STATUS_CODE_OK": 1}.get(code, 0)
    return int(code)


def decode_json(data: bytes) -> list[Span]:
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise IngestError(f"the body is not valid OTLP JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("resourceSpans", []), list):
        raise IngestError("expected an OTLP JSON object with resourceSpans")
    spans = []
    try:
        for rs in doc.get("resourceSpans", []):
            resource = {a["key"]: _json_value(a.get("value")) for a in rs.get("resource", {}).get("attributes", [])}
            for ss in rs.get("scopeSpans", rs.get("instrumentationLibrarySpans", [])):
                for s in ss.get("spans", []):
                    status = s.get("status") or {}
                    code: Any = status.get("code", 0)
                    spans.append(Span(
                        trace_id=_json_id(s.get("traceId")), span_id=_json_id(s.get("spanId")),
                        parent_id=_json_id(s.get("parentSpanId")), name=str(s.get("name", "")),
                        start_ns=int(s.get("startTimeUnixNano", 0)), end_ns=int(s.get("endTimeUnixNano", 0)),
                        attrs={a["key"]: _json_value(a.get("value")) for a in s.get("attributes", [])},
                        status_code=_status_code(code),
                        status_message=str(status.get("message", "")), resource=resource,
                    ))
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise IngestError(f"malformed OTLP JSON span: {type(exc).__name__}: {exc}") from None
    return spans


# --- mapping ----------------------------------------------------------------------------------------------
def _int(attrs: dict[str, Any], *names: str) -> int:
    for n in names:
        v = attrs.get(n)
        if isinstance(v, int | float) and not isinstance(v, bool) and v >= 0:
            return int(v)
        if isinstance(v, str) and v.isdigit():
            return int(v)
    return 0


def _str(attrs: dict[str, Any], *names: str) -> str:
    for n in names:
        v = attrs.get(n)
        if isinstance(v, str) and v:
            return v
    return ""


def _indexed(attrs: dict[str, Any], prefix: str, fields: tuple[str, ...]) -> list[dict[str, Any]]:
    """Collect `prefix.N.field` attributes into a list of dicts ordered by N."""
    out: dict[int, dict[str, Any]] = {}
    for key, value in attrs.items():
        if not key.startswith(prefix):
            continue
        idx, _, rest = key[len(prefix):].partition(".")
        if idx.isdigit() and rest in fields:
            out.setdefault(int(idx), {})[rest.replace("message.", "")] = value
    return [out[i] for i in sorted(out)]


def _messages(attrs: dict[str, Any], side: str) -> Any:
    new = attrs.get(f"gen_ai.{side}.messages")
    if isinstance(new, str):
        try:
            return orjson.loads(new)
        except orjson.JSONDecodeError:
            return new
    legacy = _indexed(attrs, "gen_ai.prompt." if side == "input" else "gen_ai.completion.",
                      ("role", "content", "finish_reason"))
    if legacy:
        return legacy
    oi = _indexed(attrs, f"llm.{side}_messages.", ("message.role", "message.content"))
    if oi:
        return oi
    value = attrs.get(f"{side}.value")
    return value if value is not None else None


def is_llm(span: Span) -> bool:
    kind = span.attrs.get("openinference.span.kind")
    return kind in ("LLM", "EMBEDDING") or any(m in span.attrs for m in LLM_MARKERS)


def is_step(span: Span) -> bool:
    return span.attrs.get("traceloop.span.kind") in STEP_KINDS or span.attrs.get("openinference.span.kind") in STEP_KINDS


def to_event(span: Span, by_id: dict[str, Span], *, principal: Principal, http_meta: list[tuple[str, str]],
             max_body: int) -> RequestEvent:
    a = span.attrs
    assoc = [(k[len(ASSOCIATION):], str(v)) for k, v in a.items() if k.startswith(ASSOCIATION)]
    helicone = hh.parse(
        [(k, v) for k, v in assoc if k.lower().startswith("helicone-")]
        + [("helicone-property-" + k, v) for k, v in assoc if not k.lower().startswith("helicone-")]
        + http_meta
    )
    llm = is_llm(span)
    provider_raw = _str(a, "gen_ai.provider.name", "gen_ai.system", "llm.provider", "llm.system").lower()
    model = _str(a, "gen_ai.response.model", "gen_ai.request.model", "llm.model_name") or helicone.model_override
    prompt = _int(a, "gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens", "llm.token_count.prompt")
    completion = _int(a, "gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens", "llm.token_count.completion")
    cache_read = _int(a, "gen_ai.usage.cache_read.input_tokens", "gen_ai.usage.cache_read_input_tokens",
                      "llm.token_count.prompt_details.cache_read")
    cache_write = _int(a, "gen_ai.usage.cache_creation.input_tokens", "gen_ai.usage.cache_creation_input_tokens",
                       "llm.token_count.prompt_details.cache_write")
    if provider_raw == "anthropic" and "gen_ai.usage.prompt_tokens" in a and "gen_ai.usage.input_tokens" not in a:
        prompt += cache_read + cache_write  # legacy Anthropic spans report input without cache tokens
    path = helicone.session_path or _path(span, by_id)
    error = span.status_message or ("the span ended with an error status" if span.status_code == 2 else "")
    status = _int(a, "http.response.status_code", "http.status_code") or (500 if span.status_code == 2 else 200)
    req_body: Any = {"model": _str(a, "gen_ai.request.model", "llm.model_name") or None, "messages": _messages(a, "input")}
    if not llm:
        req_body = {"name": span.name, "input": a.get("traceloop.entity.input", a.get("input.value"))}
    resp_body: Any = {"messages": _messages(a, "output")} if llm else {"output": a.get("traceloop.entity.output", a.get("output.value"))}
    request_text, cut1 = ("", False) if helicone.omit_request else truncate_body(orjson.dumps(req_body).decode(), max_body)
    response_text, cut2 = ("", False) if helicone.omit_response else truncate_body(orjson.dumps(resp_body).decode(), max_body)
    return RequestEvent(
        org_id=principal.org_id,
        request_id=helicone.request_id or str(uuid.uuid5(_NAMESPACE, f"{principal.org_id}:{span.trace_id}:{span.span_id}")),
        created_at=datetime.fromtimestamp(span.start_ns / 1e9, UTC),
        source="otlp",
        api_key_id=principal.key_id,
        provider=PROVIDERS.get(provider_raw, provider_raw) if llm else "tool",
        model=model if llm else "",
        path=span.name,
        status=status,
        error=error,
        latency_ms=max(0, (span.end_ns - span.start_ns) // 1_000_000),
        prompt_tokens=prompt,
        completion_tokens=completion,
        cache_read_tokens=cache_read,
        cache_write_tokens=cache_write,
        user_id=helicone.user_id or _str(a, "user.id", "llm.user", "gen_ai.request.user"),
        session_id=helicone.session_id or span.trace_id,
        session_path=path,
        session_name=helicone.session_name or _str(a, "traceloop.workflow.name") or span.resource.get("service.name", ""),
        prompt_id=helicone.prompt_id,
        prompt_version=helicone.prompt_version,
        properties=helicone.properties,
        stream=bool(a.get("gen_ai.is_streaming") or a.get("llm.is_streaming")),
        request_body=request_text,
        response_body=response_text,
        body_truncated=cut1 or cut2,
    )


def _path(span: Span, by_id: dict[str, Span]) -> str:
    """Session path from span parentage: the names of the ancestors present in this export, then the span's."""
    names = [span.name]
    seen = {span.span_id}
    parent = by_id.get(span.parent_id)
    while parent is not None and parent.span_id not in seen:
        names.append(parent.name)
        seen.add(parent.span_id)
        parent = by_id.get(parent.parent_id)
    return "/" + "/".join(reversed(names))


def events_from(spans: list[Span], *, principal: Principal, http_meta: list[tuple[str, str]], max_body: int) -> list[RequestEvent]:
    by_id = {s.span_id: s for s in spans}
    return [
        to_event(s, by_id, principal=principal, http_meta=http_meta, max_body=max_body)
        for s in spans if s.trace_id and s.span_id and (is_llm(s) or is_step(s))
    ]


def routes(*, keys: KeyCache, writer: Writer, prices: PriceBook, max_bytes: int, max_body_bytes: int) -> list[Route]:
    async def post_traces(request: Request) -> Response:
        principal = await authenticate(keys, request.headers)
        data = await read_body(request, max_bytes)
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        is_json = ctype == "application/json" or (ctype == "" and data[:1] == b"{")
        spans = decode_json(data) if is_json else decode_protobuf(data)
        http_meta = [(k, v) for k, v in request.headers.items() if k.startswith("helicone-") and k != "helicone-auth"]
        events = events_from(spans, principal=principal, http_meta=http_meta, max_body=max_body_bytes)
        for ev in events:
            price(prices, ev)
        await submit_durably(writer, events, "otlp")
        if is_json:
            return JSONResponse({"partialSuccess": {}})
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

        return Response(ExportTraceServiceResponse().SerializeToString(), media_type="application/x-protobuf")

    async def post_metrics(request: Request) -> Response:
        # OpenLLMetry also exports metrics; accept and drop them so its exporter stays quiet.
        await read_body(request, max_bytes)
        return JSONResponse({})

    return [Route(p, post_traces, methods=["POST"]) for p in PATHS] + [
        Route("/v1/metrics", post_metrics, methods=["POST"])
    ]
