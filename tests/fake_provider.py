"""A fake LLM provider on loopback speaking OpenAI (chat, Responses, embeddings, models) and Anthropic (messages),
streamed and not, that records every request it receives (headers included) and can inject faults."""

from __future__ import annotations

import asyncio
import gzip
import json
import threading
import time
from collections.abc import AsyncIterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.servers import serve

REPLY = "Hello from the fake provider, streaming a few words for you"


@dataclass
class Recorded:
    method: str
    path: str
    query: str
    headers: list[tuple[str, str]]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Fault:
    status: int
    headers: dict[str, str]
    body: Any
    times: int


@dataclass
class FakeProvider:
    """`with FakeProvider() as fp:` serves on 127.0.0.1:<free port>; OpenAI base is fp.url + "/v1"."""

    chunk_delay_s: float = 0.0
    gzip: bool = False
    requests: list[Recorded] = field(default_factory=list)
    url: str = ""
    cancelled_streams: int = 0
    _faults: list[Fault] = field(default_factory=list)
    _drop_after: int | None = None
    _hold: threading.Event | None = None
    _stack: ExitStack = field(default_factory=ExitStack)

    # --- test hooks ----------------------------------------------------------------------------------
    def fail_next(self, status: int, headers: dict[str, str] | None = None, body: Any = None, times: int = 1) -> None:
        self._faults.append(Fault(status, headers or {}, body if body is not None else {"error": {"message": "injected"}}, times))

    def drop_stream_after(self, chunks: int) -> None:
        """The next stream closes the connection abruptly after `chunks` chunks."""
        self._drop_after = chunks

    def hold_stream(self) -> threading.Event:
        """The next stream sends its first chunk, then waits until the returned event is set."""
        self._hold = threading.Event()
        return self._hold

    # --- lifecycle -----------------------------------------------------------------------------------
    def __enter__(self) -> FakeProvider:
        self.url = self._stack.enter_context(serve(self.app()))
        return self

    def __exit__(self, *exc: object) -> None:
        if self._hold is not None:
            self._hold.set()
        self._stack.close()

    def app(self) -> Starlette:
        return Starlette(routes=[
            Route("/v1/chat/completions", self._chat, methods=["POST"]),
            Route("/v1/responses", self._responses, methods=["POST"]),
            Route("/v1/embeddings", self._embeddings, methods=["POST"]),
            Route("/v1/models", self._models, methods=["GET"]),
            Route("/v1/messages", self._messages, methods=["POST"]),
        ])

    # --- plumbing ------------------------------------------------------------------------------------
    async def _record(self, request: Request) -> tuple[dict[str, Any], Response | None]:
        body = await request.body()
        self.requests.append(Recorded(request.method, request.url.path, request.url.query,
                                      [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw], body))
        for fault in self._faults:
            if fault.times > 0:
                fault.times -= 1
                return {}, JSONResponse(fault.body, status_code=fault.status, headers=fault.headers)
        payload = json.loads(body) if body else {}
        model = payload.get("model", "")
        if model == "error-500":
            return payload, JSONResponse({"error": {"message": "the fake provider failed", "type": "server_error"}}, 500)
        if model == "error-400":
            return payload, JSONResponse({"error": {"message": "bad request", "type": "invalid_request_error"}}, 400)
        return payload, None

    def _json(self, request: Request, data: Any) -> Response:
        raw = json.dumps(data).encode()
        if self.gzip and "gzip" in request.headers.get("accept-encoding", ""):
            return Response(gzip.compress(raw), media_type="application/json", headers={"content-encoding": "gzip"})
        return Response(raw, media_type="application/json")

    def _stream(self, events: list[bytes]) -> StreamingResponse:
        drop, self._drop_after = self._drop_after, None
        hold, self._hold = self._hold, None

        async def gen() -> AsyncIterator[bytes]:
            try:
                for i, event in enumerate(events):
                    if drop is not None and i == drop:
                        raise ConnectionAbortedError("the fake provider drops the stream")
                    yield event
                    if i == 0 and hold is not None:
                        while not hold.is_set():
                            await asyncio.sleep(0.005)
                    if self.chunk_delay_s:
                        await asyncio.sleep(self.chunk_delay_s)
            except (asyncio.CancelledError, GeneratorExit):
                self.cancelled_streams += 1
                raise

        return StreamingResponse(gen(), media_type="text/event-stream")

    # --- OpenAI --------------------------------------------------------------------------------------
    @staticmethod
    def _prompt_tokens(payload: dict[str, Any]) -> int:
        text = json.dumps(payload.get("messages", payload.get("input", "")))
        return len(text) // 4 + 1

    async def _chat(self, request: Request) -> Response:
        payload, fault = await self._record(request)
        if fault:
            return fault
        model = payload.get("model", "gpt-4o-mini")
        words = REPLY.split(" ")
        usage: dict[str, Any] = {"prompt_tokens": self._prompt_tokens(payload), "completion_tokens": len(words)}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        usage["prompt_tokens_details"] = {"cached_tokens": 4 if payload.get("user") == "cached" else 0}
        base = {"id": "chatcmpl-fake", "created": int(time.time()), "model": f"{model}-2024-07-18"}
        if not payload.get("stream"):
            return self._json(request, {**base, "object": "chat.completion", "usage": usage, "choices": [
                {"index": 0, "message": {"role": "assistant", "content": REPLY}, "finish_reason": "stop"}]})
        include_usage = (payload.get("stream_options") or {}).get("include_usage") is True

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            c = {**base, "object": "chat.completion.chunk",
                 "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            if include_usage:
                c["usage"] = None  # as OpenAI does on every chunk when usage was asked for
            return b"data: " + json.dumps(c, separators=(",", ":")).encode() + b"\n\n"

        events = [chunk({"role": "assistant", "content": ""})]
        events += [chunk({"content": w + ("" if i == len(words) - 1 else " ")}) for i, w in enumerate(words)]
        events.append(chunk({}, "stop"))
        if include_usage:
            final = {**base, "object": "chat.completion.chunk", "choices": [], "usage": usage}
            events.append(b"data: " + json.dumps(final, separators=(",", ":")).encode() + b"\n\n")
        events.append(b"data: [DONE]\n\n")
        return self._stream(events)

    async def _responses(self, request: Request) -> Response:
        payload, fault = await self._record(request)
        if fault:
            return fault
        model = payload.get("model", "gpt-4o-mini")
        prompt = self._prompt_tokens(payload)
        words = REPLY.split(" ")
        usage = {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": len(words),
                 "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": prompt + len(words)}
        message = {"type": "message", "id": "msg_fake", "status": "completed", "role": "assistant",
                   "content": [{"type": "output_text", "text": REPLY, "annotations": []}]}
        response = {"id": "resp_fake", "object": "response", "created_at": int(time.time()), "status": "completed",
                    "model": f"{model}-2024-07-18", "output": [message], "usage": usage, "parallel_tool_calls": True,
                    "tool_choice": "auto", "tools": [], "error": None, "incomplete_details": None,
                    "instructions": None, "metadata": {}, "temperature": 1.0, "top_p": 1.0, "text": {"format": {"type": "text"}}}
        if not payload.get("stream"):
            return self._json(request, response)
        pending = {**response, "status": "in_progress", "output": [], "usage": None}
        seq = iter(range(1000))

        def ev(kind: str, **data: Any) -> bytes:
            body = {"type": kind, "sequence_number": next(seq), **data}
            return f"event: {kind}\ndata: {json.dumps(body)}\n\n".encode()

        item = {**message, "status": "in_progress", "content": []}
        part = {"type": "output_text", "text": "", "annotations": []}
        events = [ev("response.created", response=pending), ev("response.in_progress", response=pending),
                  ev("response.output_item.added", output_index=0, item=item),
                  ev("response.content_part.added", item_id="msg_fake", output_index=0, content_index=0, part=part)]
        events += [ev("response.output_text.delta", item_id="msg_fake", output_index=0, content_index=0,
                      delta=w + ("" if i == len(words) - 1 else " "), logprobs=[]) for i, w in enumerate(words)]
        events += [ev("response.output_text.done", item_id="msg_fake", output_index=0, content_index=0, text=REPLY, logprobs=[]),
                   ev("response.content_part.done", item_id="msg_fake", output_index=0, content_index=0,
                      part={**part, "text": REPLY}),
                   ev("response.output_item.done", output_index=0, item=message),
                   ev("response.completed", response=response)]
        return self._stream(events)

    async def _embeddings(self, request: Request) -> Response:
        payload, fault = await self._record(request)
        if fault:
            return fault
        inputs = payload.get("input", "")
        inputs = inputs if isinstance(inputs, list) else [inputs]
        tokens = sum(len(str(i)) // 4 + 1 for i in inputs)
        return self._json(request, {"object": "list", "model": payload.get("model", ""), "data": [
            {"object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3]} for i in range(len(inputs))],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    async def _models(self, request: Request) -> Response:
        await self._record(request)
        return self._json(request, {"object": "list", "data": [{"id": "gpt-4o-mini", "object": "model", "created": 0,
                                                               "owned_by": "fake"}]})

    # --- Anthropic -----------------------------------------------------------------------------------
    async def _messages(self, request: Request) -> Response:
        payload, fault = await self._record(request)
        if fault:
            return fault
        model = payload.get("model", "claude-sonnet-4-6")
        words = REPLY.split(" ")
        cached = (payload.get("metadata") or {}).get("user_id") == "cached"
        usage = {"input_tokens": self._prompt_tokens(payload), "output_tokens": len(words),
                 "cache_creation_input_tokens": 20 if cached else 0, "cache_read_input_tokens": 100 if cached else 0}
        message = {"id": "msg_fake", "type": "message", "role": "assistant", "model": f"{model}-20260101",
                   "content": [{"type": "text", "text": REPLY}], "stop_reason": "end_turn", "stop_sequence": None,
                   "usage": usage}
        if not payload.get("stream"):
            return self._json(request, message)

        def ev(kind: str, data: dict[str, Any]) -> bytes:
            return f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n".encode()

        start = {**message, "content": [], "stop_reason": None, "usage": {**usage, "output_tokens": 1}}
        events = [ev("message_start", {"message": start}),
                  ev("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}})]
        events += [ev("content_block_delta", {"index": 0, "delta": {
            "type": "text_delta", "text": w + ("" if i == len(words) - 1 else " ")}}) for i, w in enumerate(words)]
        events += [ev("content_block_stop", {"index": 0}),
                   ev("message_delta", {"delta": {"stop_reason": "end_turn", "stop_sequence": None},
                                        "usage": {"output_tokens": len(words)}}),
                   ev("message_stop", {})]
        return self._stream(events)


