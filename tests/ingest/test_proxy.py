"""The proxy with the real openai and anthropic SDKs against a fake provider on loopback."""

from __future__ import annotations

import dataclasses
import json
import socket
import time
from typing import Any

import httpx
import openai
import pytest

from llmlens.app import create_app, open_services
from llmlens.settings import Settings
from tests.fake_provider import FakeProvider
from tests.proxied import Proxied
from tests.servers import serve


def forwarded_names(fake: FakeProvider, index: int = -1) -> set[str]:
    return {name for name, _ in fake.requests[index].headers}


def common(p: Proxied, row: dict[str, Any]) -> None:
    """What every proxied event records from H; checked whole."""
    assert {k: row[k] for k in ("user_id", "session_id", "session_path", "session_name", "prompt_id",
                                "prompt_version", "properties", "source", "api_key_id")} == {
        "user_id": "u42", "session_id": "s-1", "session_path": "/plan/search", "session_name": "Research",
        "prompt_id": "answer", "prompt_version": "2", "properties": {"team": "search"}, "source": "proxy",
        "api_key_id": p.services.control.list_keys()[0].id,
    }


def test_openai_chat_non_stream(proxied: Proxied) -> None:
    raw = proxied.openai().chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Say hello to the proxy please"}])
    completion = raw.parse()
    direct = httpx.post(f"{proxied.fake.url}/v1/chat/completions", json={
        "model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello to the proxy please"}]}).json()
    assert completion.choices[0].message.content == direct["choices"][0]["message"]["content"]
    assert completion.usage is not None
    request_id = raw.headers["helicone-id"]
    assert float(raw.headers["llmlens-overhead-ms"]) >= 0

    (row,) = proxied.events(1)
    common(proxied, row)
    assert {k: row[k] for k in ("request_id", "provider", "model", "path", "status", "stream", "prompt_tokens",
                                "completion_tokens", "cache_read_tokens", "error", "ttft_ms", "target_url")} == {
        "request_id": request_id, "provider": "openai", "model": direct["model"], "path": "/v1/chat/completions",
        "status": 200, "stream": False, "prompt_tokens": completion.usage.prompt_tokens,
        "completion_tokens": completion.usage.completion_tokens, "cache_read_tokens": 0, "error": "",
        "ttft_ms": None, "target_url": proxied.fake.url,
    }
    assert json.loads(row["request_body"])["messages"][0]["content"] == "Say hello to the proxy please"
    assert json.loads(row["response_body"]) == {**direct, "id": json.loads(row["response_body"])["id"],
                                                 "created": json.loads(row["response_body"])["created"]}


def test_openai_chat_stream_usage_without_changing_what_the_client_sees(proxied: Proxied) -> None:
    client = proxied.openai()
    chunks = list(client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "stream me a few words please"}], stream=True))
    # The client did not ask for usage: no usage chunk, no usage field.
    assert all(c.choices for c in chunks)
    assert all(c.usage is None for c in chunks)
    assert all("usage" not in c.model_dump(exclude_unset=True) for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    # Upstream was asked for usage, so the log has exact counts.
    sent = json.loads(proxied.fake.requests[-1].body)
    assert sent["stream_options"] == {"include_usage": True}

    with_usage = list(client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "stream me a few words please"}], stream=True,
        stream_options={"include_usage": True}))
    final = with_usage[-1]
    assert final.choices == [] and final.usage is not None

    rows = proxied.events(2)
    assert [(r["stream"], r["prompt_tokens"], r["completion_tokens"]) for r in rows] == [
        (True, final.usage.prompt_tokens, final.usage.completion_tokens)] * 2
    assert rows[0]["ttft_ms"] is not None and rows[0]["ttft_ms"] <= rows[0]["latency_ms"]
    assert text in rows[0]["response_body"] or "data:" in rows[0]["response_body"]


def test_first_chunk_reaches_client_before_provider_finishes(proxied: Proxied) -> None:
    release = proxied.fake.hold_stream()
    stream = proxied.openai().chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hold on"}], stream=True)
    first = next(iter(stream))  # arrives while the provider is still holding the rest back
    assert first.choices[0].delta is not None
    release.set()
    rest = list(stream)
    assert rest
    (row,) = proxied.events(1)
    assert row["status"] == 200 and row["stream"] is True


def test_responses_api_and_embeddings(proxied: Proxied) -> None:
    client = proxied.openai()
    resp = client.responses.create(model="gpt-4o-mini", input="Write one line about lenses")
    with client.responses.stream(model="gpt-4o-mini", input="Stream one line about lenses") as s:
        for _ in s:
            pass
        streamed = s.get_final_response()
    emb = client.embeddings.create(model="text-embedding-3-small", input="some text to embed here")
    rows = proxied.events(3)
    assert [(r["path"], r["stream"], r["prompt_tokens"], r["completion_tokens"]) for r in rows] == [
        ("/v1/responses", False, resp.usage.input_tokens, resp.usage.output_tokens),  # type: ignore[union-attr]
        ("/v1/responses", True, streamed.usage.input_tokens, streamed.usage.output_tokens),  # type: ignore[union-attr]
        ("/v1/embeddings", False, emb.usage.prompt_tokens, 0),
    ]


