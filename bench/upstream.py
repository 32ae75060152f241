"""A minimal OpenAI-compatible upstream for benchmarks: raw ASGI, chat completions, streamed or not.

Kept tiny on purpose so that what the benchmarks measure is the hop, not the fake provider.
Run: python bench/upstream.py --port 18000 [--chunks 20] [--chunk-delay-ms 0]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

CHUNKS = 20
CHUNK_DELAY = 0.0


def completion(model: str) -> bytes:
    return json.dumps({
        "id": "chatcmpl-bench", "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Mock response. " * 8},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 42, "completion_tokens": 24, "total_tokens": 66},
    }).encode()


def chunk(model: str, delta: dict[str, Any], usage: dict[str, int] | None = None, choices: bool = True) -> bytes:
    body: dict[str, Any] = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 0, "model": model,
                            "choices": [{"index": 0, "delta": delta, "finish_reason": None}] if choices else []}
    if usage is not None:
        body["usage"] = usage
    return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            await send({"type": msg["type"] + ".complete"})
            if msg["type"] == "lifespan.shutdown":
                return
    body = b""
    while True:
        msg = await receive()
        body += msg.get("body", b"")
        if not msg.get("more_body"):
            break
    req = json.loads(body or b"{}")
    model = req.get("model", "gpt-4o-mini")
    if not req.get("stream"):
        payload = completion(model)
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]})
        await send({"type": "http.response.body", "body": payload})
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
    await send({"type": "http.response.body", "body": chunk(model, {"role": "assistant", "content": ""}), "more_body": True})
    for _ in range(CHUNKS):
        if CHUNK_DELAY:
            await asyncio.sleep(CHUNK_DELAY)
        await send({"type": "http.response.body", "body": chunk(model, {"content": "word "}), "more_body": True})
    if (req.get("stream_options") or {}).get("include_usage"):
        usage = {"prompt_tokens": 42, "completion_tokens": CHUNKS, "total_tokens": 42 + CHUNKS}
        await send({"type": "http.response.body", "body": chunk(model, {}, usage, choices=False), "more_body": True})
    await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})


if __name__ == "__main__":
    import uvicorn

    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--chunks", type=int, default=20)
    p.add_argument("--chunk-delay-ms", type=float, default=0.0)
    a = p.parse_args()
    CHUNKS, CHUNK_DELAY = a.chunks, a.chunk_delay_ms / 1000
    uvicorn.run(app, host="127.0.0.1", port=a.port, log_level="warning", loop="uvloop", http="httptools",
                access_log=False)
