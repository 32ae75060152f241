"""Cache, retries, fallbacks, rate limits and budgets on the proxy, through the real openai SDK."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import openai
import pytest

from llmlens.settings import Settings
from tests.fake_provider import FakeProvider
from tests.proxied import Proxied, running

MSG = [{"role": "user", "content": "cache me if you can"}]


def chat(p: Proxied, **headers: str) -> Any:
    before = logged(p)
    resp = p.openai(**headers).chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MSG)
    settled(p, before)
    return resp


def logged(p: Proxied) -> float:
    return sum(p.services.metrics.events_accepted._values.values())


def settled(p: Proxied, before: float) -> None:
    """Wait until the proxy has logged the call and finished its off-path work (cache save, budget charge)."""
    deadline = time.monotonic() + 10
    while (logged(p) <= before or any(not t.done() for t in p.proxy_tasks())) and time.monotonic() < deadline:
        time.sleep(0.01)


def provider_calls(fake: FakeProvider) -> int:
    return sum(1 for r in fake.requests if r.path == "/v1/chat/completions")


def test_cache_hit_is_served_without_the_provider_and_logged_as_saved(proxied: Proxied) -> None:
    first = chat(proxied, **{"Helicone-Cache-Enabled": "true"})
    second = chat(proxied, **{"Helicone-Cache-Enabled": "true"})
    assert (first.headers["helicone-cache"], second.headers["helicone-cache"]) == ("MISS", "HIT")
    assert second.headers["helicone-cache-bucket-idx"] == "0"
    assert second.parse().choices[0].message.content == first.parse().choices[0].message.content
    assert provider_calls(proxied.fake) == 1
    rows = proxied.events(2)
    assert [(r["cache_hit"], r["cost_source"]) for r in rows] == [(False, "registry"), (True, "cache")]
    assert rows[1]["cost_nanos"] == 0 and rows[1]["cache_saved_nanos"] == rows[0]["cost_nanos"] > 0
    assert rows[1]["prompt_tokens"] == rows[0]["prompt_tokens"]


def test_streamed_responses_are_cached_and_replayed_as_streams(proxied: Proxied) -> None:
    client = proxied.openai(**{"Helicone-Cache-Enabled": "true"})
    texts = []
    for _ in range(2):
        before = logged(proxied)
        stream = client.chat.completions.create(model="gpt-4o-mini", messages=MSG, stream=True)
        texts.append("".join(c.choices[0].delta.content or "" for c in stream if c.choices))
        settled(proxied, before)
    assert texts[0] == texts[1] != ""
    assert provider_calls(proxied.fake) == 1
    rows = proxied.events(2)
    assert [(r["stream"], r["cache_hit"]) for r in rows] == [(True, False), (True, True)]


def test_cache_is_isolated_between_keys_seeds_and_bodies(proxied: Proxied) -> None:
    other_key = proxied.services.control.create_key("other")[1]
    on = {"Helicone-Cache-Enabled": "true"}
    chat(proxied, **on)
    assert chat(proxied, **on, **{"Helicone-Auth": f"Bearer {other_key}"}).headers["helicone-cache"] == "MISS"
    assert chat(proxied, **on, **{"Helicone-Cache-Seed": "s1"}).headers["helicone-cache"] == "MISS"
    assert chat(proxied, **on).headers["helicone-cache"] == "HIT"
    assert provider_calls(proxied.fake) == 3


def test_ignore_keys_bucket_size_and_expiry(proxied: Proxied) -> None:
    h = {"Helicone-Cache-Enabled": "true", "Helicone-Cache-Ignore-Keys": "user", "Helicone-Cache-Bucket-Max-Size": "2"}
    client = proxied.openai(**h)
    got = []
    for i in range(4):
        before = logged(proxied)
        got.append(client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MSG, user=f"u{i}"))
        settled(proxied, before)
    assert [r.headers["helicone-cache"] for r in got] == ["MISS", "MISS", "HIT", "HIT"]
    assert {r.headers["helicone-cache-bucket-idx"] for r in got[2:]} <= {"0", "1"}
    assert provider_calls(proxied.fake) == 2
    short = {"Helicone-Cache-Enabled": "true", "Cache-Control": "max-age=1"}
    assert chat(proxied, **short, **{"Helicone-Cache-Seed": "exp"}).headers["helicone-cache"] == "MISS"
    time.sleep(1.2)  # let the entry expire (max-age=1)
    assert chat(proxied, **short, **{"Helicone-Cache-Seed": "exp"}).headers["helicone-cache"] == "MISS"
    assert proxied.services.pg.fetchone("SELECT count(*) AS n FROM cache_entries")["n"] == 3  # type: ignore[index]


def test_bad_cache_headers_are_400(proxied: Proxied) -> None:
    r = httpx.post(f"{proxied.url}/openai/v1/chat/completions", json={"model": "m"}, headers={
        **proxied.headers(), "Helicone-Cache-Enabled": "true", "Helicone-Cache-Bucket-Max-Size": "50"})
    assert (r.status_code, r.json()) == (400, {"error": "Helicone-Cache-Bucket-Max-Size must be an integer from 1 to 20, not '50'"})
    assert provider_calls(proxied.fake) == 0


FAST_RETRY = {"Helicone-Retry-Enabled": "true", "Helicone-Retry-Num": "3", "Helicone-Retry-Min-Timeout": "1",
              "Helicone-Retry-Max-Timeout": "5"}


def test_retries_succeed_after_429_and_500(proxied: Proxied) -> None:
    proxied.fake.fail_next(429, {"retry-after": "0"}, times=1)
    proxied.fake.fail_next(503, times=1)
    resp = chat(proxied, **FAST_RETRY)
    assert resp.http_response.status_code == 200
    assert provider_calls(proxied.fake) == 3
    (row,) = proxied.events(1)
    assert (row["status"], row["attempts"]) == (200, 3)


def test_retries_give_up_after_the_limit(proxied: Proxied) -> None:
    proxied.fake.fail_next(500, times=10)
    with pytest.raises(openai.InternalServerError):
        chat(proxied, **FAST_RETRY)
    assert provider_calls(proxied.fake) == 4  # the call and 3 retries
    (row,) = proxied.events(1)
    assert (row["status"], row["attempts"]) == (500, 4)


def test_fallback_to_a_second_target(settings: Settings, fake: FakeProvider) -> None:
    fallbacks = lambda second: json.dumps([  # noqa: E731
        {"target-url": fake.url, "onCodes": [429, {"from": 500, "to": 599}]},
        {"target-url": second, "headers": {"authorization": "Bearer sk-second"},
         "bodyKeyOverride": {"model": "gpt-4o"}},
    ])
    with FakeProvider() as second, running(settings, fake, second) as p:
        fake.fail_next(503, times=1)
        r = httpx.post(f"{p.url}/openai/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": MSG},
                       headers={**p.headers(), "Helicone-Fallbacks": fallbacks(second.url)})
        assert (r.status_code, r.headers["helicone-fallback-index"]) == (200, "1")
        sent = second.requests[-1]
        assert (dict(sent.headers)["authorization"], sent.json()["model"]) == ("Bearer sk-second", "gpt-4o")
        (row,) = p.events(1)
        assert (row["attempts"], row["target_url"], row["model"]) == (2, second.url, "gpt-4o-2024-07-18")
        # a target off the allow-list is refused before anything is sent
        r = httpx.post(f"{p.url}/openai/v1/chat/completions", json={"model": "m"},
                       headers={**p.headers(), "Helicone-Fallbacks": fallbacks("http://10.1.2.3")})
        assert (r.status_code, r.json()) == (403, {
            "error": "Helicone-Fallbacks target-url host '10.1.2.3' is not in LLMLENS_GATEWAY_ALLOWED_HOSTS"})
        r = httpx.post(f"{p.url}/openai/v1/chat/completions", json={"model": "m"},
                       headers={**p.headers(), "Helicone-Fallbacks": "[{}]"})
        assert (r.status_code, r.json()) == (400, {"error": 'Helicone-Fallbacks[0] needs a "target-url" string'})


@pytest.mark.parametrize(("policy", "error"), [
    ("ten;w=60", "Helicone-RateLimit-Policy 'ten;w=60' is not '<quota>;w=<seconds>[;u=request|cents][;s=user|<property>]'"),
    ("10;w=5", "Helicone-RateLimit-Policy '10;w=5': the window must be 60 to 31536000 seconds"),
    ("0;w=60", "Helicone-RateLimit-Policy '0;w=60': the quota must be above 0"),
    ("10;w=60;u=dollars", "Helicone-RateLimit-Policy '10;w=60;u=dollars' is not '<quota>;w=<seconds>[;u=request|cents][;s=user|<property>]'"),
])
def test_invalid_rate_limit_policies_are_400(proxied: Proxied, policy: str, error: str) -> None:
    r = httpx.post(f"{proxied.url}/openai/v1/chat/completions", json={"model": "m"},
                   headers={**proxied.headers(), "Helicone-RateLimit-Policy": policy})
    assert (r.status_code, r.json()) == (400, {"error": error})


def test_rate_limit_per_user_segments_and_reset(proxied: Proxied) -> None:
    now = [1_800_000_000.0]
    proxied.services.limits.clock = lambda: now[0]
    policy = {"Helicone-RateLimit-Policy": "2;w=60;s=user"}

    def call(user: str) -> httpx.Response:
        return httpx.post(f"{proxied.url}/openai/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": MSG},
                          headers={**proxied.headers(), **policy, "Helicone-User-Id": user})

    first, second, third = call("alice"), call("alice"), call("alice")
    assert [first.status_code, second.status_code, third.status_code] == [200, 200, 429]
    assert (first.headers["helicone-ratelimit-limit"], first.headers["helicone-ratelimit-remaining"],
            second.headers["helicone-ratelimit-remaining"], first.headers["helicone-ratelimit-policy"]) == (
        "2", "1", "0", "2;w=60;u=request;s=user")
    assert third.json() == {"error": "rate limit exceeded: 2;w=60;s=user (user 'alice'); retry in 30 s"}
    assert (third.headers["helicone-ratelimit-remaining"], third.headers["helicone-ratelimit-reset"],
            third.headers["retry-after"]) == ("0", "30", "30")
    assert call("bob").status_code == 200  # another segment
    assert provider_calls(proxied.fake) == 3
    now[0] += 30  # one token refills (2 per 60 s)
    assert call("alice").status_code == 200
    assert call("alice").status_code == 429
    rows = proxied.events(6)
    assert sorted(r["status"] for r in rows) == [200, 200, 200, 200, 429, 429]


def test_saved_policy_and_budget_refusal(proxied: Proxied) -> None:
    auth = {"Authorization": f"Bearer {proxied.key}"}
    r = httpx.post(f"{proxied.url}/api/v1/budgets", headers=auth,
                   json={"scope": "user", "value": "u42", "period": "day", "limit_usd": "0.000001"})
    assert r.status_code == 201, r.text
    budget = r.json()
    assert budget == {"id": budget["id"], "scope": "user", "property": None, "value": "u42", "period": "day",
                      "limit_usd": "0.000001000"}
    assert httpx.post(f"{proxied.url}/api/v1/budgets", headers=auth, json={"scope": "team"}).json() == {
        "error": "scope must be 'key', 'user' or 'property'"}
    chat(proxied)  # spends more than $0.000001
    deadline = time.monotonic() + 10
    while proxied.services.pg.fetchone("SELECT count(*) AS n FROM budget_spend")["n"] == 0:  # type: ignore[index]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    with pytest.raises(openai.RateLimitError) as info:
        chat(proxied)
    message = info.value.body["error"] if isinstance(info.value.body, dict) else str(info.value.body)  # type: ignore[index]
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%dT00:00:00Z")
    assert message == f"the daily budget of $0.000001 for user 'u42' is spent; it resets at {tomorrow}"
    assert provider_calls(proxied.fake) == 1
    # a saved policy applies without any header
    r = httpx.post(f"{proxied.url}/api/v1/rate-limits", headers=auth, json={"policy": "1;w=60;s=team", "name": "team"})
    assert r.status_code == 201
    assert httpx.post(f"{proxied.url}/api/v1/rate-limits", headers=auth, json={"policy": "x"}).status_code == 400