def test_anthropic_x_api_key_and_beta_headers_forwarded(proxied: Proxied) -> None:
    headers = {**proxied.headers(), "x-api-key": "sk-ant-older-sdk", "anthropic-version": "2023-06-01",
               "anthropic-beta": "prompt-caching-2024-07-31"}
    r = httpx.post(f"{proxied.url}/anthropic/v1/messages", headers=headers, json={
        "model": "claude-haiku-4-5", "max_tokens": 10, "metadata": {"user_id": "cached"},
        "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200
    sent = dict(proxied.fake.requests[-1].headers)
    assert (sent["x-api-key"], sent["anthropic-version"], sent["anthropic-beta"]) == (
        "sk-ant-older-sdk", "2023-06-01", "prompt-caching-2024-07-31")
    (row,) = proxied.events(1)
    usage = r.json()["usage"]
    assert (row["prompt_tokens"], row["cache_read_tokens"], row["cache_write_tokens"]) == (
        usage["input_tokens"] + 120, 100, 20)
    assert row["cost_nanos"] is not None and row["cost_source"] == "registry"


@pytest.mark.parametrize("auth", ["api_key", "auth_token"])
def test_anthropic_messages(proxied: Proxied, auth: str) -> None:
    kw = {auth: "sk-ant-secret-456"}
    client = proxied.anthropic(**kw)
    msg = client.messages.create(model="claude-sonnet-4-6", max_tokens=64,
                                 messages=[{"role": "user", "content": "Hello Claude, how are you"}])
    with client.messages.stream(model="claude-sonnet-4-6", max_tokens=64,
                                messages=[{"role": "user", "content": "Stream to me Claude"}]) as s:
        final = s.get_final_message()
    sent = dict(proxied.fake.requests[-1].headers)
    # whichever credential header this SDK version sends (2.x: Authorization) arrives unchanged
    assert sent.get("x-api-key") == "sk-ant-secret-456" or sent.get("authorization") == "Bearer sk-ant-secret-456"
    assert "anthropic-version" in sent
    rows = proxied.events(2)
    for row, m in zip(rows, (msg, final), strict=True):
        common(proxied, row)
        u = m.usage
        assert (row["provider"], row["model"], row["prompt_tokens"], row["completion_tokens"],
                row["cache_read_tokens"], row["cache_write_tokens"]) == (
            "anthropic", m.model,
            u.input_tokens + (u.cache_read_input_tokens or 0) + (u.cache_creation_input_tokens or 0),
            u.output_tokens, u.cache_read_input_tokens or 0, u.cache_creation_input_tokens or 0)
    assert [r["stream"] for r in rows] == [False, True]


def test_no_helicone_header_forwarded_and_credentials_never_stored(proxied: Proxied) -> None:
    proxied.openai().chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi there"}])
    names = forwarded_names(proxied.fake)
    assert not [n for n in names if n.startswith("helicone-")]
    assert dict(proxied.fake.requests[-1].headers)["authorization"] == "Bearer sk-provider-secret-123"
    assert dict(proxied.fake.requests[-1].headers)["accept-encoding"] == "identity"
    (row,) = proxied.events(1)
    dump = json.dumps(row)
    assert "sk-provider-secret-123" not in dump and proxied.key not in dump
    assert "authorization" not in row["request_headers"]
    assert asyncio_flush(proxied)
    for f in proxied.services.settings.data_dir.rglob("*"):
        if f.is_file() and f.stat().st_size < 50_000_000:
            data = f.read_bytes()
            assert b"sk-provider-secret-123" not in data and proxied.key.encode() not in data, f


def asyncio_flush(p: Proxied) -> bool:
    # The spool is emptied once the batch lands; anything left would still be checked by the loop above.
    deadline = time.monotonic() + 10
    while p.services.writer.spool.bytes_used and time.monotonic() < deadline:
        time.sleep(0.05)
    return True


def test_errors_pass_through_verbatim(proxied: Proxied) -> None:
    proxied.fake.fail_next(status=429, headers={"retry-after": "7"},
                           body={"error": {"message": "slow down", "type": "rate_limit_error"}})
    with pytest.raises(openai.RateLimitError) as info:
        proxied.openai().chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
    assert info.value.response.headers["retry-after"] == "7"
    assert info.value.body == {"message": "slow down", "type": "rate_limit_error"}
    with pytest.raises(openai.InternalServerError):
        proxied.openai().chat.completions.create(model="error-500", messages=[{"role": "user", "content": "x"}])
    rows = proxied.events(2)
    assert [r["status"] for r in rows] == [429, 500]
    assert "slow down" in rows[0]["error"]


def test_auth_failures_never_reach_the_provider(proxied: Proxied) -> None:
    for headers, message in [
        ({}, "Helicone-Auth header is missing; expected 'Bearer <llmlens API key>'"),
        ({"Helicone-Auth": "sk-llmlens-x"}, "Helicone-Auth header is malformed; expected 'Bearer <llmlens API key>'"),
        ({"Helicone-Auth": "Bearer sk-llmlens-unknown"}, "the API key is unknown or revoked"),
    ]:
        r = httpx.post(f"{proxied.url}/openai/v1/chat/completions", json={"model": "gpt-4o"}, headers=headers)
        assert (r.status_code, r.json()) == (401, {"error": message})
    key_id = proxied.services.control.list_keys()[0].id
    proxied.services.control.revoke_key(key_id)
    proxied.services.keys._entries.clear()  # a revoke takes effect within the cache TTL; skip the wait
    r = httpx.post(f"{proxied.url}/openai/v1/chat/completions", json={"model": "gpt-4o"},
                   headers={"Helicone-Auth": f"Bearer {proxied.key}"})
    assert r.status_code == 401
    assert proxied.fake.requests == []


def test_gateway_allow_list(proxied: Proxied) -> None:
    def call(target: str | None) -> httpx.Response:
        h = {"Helicone-Auth": f"Bearer {proxied.key}"} | ({"Helicone-Target-Url": target} if target else {})
        return httpx.post(f"{proxied.url}/gateway/v1/chat/completions", headers=h,
                          json={"model": "m", "messages": [{"role": "user", "content": "hi"}]})

    ok = call(proxied.fake.url)
    assert ok.status_code == 200
    for target, status, message in [
        ("http://169.254.169.254", 403, "Helicone-Target-Url host '169.254.169.254' is not in LLMLENS_GATEWAY_ALLOWED_HOSTS"),
        ("http://127.0.0.1:1", 403, "Helicone-Target-Url host '127.0.0.1:1' is not in LLMLENS_GATEWAY_ALLOWED_HOSTS"),
        ("http://localhost", 403, "Helicone-Target-Url host 'localhost' is not in LLMLENS_GATEWAY_ALLOWED_HOSTS"),
        ("ftp://api.together.xyz", 400, "Helicone-Target-Url 'ftp://api.together.xyz' is not an http(s) URL"),
        (None, 400, "Helicone-Target-Url header is missing; /gateway needs the provider's origin, "
                    "e.g. Helicone-Target-Url: https://api.together.xyz"),
    ]:
        r = call(target)
        assert (r.status_code, r.json()) == (status, {"error": message})
    assert len(proxied.fake.requests) == 1
    r = httpx.post(f"{proxied.url}/openai/v1/chat/completions", json={"model": "m"}, headers={
        "Helicone-Auth": f"Bearer {proxied.key}", "Helicone-OpenAI-Api-Base": "http://10.0.0.1"})
    assert r.status_code == 403
    (row,) = proxied.events(1)
    assert (row["provider"], row["target_url"]) == ("127.0.0.1", proxied.fake.url)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_upstream_unreachable_is_502_and_logged(settings: Settings) -> None:
    s = dataclasses.replace(settings, openai_base_url=f"http://127.0.0.1:{free_port()}")
    services = open_services(s)
    key = services.control.create_key("k")[1]
    with serve(create_app(s, services)) as url:
        r = httpx.post(f"{url}/openai/v1/chat/completions", json={"model": "gpt-4o"},
                       headers={"Helicone-Auth": f"Bearer {key}"})
        assert r.status_code == 502
        assert r.json()["error"].startswith(f"could not reach the provider at {s.openai_base_url}: ConnectError")
        deadline = time.monotonic() + 10
        while not (rows := services.ch.query("SELECT status, model, error FROM request_events FINAL")):
            assert time.monotonic() < deadline
            time.sleep(0.05)
    assert rows[0]["status"] == 502 and rows[0]["model"] == "gpt-4o" and rows[0]["error"].startswith("could not reach")
    services.pg.close()


def test_upstream_drop_mid_stream_logs_partial_error(proxied: Proxied) -> None:
    proxied.fake.drop_stream_after(chunks=2)
    with pytest.raises((httpx.RemoteProtocolError, openai.APIError, Exception)):
        list(proxied.openai().chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "a long answer please with many words"}],
            stream=True))
    (row,) = proxied.events(1)
    assert row["status"] == 200 and row["stream"] is True
    assert row["error"].startswith("the provider connection broke mid-response")
    assert row["response_body"].count("data:") == 2


def test_client_disconnect_mid_stream_cancels_upstream(proxied: Proxied) -> None:
    release = proxied.fake.hold_stream()
    with httpx.Client(timeout=10) as client, client.stream(
        "POST", f"{proxied.url}/openai/v1/chat/completions", headers=proxied.headers(),
        json={"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "go"}]},
    ) as r:
        next(r.iter_raw())
    # the client is gone while the provider still holds the rest back: the proxy logs it and cancels upstream
    (row,) = proxied.events(1)
    assert row["error"] == "the client disconnected before the response finished"
    assert row["stream"] is True and row["response_body"].count("data:") == 1
    deadline = time.monotonic() + 10
    while proxied.fake.cancelled_streams == 0:
        assert time.monotonic() < deadline, "the provider's stream was not cancelled"
        time.sleep(0.02)
    release.set()
