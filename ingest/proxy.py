"""The proxy: a raw ASGI app that relays /openai, /anthropic and /gateway calls untouched and logs each one.

The hot path does only the hop: an in-memory key check, header filtering, the upstream call and the relay.
Parsing the bodies for model and usage, pricing and spooling happen after the client has its last byte.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
import zlib
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson

from ingest import cache, usage
from ingest import headers as hh
from ingest.auth import EXPECTED, bearer, resolve
from ingest.controls import Gateway, Plan
from ingest.costing import price
from ingest.errors import Forbidden, HttpError, IngestError, Unauthorized
from ingest.event import RequestEvent, new_request_id, truncate_body
from ingest.metrics import Metrics
from ingest.retry import RETRY_ON, Fallback
from ingest.writer import Writer
from pricing.prices import PriceBook
from storage.controlplane import KeyCache, Principal

log = logging.getLogger("llmlens.proxy")
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

PREFIXES = ("/openai/", "/anthropic/", "/gateway/")
TAIL_BYTES = 64 * 1024
_DROP_REQUEST = hh.HOP_BY_HOP | {"host", "content-length", "accept-encoding", "expect"}
_DROP_RESPONSE = hh.HOP_BY_HOP | {"content-length", "date", "server"}

# Provider names for gateway targets (after Helicone's packages/cost/providers/mappings.ts).
GATEWAY_PROVIDERS = {
    "api.openai.com": "openai", "api.anthropic.com": "anthropic", "api.together.xyz": "together",
    "api.groq.com": "groq", "openrouter.ai": "openrouter", "api.mistral.ai": "mistral",
    "api.fireworks.ai": "fireworks", "api.deepseek.com": "deepseek", "api.x.ai": "x-ai",
    "api.perplexity.ai": "perplexity", "api.deepinfra.com": "deepinfra", "api.cerebras.ai": "cerebras",
    "generativelanguage.googleapis.com": "google", "api.cohere.com": "cohere", "api.novita.ai": "novita",
    "api.hyperbolic.xyz": "hyperbolic", "integrate.api.nvidia.com": "nvidia", "api.studio.nebius.com": "nebius",
}


class BadGateway(HttpError):
    status = 502


class GatewayTimeout(HttpError):
    status = 504


def _provider_of(base: str) -> str:
    host = urlsplit(base).hostname or ""
    return GATEWAY_PROVIDERS.get(host, host)


def host_allowed(netloc: str, allowed: tuple[str, ...]) -> bool:
    """Exact host (or host:port) match, or `*.domain` for subdomains; nothing else is reachable."""
    netloc = netloc.lower()
    host = netloc.rsplit(":", 1)[0] if netloc.count(":") == 1 else netloc
    for pattern in allowed:
        if pattern.startswith("*."):
            if host.endswith(pattern[1:]) and _is_name(host):
                return True
        elif pattern in (netloc, host):
            return True
    return False


def _is_name(host: str) -> bool:
    # A wildcard never admits an IP literal: private and loopback addresses must be listed exactly.
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return True
    return False


@dataclass(slots=True)
class Target:
    base: str
    provider: str


@dataclass(slots=True)
class Capture:
    """A bounded copy of a body for the log, plus its tail (where stream usage lives)."""

    limit: int
    head: list[bytes] = field(default_factory=list)
    size: int = 0
    tail: bytes = b""

    def add(self, chunk: bytes) -> None:
        if self.size < self.limit:
            self.head.append(chunk[: self.limit - self.size])
        self.size += len(chunk)
        if self.size > self.limit:
            self.tail = (self.tail + chunk)[-TAIL_BYTES:]

    @property
    def truncated(self) -> bool:
        return self.size > self.limit

    def text(self) -> str:
        return b"".join(self.head).decode("utf-8", "replace")


class Proxy:
    """ASGI app for the proxy routes; one instance per llmlens app."""

    def __init__(
        self,
        *,
        keys: KeyCache,
        writer: Writer,
        prices: PriceBook,
        metrics: Metrics,
        openai_base_url: str,
        anthropic_base_url: str,
        allowed_hosts: tuple[str, ...],
        timeout_s: float,
        max_body_bytes: int,
        transport: str = "aiohttp",
        gateway: Gateway | None = None,
    ) -> None:
        self.keys, self.writer, self.prices, self.metrics = keys, writer, prices, metrics
        self.openai_base = openai_base_url
        self.anthropic_base = anthropic_base_url
        self.allowed = allowed_hosts
        self.timeout = httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0))
        self.max_body = max_body_bytes
        self.transport = transport
        self._client: httpx.AsyncClient | None = None
        self.gateway = gateway
        self._tasks: set[asyncio.Future[None]] = set()

    async def start(self) -> None:
        limits = httpx.Limits(max_connections=1000, max_keepalive_connections=200, keepalive_expiry=60)
        if self.transport == "aiohttp":
            # Measured (bench/proxy_overhead.py): ~40% less CPU per request than httpx's own transport.
            from httpx_aiohttp import HttpxAiohttpClient

            self._client = HttpxAiohttpClient(timeout=self.timeout, limits=limits, follow_redirects=False)
        else:
            self._client = httpx.AsyncClient(timeout=self.timeout, limits=limits, follow_redirects=False)

    async def aclose(self) -> None:
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=10)
        if self._client is not None:
            await self._client.aclose()

    # --- routing ---------------------------------------------------------------------------------------
    def target(self, prefix: str, meta: hh.HeliconeMeta) -> Target:
        if prefix == "openai":
            if meta.openai_api_base:
                base = self._checked_origin(meta.openai_api_base, "Helicone-OpenAI-Api-Base")
                return Target(base, "azure" if "azure" in base else "openai")
            return Target(self.openai_base, "openai")
        if prefix == "anthropic":
            return Target(self.anthropic_base, "anthropic")
        if not meta.target_url:
            raise IngestError("Helicone-Target-Url header is missing; /gateway needs the provider's origin, "
                             "e.g. Helicone-Target-Url: https://api.together.xyz")
        base = self._checked_origin(meta.target_url, "Helicone-Target-Url")
        return Target(base, _provider_of(base))

    def _checked_origin(self, url: str, header: str) -> str:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise IngestError(f"{header} {url!r} is not an http(s) URL")
        if not host_allowed(parts.netloc, self.allowed):
            raise Forbidden(f"{header} host {parts.netloc!r} is not in LLMLENS_GATEWAY_ALLOWED_HOSTS")
        return url.rstrip("/")

    # --- the hop ---------------------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        created_at = datetime.now(UTC)
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
        prefix, _, rest = raw_path[1:].partition(b"/")
        pairs = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]]
        meta = hh.parse(pairs)
        route = "/" + prefix.decode() + "/*"
        try:
            principal = await self._authenticate(meta)
            target = self.target(prefix.decode(), meta)
        except HttpError as exc:
            await _drain(receive)
            await _send_json(send, exc.status, exc.body())
            self.metrics.http_requests.inc(route=route, status=str(exc.status))
            return

        body = await _read_body(receive)
        tail = "/" + rest.decode("latin-1") + ("?" + scope["query_string"].decode("latin-1") if scope.get("query_string") else "")
        out_headers = [(n, v) for n, v in pairs if n not in _DROP_REQUEST and not n.startswith("helicone-")]
        out_headers.append(("accept-encoding", "identity"))  # relay bytes as they come; never a mismatched encoding
        ctx = _Call(scope, meta, principal, target, body, created_at, started, meta.request_id or new_request_id(),
                    self.max_body)

        plan: Plan | None = None
        needed = self.gateway.needed(meta, principal.org_id) if self.gateway is not None else False
        if needed is not False and self.gateway is not None:
            try:
                plan = await self.gateway.plan(meta, principal, url=target.base + tail, body=body, headers=pairs)
                for fb in plan.fallbacks or []:
                    self._checked_origin(fb.target_url, "Helicone-Fallbacks target-url")
            except HttpError as exc:
                await _send_json(send, exc.status, exc.body(), extra=[(k.lower().encode(), v.encode()) for k, v in exc.headers.items()])
                self.metrics.http_requests.inc(route=route, status=str(exc.status))
                if exc.status == 429:  # a refused call is still a call the team wants to see
                    ctx.status, ctx.error, ctx.ended = 429, exc.message, time.perf_counter()
                    self._log(ctx, None, plan)
                return
            if plan.hit is not None:
                await self._serve_hit(send, ctx, plan)
                self.metrics.http_requests.inc(route=route, status=str(ctx.status))
                self._log(ctx, None, plan)
                return

        send_body, include_usage_added = body, False
        if rest.endswith(b"chat/completions") and b'"stream"' in body:
            send_body, include_usage_added = _with_stream_usage(body)
        upstream = await self._upstream(send, ctx, plan, tail, out_headers, send_body)
        if upstream is None:
            self._log(ctx, None, plan)
            return
        try:
            await self._relay(scope, receive, send, upstream, ctx, include_usage_added, plan)
        finally:
            await upstream.aclose()
            self.metrics.http_requests.inc(route=route, status=str(ctx.status))
            self._log(ctx, upstream, plan)

    async def _upstream(self, send: Send, ctx: _Call, plan: Plan | None, tail: str, headers: list[tuple[str, str]],
                        body: bytes) -> httpx.Response | None:
        """Send the call (with retries and fallbacks when asked); None when an error response was already sent."""
        assert self._client is not None
        targets: list[tuple[str, dict[str, str], bytes, Fallback | None]] = [(ctx.target.base, {}, body, None)]
        if plan is not None and plan.fallbacks:
            targets = [(fb.target_url.rstrip("/"), fb.headers, fb.body(body), fb) for fb in plan.fallbacks]
        policy = plan.retry if plan is not None else None
        for index, (base, extra, content, fb) in enumerate(targets):
            last_target = index == len(targets) - 1
            out = [(n, v) for n, v in headers if n not in extra] + list(extra.items())
            for attempt in range((policy.retries if policy else 0) + 1):
                ctx.attempts += 1
                ctx.target = Target(base, ctx.target.provider if fb is None else _provider_of(base))
                ctx.fallback_index = index if plan is not None and plan.fallbacks else None
                failure: HttpError | None = None
                upstream: httpx.Response | None = None
                try:
                    req = self._client.build_request(ctx.scope["method"], base + tail, headers=out, content=content)
                    ctx.sent = time.perf_counter()
                    upstream = await self._client.send(req, stream=True)
                    ctx.headers_at = time.perf_counter()
                except httpx.TimeoutException as exc:
                    failure = (BadGateway(f"could not reach the provider at {base}: ConnectError: {exc}") if _refused(exc)
                               else GatewayTimeout(f"the provider did not answer within {self.timeout.read:g} s ({type(exc).__name__})"))
                except httpx.HTTPError as exc:
                    failure = BadGateway(f"could not reach the provider at {base}: {type(exc).__name__}: {exc}")
                status = upstream.status_code if upstream is not None else (failure.status if failure else 0)
                can_retry = policy is not None and attempt < policy.retries and status in RETRY_ON
                moves_on = fb is not None and not last_target and fb.moves_on(status)
                if upstream is not None and not can_retry and not moves_on:
                    return upstream
                if upstream is not None:
                    retry_after = upstream.headers.get("retry-after")
                    await upstream.aclose()
                else:
                    retry_after = None
                if can_retry and policy is not None:
                    await asyncio.sleep(policy.delay_s(attempt, retry_after))
                    continue
                if moves_on:
                    break
                assert failure is not None
                await self._fail(send, ctx, failure)
                return None
        return None  # unreachable: the last target always returns or fails

    async def _serve_hit(self, send: Send, ctx: _Call, plan: Plan) -> None:
        hit = plan.hit
        assert hit is not None
        ctx.status, ctx.stream, ctx.cache_hit = hit.status, hit.stream, True
        headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in hit.headers]
        headers += [(b"helicone-id", ctx.request_id.encode()), (b"helicone-cache", b"HIT"),
                    (b"helicone-cache-bucket-idx", str(plan.cache_bucket).encode()), *plan.extra_headers]
        if not hit.stream:
            headers.append((b"content-length", str(len(hit.body)).encode()))
        await send({"type": "http.response.start", "status": hit.status, "headers": headers})
        chunks = cache.replay_chunks(hit.body) if hit.stream else [hit.body]
        for i, chunk in enumerate(chunks):
            if i == 0:
                ctx.ttft_ms = int((time.perf_counter() - ctx.started) * 1000)
            ctx.response.add(chunk)
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        ctx.ended = time.perf_counter()

    async def _authenticate(self, meta: hh.HeliconeMeta) -> Principal:
        if not meta.auth:
            raise Unauthorized(f"Helicone-Auth header is missing; {EXPECTED}")
        return await resolve(self.keys, bearer(meta.auth, "Helicone-Auth"))

    async def _relay(
        self, scope: Scope, receive: Receive, send: Send, upstream: httpx.Response, ctx: _Call, strip_usage: bool,
        plan: Plan | None,
    ) -> None:
        ctx.status = upstream.status_code
        is_stream = upstream.headers.get("content-type", "").startswith("text/event-stream")
        ctx.stream = is_stream
        out = [(k, v) for k, v in upstream.headers.raw if k.lower().decode("latin-1") not in _DROP_RESPONSE]
        if not is_stream and "content-length" in upstream.headers and not strip_usage:
            out.append((b"content-length", upstream.headers["content-length"].encode()))
        out.append((b"helicone-id", ctx.request_id.encode()))
        # Our own time: before the request left, and between the provider's headers and ours.
        overhead = (ctx.sent - ctx.started + time.perf_counter() - ctx.headers_at) * 1000
        out.append((b"llmlens-overhead-ms", f"{overhead:.2f}".encode()))
        if plan is not None:
            out += plan.extra_headers
            if plan.cache_policy is not None:
                out.append((b"helicone-cache", b"MISS"))
            if ctx.fallback_index is not None:
                out.append((b"helicone-fallback-index", str(ctx.fallback_index).encode()))
        await send({"type": "http.response.start", "status": upstream.status_code, "headers": out})

        disconnected = asyncio.Event()
        watcher = asyncio.ensure_future(_watch_disconnect(receive, disconnected, upstream)) if is_stream else None
        filt = _UsageChunkFilter() if (strip_usage and is_stream) else None
        complete = False
        try:
            async for chunk in upstream.aiter_raw():
                if ctx.ttft_ms is None:
                    ctx.ttft_ms = int((time.perf_counter() - ctx.started) * 1000)
                ctx.response.add(chunk)
                if disconnected.is_set():
                    ctx.cancelled = True
                    return
                if filt is not None:
                    chunk = filt.feed(chunk)
                    if not chunk:
                        continue
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            if filt is not None and (rest := filt.flush()):
                await send({"type": "http.response.body", "body": rest, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            complete = True
        except httpx.HTTPError as exc:
            if not disconnected.is_set():  # else: the watcher closed the upstream because the client left
                # The provider dropped mid-body. Returning without finishing the response makes the server drop the
                # client's connection too, so the client sees what it would have seen direct; the log keeps the part.
                ctx.error = f"the provider connection broke mid-response: {type(exc).__name__}: {exc}"
        except OSError:
            ctx.cancelled = True
        finally:
            ctx.ended = time.perf_counter()
            if watcher is not None:
                watcher.cancel()
            if disconnected.is_set() and not complete:  # a client leaving after the last byte cancelled nothing
                ctx.cancelled = True

    async def _fail(self, send: Send, ctx: _Call, exc: HttpError) -> None:
        """Answer with a JSON error; the caller logs the call."""
        ctx.status, ctx.error, ctx.ended = exc.status, exc.message, time.perf_counter()
        await _send_json(send, exc.status, exc.body(), extra=[(b"helicone-id", ctx.request_id.encode())])
        self.metrics.http_requests.inc(route="/" + ctx.scope["path"].split("/")[1] + "/*", status=str(exc.status))

    # --- the log (after the client is served) ------------------------------------------------------------
    def _log(self, ctx: _Call, upstream: httpx.Response | None, plan: Plan | None = None) -> None:
        try:
            ev = build_event(ctx, upstream)
            price(self.prices, ev)
            if ctx.cache_hit and plan is not None and plan.hit is not None:
                # A hit costs nothing at the provider; what the provider would have charged is the saving.
                ev.cache_saved_nanos = plan.hit.cost_nanos or ev.cost_nanos or 0
                ev.cost_nanos, ev.cost_source = 0, "cache"
        except Exception:  # logging must never break the call; count and move on
            log.exception("could not build the event for request %s", ctx.request_id)
            self.metrics.events_dropped.inc()
            return
        self.writer.submit_nowait(ev)
        if plan is not None and self.gateway is not None:
            self._background(self._after(ctx, upstream, plan, ev))

    async def _after(self, ctx: _Call, upstream: httpx.Response | None, plan: Plan, ev: RequestEvent) -> None:
        """Off the request path: save a cacheable response, charge cents buckets and budgets."""
        assert self.gateway is not None
        try:
            pol = plan.cache_policy
            ok = (upstream is not None and 200 <= ctx.status < 300 and not ctx.error and not ctx.cancelled
                  and not ctx.response.truncated and not ctx.cache_hit)
            if pol is not None and pol.save and ok and upstream is not None:
                headers = cache.stored_headers(upstream.headers.raw, set(_DROP_RESPONSE) | {"content-encoding"})
                await asyncio.to_thread(
                    self.gateway.cache.store, plan.cache_key, plan.cache_bucket, org_id=ctx.principal.org_id,
                    status=ctx.status, headers=headers, body=b"".join(ctx.response.head), stream=ctx.stream,
                    cost_nanos=ev.cost_nanos, model=ev.model, max_age_s=pol.max_age_s, now=datetime.now(UTC))
            if plan.verdict is not None and not ctx.cache_hit:
                await asyncio.to_thread(self.gateway.limits.settle, plan.verdict, ev.cost_nanos)
        except Exception:
            log.exception("gateway bookkeeping failed for request %s", ctx.request_id)

    def _background(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


@dataclass(slots=True)
class _Call:
    scope: Scope
    meta: hh.HeliconeMeta
    principal: Principal
    target: Target
    request_body: bytes
    created_at: datetime
    started: float
    request_id: str
    max_body: int
    status: int = 0
    error: str = ""
    ttft_ms: int | None = None
    ended: float = 0.0
    sent: float = 0.0
    headers_at: float = 0.0
    stream: bool = False
    cancelled: bool = False
    cache_hit: bool = False
    attempts: int = 0
    fallback_index: int | None = None
    response: Capture = field(init=False)

    def __post_init__(self) -> None:
        self.response = Capture(self.max_body)


def build_event(ctx: _Call, upstream: httpx.Response | None) -> RequestEvent:
    meta, scope = ctx.meta, ctx.scope
    req_json: Any = None
    if ctx.request_body[:1] == b"{":
        try:
            req_json = orjson.loads(ctx.request_body)
        except orjson.JSONDecodeError:
            req_json = None
    req_model = req_json.get("model") if isinstance(req_json, dict) else None
    raw = b"".join(ctx.response.head)
    encoding = upstream.headers.get("content-encoding", "") if upstream is not None else ""
    if encoding in ("gzip", "deflate") and not ctx.response.truncated:
        try:
            raw = zlib.decompress(raw, 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS)
        except zlib.error:
            pass
    if ctx.stream:
        text = raw.decode("utf-8", "replace")
        found = usage.from_stream(text if not ctx.response.truncated else ctx.response.tail.decode("utf-8", "ignore"))
        if ctx.response.truncated:
            found = _merge_model(found, usage.from_stream(text))
    else:
        try:
            found = usage.from_json(orjson.loads(raw)) if raw[:1] in (b"{", b"[") else usage.Extracted()
        except orjson.JSONDecodeError:
            found = usage.Extracted()
    model = found.model or (req_model if isinstance(req_model, str) else "") or meta.model_override
    status = ctx.status
    error = ctx.error
    if ctx.cancelled:
        error = error or "the client disconnected before the response finished"
        status = status if status else 499
    elif not error and status >= 400:
        error = raw[:2000].decode("utf-8", "replace")
    request_text, req_cut = ("", False) if meta.omit_request else truncate_body(ctx.request_body.decode("utf-8", "replace"), ctx.max_body)
    response_text, resp_cut = ("", False) if meta.omit_response else (raw.decode("utf-8", "replace"), ctx.response.truncated)
    if resp_cut:
        response_text = truncate_body(response_text, ctx.max_body)[0]
    ended = ctx.ended or time.perf_counter()
    path = "/" + scope["path"].split("/", 2)[2] if scope["path"].count("/") >= 2 else scope["path"]
    return RequestEvent(
        org_id=ctx.principal.org_id,
        request_id=ctx.request_id,
        created_at=ctx.created_at,
        source="proxy",
        api_key_id=ctx.principal.key_id,
        provider=ctx.target.provider,
        model=model,
        path=path,
        target_url=ctx.target.base,
        status=status,
        error=error,
        latency_ms=int((ended - ctx.started) * 1000),
        ttft_ms=ctx.ttft_ms if ctx.stream else None,
        prompt_tokens=found.prompt_tokens,
        completion_tokens=found.completion_tokens,
        cache_read_tokens=found.cache_read_tokens,
        cache_write_tokens=found.cache_write_tokens,
        user_id=meta.user_id,
        session_id=meta.session_id,
        session_path=meta.session_path,
        session_name=meta.session_name,
        prompt_id=meta.prompt_id,
        prompt_version=meta.prompt_version,
        properties=meta.properties,
        stream=ctx.stream,
        cache_hit=ctx.cache_hit,
        attempts=max(ctx.attempts, 1),
        request_headers=hh.storable((k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]),
        response_headers=hh.storable(upstream.headers.items()) if upstream is not None else {},
        request_body=request_text,
        response_body=response_text,
        body_truncated=req_cut or resp_cut,
    )


def _merge_model(tail: usage.Extracted, head: usage.Extracted) -> usage.Extracted:
    if tail.model or not head.model:
        return tail
    return usage.Extracted(head.model, tail.prompt_tokens, tail.completion_tokens, tail.cache_read_tokens,
                           tail.cache_write_tokens, tail.has_usage)


def _with_stream_usage(body: bytes) -> tuple[bytes, bool]:
    """Ask OpenAI for the usage chunk of a chat stream the client did not ask for (we strip it again)."""
    try:
        req = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body, False
    if not isinstance(req, dict) or req.get("stream") is not True:
        return body, False
    opts = req.get("stream_options")
    if isinstance(opts, dict) and opts.get("include_usage") is True:
        return body, False
    req["stream_options"] = {**(opts if isinstance(opts, dict) else {}), "include_usage": True}
    return orjson.dumps(req), True


class _UsageChunkFilter:
    """Removes the `choices: []` usage chunk from an OpenAI chat stream, leaving every other byte as sent."""

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, chunk: bytes) -> bytes:
        data = self._pending + chunk
        cut = data.rfind(b"\n\n")
        if cut < 0:
            self._pending = data
            return b""
        complete, self._pending = data[: cut + 2], data[cut + 2:]
        # With include_usage every chunk carries "usage":null; the client did not ask for that field either.
        complete = complete.replace(b',"usage":null', b"")
        if b'"usage"' not in complete:
            return complete
        events = complete.split(b"\n\n")
        kept = [e for e in events if not (b'"choices":[]' in e.replace(b" ", b"") and b'"usage"' in e)]
        return b"\n\n".join(kept)

    def flush(self) -> bytes:
        rest, self._pending = self._pending, b""
        return rest


def _refused(exc: Exception) -> bool:
    """httpx-aiohttp reports a refused connection as ConnectTimeout; the cause tells them apart."""
    import aiohttp

    return isinstance(exc.__cause__, aiohttp.ClientConnectorError) and not isinstance(exc.__cause__, TimeoutError)


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    return b"".join(chunks)


async def _drain(receive: Receive) -> None:
    await _read_body(receive)


async def _watch_disconnect(receive: Receive, disconnected: asyncio.Event, upstream: httpx.Response) -> None:
    """When the client goes away mid-stream, close the upstream call at once (the provider stops generating)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            disconnected.set()
            await upstream.aclose()
            return


async def _send_json(send: Send, status: int, body: dict[str, Any], extra: list[tuple[bytes, bytes]] | None = None) -> None:
    payload = orjson.dumps(body)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
