"""Helicone's own Python client package, pointed at llmlens, logs calls made straight to a provider."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import openai
import pytest

from llmlens.app import Services
from tests.fake_provider import FakeProvider

helicone_helpers = pytest.importorskip("helicone_helpers")


def wait_rows(services: Services, n: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 15
    while True:
        rows = services.ch.query("SELECT provider, model, status, stream, prompt_tokens, completion_tokens, user_id,"
                                 " properties, session_id, source, ttft_ms IS NOT NULL AS has_ttft"
                                 " FROM request_events FINAL ORDER BY created_at")
        if len(rows) >= n or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


def test_manual_logger_log_request_and_streamed_builder(server: str, api_key: str, services: Services) -> None:
    logger = helicone_helpers.HeliconeManualLogger(api_key=api_key, logging_endpoint=server,
                                                   headers={"Helicone-Property-App": "compat"})
    with FakeProvider() as fp, openai.OpenAI(base_url=fp.url + "/v1", api_key="sk-direct") as client:
        request = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello from the manual logger"}]}

        def operation(recorder: Any) -> Any:
            result = client.chat.completions.create(**request)
            recorder.append_results(result.model_dump())
            return result

        result = logger.log_request(request, operation, additional_headers={"Helicone-User-Id": "u-compat"},
                                    provider="openai")
        assert result.choices[0].message.content

        stream_request = {**request, "stream": True, "stream_options": {"include_usage": True}}
        builder = logger.log_builder(stream_request, {"Helicone-Session-Id": "compat-session"})
        for chunk in client.chat.completions.create(**stream_request):
            builder.add_chunk(chunk.model_dump())
        asyncio.run(builder.send_log())

    rows = wait_rows(services, 2)
    usage = result.usage
    assert rows[0] == {"provider": "openai", "model": result.model, "status": 200, "stream": False,
                       "prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
                       "user_id": "u-compat", "properties": {"app": "compat"}, "session_id": "", "source": "async",
                       "has_ttft": False}
    assert {k: rows[1][k] for k in ("provider", "model", "status", "stream", "prompt_tokens", "session_id", "has_ttft")} == {
        "provider": "custom", "model": result.model, "status": 200, "stream": True,
        "prompt_tokens": usage.prompt_tokens, "session_id": "compat-session", "has_ttft": True}
