"""Fuzzing the log endpoints: arbitrary JSON never gets a 5xx, and a rejected body stores nothing."""

from __future__ import annotations

import time
from typing import Any

import httpx
import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmlens.app import Services

scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False) | st.text(max_size=20)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                           max_leaves=12)
time_values = st.one_of(st.dictionaries(st.sampled_from(["seconds", "milliseconds"]), scalars), st.text(max_size=30), scalars)
helicone_bodies = st.fixed_dictionaries(
    {},
    optional={
        "providerRequest": st.fixed_dictionaries({}, optional={"url": scalars, "json": json_values, "meta": json_values}) | json_values,
        "providerResponse": st.fixed_dictionaries({}, optional={
            "json": json_values, "textBody": scalars, "status": scalars, "headers": json_values, "cost": scalars}) | json_values,
        "timing": st.fixed_dictionaries({}, optional={"startTime": time_values, "endTime": time_values,
                                                     "timeToFirstToken": scalars}) | json_values,
        "provider": scalars,
    },
)
own_items = st.lists(st.dictionaries(st.sampled_from(
    ["request_id", "created_at", "model", "status", "latency_ms", "ttft_ms", "prompt_tokens", "cost_usd", "properties",
     "source", "stream", "user_id", "colour"]), json_values, max_size=6), max_size=4)
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def stored(services: Services) -> int:
    return int(services.ch.query("SELECT count() AS n FROM request_events")[0]["n"])


@FUZZ
@given(body=helicone_bodies)
def test_helicone_endpoint_fuzz(server: str, api_key: str, services: Services, body: Any) -> None:
    r = httpx.post(f"{server}/custom/v1/log", content=orjson.dumps(body), headers={"Authorization": f"Bearer {api_key}"})
    assert r.status_code < 500, (r.status_code, r.text)
    if r.status_code != 200:
        assert isinstance(r.json()["error"], str)


@FUZZ
@given(items=own_items)
def test_batch_endpoint_fuzz(server: str, api_key: str, items: Any) -> None:
    r = httpx.post(f"{server}/api/v1/logs", content=orjson.dumps(items), headers={"Authorization": f"Bearer {api_key}"})
    assert r.status_code < 500, (r.status_code, r.text)
    body = r.json()
    if r.status_code == 202:
        assert body["accepted"] + len(body["errors"]) == len(items)


@FUZZ
@given(blob=st.binary(max_size=200) | json_values.map(orjson.dumps))
def test_otlp_and_raw_bodies_fuzz(server: str, api_key: str, blob: bytes) -> None:
    for path, ctype in (("/v1/traces", "application/x-protobuf"), ("/v1/traces", "application/json"),
                        ("/oai/v1/log", "application/json")):
        r = httpx.post(f"{server}{path}", content=blob, headers={"Authorization": f"Bearer {api_key}", "Content-Type": ctype})
        assert r.status_code < 500, (path, r.status_code, r.text)


def test_rejected_inputs_store_nothing(server: str, api_key: str, services: Services) -> None:
    auth = {"Authorization": f"Bearer {api_key}"}
    bad = [b"{", b"[]", orjson.dumps({"providerRequest": 1}), orjson.dumps({"providerRequest": {}, "providerResponse": {"status": "x"}})]
    for body in bad:
        assert httpx.post(f"{server}/custom/v1/log", content=body, headers=auth).status_code == 400
        assert httpx.post(f"{server}/api/v1/logs", content=body, headers=auth).status_code in (400,)
    time.sleep(0.3)
    assert stored(services) == 0
