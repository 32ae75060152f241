"""Usage extraction from provider responses, plain or streamed: one implementation for the proxy and the log APIs.

Convention: `prompt_tokens` counts ALL input tokens, cache reads and writes included, for every provider.
OpenAI already reports it so (`prompt_tokens_details.cached_tokens` is a part of it); Anthropic reports
`input_tokens` without the cache tokens, so they are added.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson


@dataclass(frozen=True, slots=True)
class Extracted:
    model: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    has_usage: bool = False


def _n(value: Any) -> int:
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return max(value, 0)
    if isinstance(value, float) and value >= 0:
        return int(value)
    return 0


def _d(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def usage_of(u: dict[str, Any], model: str = "") -> Extracted:
    """Any known usage object: OpenAI chat/completions/embeddings, Responses, Anthropic, Gemini, Bedrock-style."""
    if "input_tokens" in u or "output_tokens" in u:
        cache_read = _n(u.get("cache_read_input_tokens"))
        cache_write = _n(u.get("cache_creation_input_tokens"))
        if "cache_read_input_tokens" in u or "cache_creation_input_tokens" in u:  # Anthropic: input excludes cache
            prompt = _n(u.get("input_tokens")) + cache_read + cache_write
        else:  # Responses API: input includes cached tokens
            cache_read = _n(_d(u.get("input_tokens_details")).get("cached_tokens"))
            prompt = _n(u.get("input_tokens"))
        return Extracted(model, prompt, _n(u.get("output_tokens")), cache_read, cache_write, True)
    if "prompt_tokens" in u or "completion_tokens" in u or "total_tokens" in u:
        details = _d(u.get("prompt_tokens_details"))
        return Extracted(model, _n(u.get("prompt_tokens")), _n(u.get("completion_tokens")),
                         _n(details.get("cached_tokens")), 0, True)
    if "promptTokenCount" in u or "candidatesTokenCount" in u:  # Gemini usageMetadata
        return Extracted(model, _n(u.get("promptTokenCount")),
                         _n(u.get("candidatesTokenCount")) + _n(u.get("thoughtsTokenCount")),
                         _n(u.get("cachedContentTokenCount")), 0, True)
    if "prompt_token_count" in u or "generation_token_count" in u:  # Bedrock/Llama style
        return Extracted(model, _n(u.get("prompt_token_count")), _n(u.get("generation_token_count")), 0, 0, True)
    return Extracted(model)


def from_json(body: Any) -> Extracted:
    """Usage and model of a parsed (non-streamed) response; junk gives an empty Extracted, never an error."""
    if not isinstance(body, dict):
        return Extracted()
    model = _str(body.get("model"))
    if isinstance(body.get("response"), dict) and "usage" not in body:  # a Responses API event wrapper
        return from_json(body["response"])
    for key in ("usage", "usageMetadata"):
        if isinstance(body.get(key), dict):
            return usage_of(body[key], model or _str(body.get("modelVersion")))
    if "prompt_token_count" in body or "generation_token_count" in body:
        return usage_of(body, model)
    return Extracted(model)


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _payloads(text: str) -> list[Any]:
    """The JSON payloads of a stream: SSE `data:` lines, or one JSON document per line (Helicone's textBody)."""
    out = []
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("data:"):
            line = line[5:].strip()
        if not line.startswith("{"):
            continue
        try:
            out.append(orjson.loads(line))
        except orjson.JSONDecodeError:
            continue  # a truncated last line, or a stray non-JSON line
    return out


class StreamUsageTracker:
    """Fed a stream's payloads in order; keeps the model and the latest usage seen."""

    def __init__(self) -> None:
        self.model = ""
        self.found = Extracted()
        self._anthropic_input: Extracted | None = None

    def add(self, event: Any) -> None:
        if not isinstance(event, dict):
            return
        kind = event.get("type")
        if kind == "message_start":  # Anthropic: input usage up front
            message = _d(event.get("message"))
            self.model = _str(message.get("model")) or self.model
            self._anthropic_input = usage_of(_d(message.get("usage")), self.model)
            self.found = self._anthropic_input
            return
        if kind == "message_delta":  # Anthropic: output usage (cumulative) at the end
            u = _d(event.get("usage"))
            base = self._anthropic_input or Extracted(self.model)
            prompt, read, write = base.prompt_tokens, base.cache_read_tokens, base.cache_write_tokens
            if "input_tokens" in u or "cache_read_input_tokens" in u:  # newer APIs repeat input usage here
                again = usage_of(u, self.model)
                prompt, read, write = again.prompt_tokens or prompt, again.cache_read_tokens or read, \
                    again.cache_write_tokens or write
            self.found = Extracted(self.model, prompt, _n(u.get("output_tokens")), read, write, True)
            return
        if isinstance(kind, str) and kind.startswith("response.") and isinstance(event.get("response"), dict):
            response = event["response"]  # Responses API: usage arrives with response.completed
            self.model = _str(response.get("model")) or self.model
            if isinstance(response.get("usage"), dict):
                self.found = usage_of(response["usage"], self.model)
            return
        self.model = _str(event.get("model")) or _str(event.get("modelVersion")) or self.model
        got = from_json(event)
        if got.has_usage:
            self.found = got

    def result(self) -> Extracted:
        f = self.found
        return Extracted(self.model or f.model, f.prompt_tokens, f.completion_tokens, f.cache_read_tokens,
                         f.cache_write_tokens, f.has_usage)


def from_stream(text: str) -> Extracted:
    tracker = StreamUsageTracker()
    for event in _payloads(text):
        tracker.add(event)
    return tracker.result()


def reassemble_stream(text: str) -> Any:
    """A readable response object rebuilt from a stream (OpenAI chat, Anthropic messages, Responses API)."""
    events = _payloads(text)
    for event in reversed(events):
        if isinstance(event, dict) and event.get("type") == "response.completed" and isinstance(event.get("response"), dict):
            return event["response"]
    found = from_stream(text)
    usage = {"prompt_tokens": found.prompt_tokens, "completion_tokens": found.completion_tokens} if found.has_usage else None
    if any(isinstance(e, dict) and str(e.get("type", "")).startswith(("message_", "content_block")) for e in events):
        blocks: dict[int, dict[str, Any]] = {}
        stop = None
        for e in events:
            if not isinstance(e, dict):
                continue
            if e.get("type") == "content_block_start":
                blocks[_n(e.get("index"))] = dict(_d(e.get("content_block")))
            elif e.get("type") == "content_block_delta":
                block = blocks.setdefault(_n(e.get("index")), {"type": "text", "text": ""})
                delta = _d(e.get("delta"))
                if "text" in delta:
                    block["text"] = block.get("text", "") + _str(delta.get("text"))
                if "partial_json" in delta:
                    block["input_json"] = block.get("input_json", "") + _str(delta.get("partial_json"))
            elif e.get("type") == "message_delta":
                stop = _d(e.get("delta")).get("stop_reason", stop)
        return {"model": found.model, "content": [blocks[i] for i in sorted(blocks)], "stop_reason": stop, "usage": usage}
    choices: dict[int, dict[str, Any]] = {}
    for e in events:
        if not isinstance(e, dict):
            continue
        for c in e.get("choices") or []:
            if not isinstance(c, dict):
                continue
            slot = choices.setdefault(_n(c.get("index")), {"message": {"role": "assistant", "content": ""}, "finish_reason": None})
            delta = _d(c.get("delta"))
            if isinstance(delta.get("role"), str):
                slot["message"]["role"] = delta["role"]
            if isinstance(delta.get("content"), str):
                slot["message"]["content"] += delta["content"]
            for tc in delta.get("tool_calls") or []:
                if not isinstance(tc, dict):
                    continue
                calls = slot["message"].setdefault("tool_calls", [])
                idx = _n(tc.get("index"))
                while len(calls) <= idx:
                    calls.append({"id": "", "type": "function", "function": {"name": "", "arguments": ""}})
                fn = _d(tc.get("function"))
                calls[idx]["id"] = tc.get("id") or calls[idx]["id"]
                calls[idx]["function"]["name"] += _str(fn.get("name"))
                calls[idx]["function"]["arguments"] += _str(fn.get("arguments"))
            if c.get("finish_reason"):
                slot["finish_reason"] = c["finish_reason"]
    return {"model": found.model, "choices": [choices[i] for i in sorted(choices)], "usage": usage}
