"""Scores, feedback and properties after the fact (Helicone's shapes), and what reads them: the request, the
explorer's score filter, the properties panel, averages per group; a scored request still counts once."""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest

from llmlens.app import Services, create_app, open_services
from llmlens.settings import Settings
from tests.fake_provider import FakeProvider
from tests.proxied import running
from tests.servers import serve


def json_error(body: bytes) -> str:
    try:
        orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return str(exc)
    raise AssertionError("valid JSON")


def iso(minutes_ago: int) -> str:
    return (datetime.now(UTC) - timedelta(minutes=minutes_ago)).strftime("%Y-%m-%dT%H:%M:%S.000Z")


# r0..r4 oldest first; session s1 is r0, r1, r2 (its earliest request is r0)
SEED = [
    {"request_id": f"r{i}", "created_at": iso(10 - i), "model": model, "provider": "openai", "status": 200,
     "user_id": user, "session_id": session, "prompt_id": "answer" if version else "", "prompt_version": version,
     "cost_usd": cost, "prompt_tokens": 100, "completion_tokens": 10, "properties": {"team": team}}
    for i, (model, user, session, version, team, cost) in enumerate([
        ("gpt-4o", "alice", "s1", "1", "search", "0.010000000"),
        ("gpt-4o", "alice", "s1", "2", "search", "0.020000000"),
        ("gpt-4o-mini", "bob", "s1", "2", "chat", "0.003000000"),
        ("gpt-4o-mini", "bob", "s2", "", "chat", "0.004000000"),
        ("gpt-4o", "carol", "", "1", "search", "0.005000000"),
    ])
]


@dataclasses.dataclass
class Api:
    url: str
    key: str
    services: Services

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def score(self, request_id: str, body: Any, key: str | None = None) -> httpx.Response:
        return self._send("POST", f"/v1/request/{request_id}/score", body, key)

    def feedback(self, request_id: str, body: Any) -> httpx.Response:
        return self._send("POST", f"/v1/request/{request_id}/feedback", body)

    def prop(self, request_id: str, body: Any) -> httpx.Response:
        return self._send("PUT", f"/v1/request/{request_id}/property", body)

    def session_feedback(self, session_id: str, body: Any) -> httpx.Response:
        return self._send("POST", f"/v1/session/{session_id}/feedback", body)

    def _send(self, method: str, path: str, body: Any, key: str | None = None) -> httpx.Response:
        headers = {"Helicone-Auth": f"Bearer {key or self.key}"}
        if isinstance(body, bytes):
            return httpx.request(method, self.url + path, content=body, headers=headers, timeout=30)
        return httpx.request(method, self.url + path, json=body, headers=headers, timeout=30)

    def get(self, path: str, **params: str) -> Any:
        r = httpx.get(self.url + path, params=params, headers=self.auth, timeout=30)
        assert r.status_code == 200, r.text
        return r.json()

    def scores_of(self, request_id: str) -> dict[str, int]:
        return self.get(f"/api/v1/requests/{request_id}")["scores"]  # type: ignore[no-any-return]

    def ids(self, **params: str) -> list[str]:
        return [r["request_id"] for r in self.get("/api/v1/requests", **params)["data"]]

    def stored_rows(self) -> int:
        """Every stored version, before ReplacingMergeTree merges them."""
        return int(self.services.ch.query("SELECT count() AS n FROM request_events")[0]["n"])


def post_logs(api: Api, events: list[dict[str, Any]]) -> None:
    r = httpx.post(f"{api.url}/api/v1/logs", json=events, headers=api.auth)
    assert r.status_code == 202, r.text


@pytest.fixture
def api(server: str, api_key: str, services: Services) -> Api:
    a = Api(server, api_key, services)
    post_logs(a, SEED)
    deadline = time.monotonic() + 15
    while len(a.ids()) < len(SEED):
        assert time.monotonic() < deadline, "events did not arrive"
        time.sleep(0.05)
    return a


def test_scores_round_trip_merge_and_overwrite(api: Api) -> None:
    r = api.score("r0", {"scores": {"quality": 8, "helpful": True, "toxic": False}})
    assert (r.status_code, r.json()) == (200, {"data": {"request_id": "r0", "scores": {"quality": 8, "helpful": 1,
                                                                                     "toxic": 0}}, "error": None})
    assert api.scores_of("r0") == {"quality": 8, "helpful": 1, "toxic": 0}
    # same name overwrites, new names join, the others stay
    assert api.score("r0", {"scores": {"quality": 3, "edge-max": 2**63 - 1, "edge-min": -(2**63)}}).status_code == 200
    assert api.scores_of("r0") == {"quality": 3, "helpful": 1, "toxic": 0, "edge-max": 2**63 - 1, "edge-min": -(2**63)}
    assert api.scores_of("r1") == {}
    # everything else about the request is untouched
    got = api.get("/api/v1/requests/r0")
    sent = SEED[0]
    assert {k: got[k] for k in sent} == sent


def test_concurrent_scores_on_one_request_all_land(api: Api) -> None:
    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda i: api.score("r2", {"scores": {f"judge-{i}": i}}).status_code, range(16)))
    assert codes == [200] * 16
    assert api.scores_of("r2") == {f"judge-{i}": i for i in range(16)}


def test_feedback_is_helicones_score(api: Api) -> None:
    r = api.feedback("r1", {"rating": True})
    assert (r.status_code, r.json()) == (200, {"data": {"request_id": "r1", "rating": True}, "error": None})
    assert api.scores_of("r1") == {"helicone-score-feedback": 1}
    assert api.feedback("r1", {"rating": False}).status_code == 200
    assert api.scores_of("r1") == {"helicone-score-feedback": 0}


def test_property_set_later_is_filterable_and_in_the_properties_panel(api: Api) -> None:
    value = 'said "hi" \\ back\ttab'
    r = api.prop("r3", {"key": "reviewed", "value": value})
    assert (r.status_code, r.json()) == (200, {"data": {"request_id": "r3", "key": "reviewed", "value": value},
                                              "error": None})
    assert api.get("/api/v1/requests/r3")["properties"] == {"team": "chat", "reviewed": value}
    assert api.ids(**{"property.reviewed": value}) == ["r3"]
    assert api.prop("r3", {"key": "team", "value": "search"}).status_code == 200  # overwrite an ingested one
    assert api.ids(**{"property.team": "chat"}) == ["r2"]
    assert api.get("/api/v1/properties", range="1h")["keys"] == ["team", "reviewed"]
    values = api.get("/api/v1/properties/reviewed", range="1h")["values"]
    assert [(v["value"], v["requests"], v["cost_usd"]) for v in values] == [(value, 1, "0.004000000")]


def test_session_feedback_lands_once_per_session(api: Api) -> None:
    r = api.session_feedback("s1", {"rating": False})
    assert (r.status_code, r.json()) == (200, {"data": {"session_id": "s1", "rating": False, "request_id": "r0"},
                                              "error": None})
    assert api.get("/api/v1/requests/r0")["properties"] == {"team": "search", "helicone-session-feedback": "0"}
    assert api.scores_of("r0") == {"helicone-session-feedback": 0}
    # a new rating replaces the old one on the same request; the session's other requests stay unrated
    assert api.session_feedback("s1", {"rating": True}).json()["data"]["request_id"] == "r0"
    assert [api.scores_of(i) for i in ("r0", "r1", "r2")] == [{"helicone-session-feedback": 1}, {}, {}]
    assert api.session_feedback("s2", {"rating": False}).json()["data"]["request_id"] == "r3"
    by_session = api.get("/api/v1/scores", by="session", range="1h")["data"]
    assert [(g["value"], g["requests"], g["scores"]) for g in by_session] == [
        ("s1", 3, {"helicone-session-feedback": {"avg": 1.0, "count": 1}}),
        ("s2", 1, {"helicone-session-feedback": {"avg": 0.0, "count": 1}})]
    # by user, each rated session counts once: alice rated 1 (s1), bob rated 0 (s2)
    by_user = api.get("/api/v1/scores", by="user", range="1h")["data"]
    assert [(g["value"], g["scores"]) for g in by_user] == [
        ("alice", {"helicone-session-feedback": {"avg": 1.0, "count": 1}}),
        ("bob", {"helicone-session-feedback": {"avg": 0.0, "count": 1}})]
    assert api.ids(**{"property.helicone-session-feedback": "1"}) == ["r0"]
    r = api.session_feedback("nope", {"rating": True})
    assert (r.status_code, r.json()) == (404, {"error": "no session 'nope' in this org"})


def test_averages_per_group_are_exact(api: Api) -> None:
    for request_id, scores in [("r0", {"quality": 8, "cost-ok": 1}), ("r1", {"quality": 7}), ("r2", {"quality": 2}),
                               ("r3", {"quality": 1, "cost-ok": 0}), ("r4", {"quality": 10})]:
        assert api.score(request_id, {"scores": scores}).status_code == 200
    by_user = api.get("/api/v1/scores", by="user", range="1h")
    assert by_user == {"by": "user", "data": [
        {"value": "alice", "requests": 2, "scored": 2,
         "scores": {"cost-ok": {"avg": 1.0, "count": 1}, "quality": {"avg": 7.5, "count": 2}}},
        {"value": "bob", "requests": 2, "scored": 2,
         "scores": {"cost-ok": {"avg": 0.0, "count": 1}, "quality": {"avg": 1.5, "count": 2}}},
        {"value": "carol", "requests": 1, "scored": 1, "scores": {"quality": {"avg": 10.0, "count": 1}}},
    ]}
    by_model = api.get("/api/v1/scores", by="model", range="1h")["data"]
    assert [(g["value"], g["scores"]["quality"]) for g in by_model] == [
        ("gpt-4o", {"avg": 25 / 3, "count": 3}), ("gpt-4o-mini", {"avg": 1.5, "count": 2})]
    by_version = api.get("/api/v1/scores", by="prompt_version", range="1h")["data"]
    assert [(g["prompt_id"], g["value"], g["scores"]["quality"]) for g in by_version] == [
        ("answer", "1", {"avg": 9.0, "count": 2}), ("answer", "2", {"avg": 4.5, "count": 2})]
    by_team = api.get("/api/v1/scores", **{"by": "property.team", "range": "1h"})["data"]
    assert [(g["value"], g["scores"]["quality"]) for g in by_team] == [
        ("search", {"avg": 25 / 3, "count": 3}), ("chat", {"avg": 1.5, "count": 2})]
    # filters narrow the averaged set, as on every panel
    assert api.get("/api/v1/scores", by="user", range="1h", model="gpt-4o-mini")["data"][0]["scores"]["quality"] == {
        "avg": 1.5, "count": 2}
    # sums are exact far beyond what a Float64 or Int64 sum could hold
    api.score("r0", {"scores": {"big": 2**63 - 1}})
    api.score("r1", {"scores": {"big": 2**63 - 1}})
    alice = api.get("/api/v1/scores", by="user", range="1h")["data"][0]
    assert alice["scores"]["big"] == {"avg": float(2**63 - 1), "count": 2}
    r = httpx.get(f"{api.url}/api/v1/scores", params={"by": "colour"}, headers=api.auth)
    assert (r.status_code, r.json()) == (400, {"error": "by must be model, prompt_version, session, user or "
                                                        "property.<key>, not 'colour'"})


def test_score_filter_in_the_explorer(api: Api) -> None:
    api.score("r0", {"scores": {"quality": 8}})
    api.score("r2", {"scores": {"quality": 0}})
    assert api.ids(**{"score.quality": "8"}) == ["r0"]
    assert api.ids(**{"score.quality": "0"}) == ["r2"]  # an unscored request is not a 0
    assert api.ids(**{"score.quality": "8", "user_id": "bob"}) == []
    for params, error in [({"score.quality": "high"}, "score.quality 'high' is not an integer"),
                          ({"score.": "1"}, "score filter needs a name: score.<name>=<integer>"),
                          ({"score.q": str(2**63)}, f"score.q '{2**63}' is outside the range of a 64-bit integer")]:
        r = httpx.get(f"{api.url}/api/v1/requests", params=params, headers=api.auth)
        assert (r.status_code, r.json()) == (400, {"error": error})


def test_scoring_does_not_double_count(api: Api) -> None:
    before = api.get("/api/v1/overview", range="1h")["kpis"]
    assert (before["requests"], before["cost_usd"]) == (5, "0.042000000")
    for i in range(5):
        api.score(f"r{i}", {"scores": {"quality": i}})
        api.feedback(f"r{i}", {"rating": True})
        api.prop(f"r{i}", {"key": "reviewed", "value": "yes"})
    api.session_feedback("s1", {"rating": True})
    assert api.stored_rows() > 5  # the versions are there, unmerged ...
    assert api.get("/api/v1/overview", range="1h")["kpis"] == before  # ... and every panel reads one per request
    assert sorted(api.ids()) == ["r0", "r1", "r2", "r3", "r4"]
    assert [(u["user_id"], u["requests"]) for u in api.get("/api/v1/users", range="1h")["data"]] == [
        ("alice", 2), ("bob", 2), ("carol", 1)]


def test_unknown_and_foreign_ids_are_404_and_store_nothing(api: Api) -> None:
    other = api.services.control.create_key("other", org_id="org-b")[1]
    rows = api.stored_rows()
    r = api.score("missing", {"scores": {"quality": 1}})
    assert (r.status_code, r.json()) == (404, {"error": "no request 'missing' in this org"})
    r = api.score("r0", {"scores": {"quality": 1}}, key=other)
    assert (r.status_code, r.json()) == (404, {"error": "no request 'r0' in this org"})
    assert (api.feedback("missing", {"rating": True}).status_code, api.prop("missing", {"key": "k", "value": "v"})
            .status_code) == (404, 404)
    r = httpx.post(f"{api.url}/v1/session/s1/feedback", json={"rating": True}, headers={"Helicone-Auth": f"Bearer {other}"})
    assert (r.status_code, r.json()) == (404, {"error": "no session 's1' in this org"})
    r = httpx.post(f"{api.url}/v1/request/r0/score", json={"scores": {"quality": 1}})
    assert (r.status_code, r.json()) == (401, {"error": "Helicone-Auth or Authorization header is missing; "
                                                        "expected 'Bearer <llmlens API key>'"})
    assert api.stored_rows() == rows
    assert api.scores_of("r0") == {}


@pytest.mark.parametrize(
    ("route", "body", "error"),
    [
        ("score", b"", 'the body is empty; expected {"scores": {"name": 1}}'),
        ("score", b"{nope", f"the body is not valid JSON: {json_error(b'{nope')}"),
        ("score", [1], 'expected a JSON object like {"scores": {"name": 1}}'),
        ("score", {}, 'scores is missing; expected {"scores": {"name": 1}}'),
        ("score", {"scores": {"q": 1}, "extra": 1}, "unknown field 'extra'; expected {\"scores\": {\"name\": 1}}"),
        ("score", {"scores": [1]}, "scores must be an object of names to integers or booleans, not an array"),
        ("score", {"scores": {}}, "scores is empty; send at least one name"),
        ("score", {"scores": {"": 1}}, "scores has an empty name; score names must be non-empty"),
        ("score", {"scores": {"  ": 1}}, "scores has an empty name; score names must be non-empty"),
        ("score", {"scores": {"x" * 257: 1}}, f"scores has a name longer than 256 characters: {'x' * 40!r}..."),
        ("score", {"scores": {"quality": 0.5}}, "scores.quality must be an integer or a boolean, not 0.5; "
                                                "scale fractions (75 for 0.75)"),
        ("score", {"scores": {"quality": 1.0}}, "scores.quality must be an integer or a boolean, not 1.0; "
                                                "scale fractions (75 for 0.75)"),
        ("score", {"scores": {"quality": "7"}}, "scores.quality must be an integer or a boolean, not '7'; "
                                                "scale fractions (75 for 0.75)"),
        ("score", {"scores": {"quality": None}}, "scores.quality must be an integer or a boolean, not None; "
                                                 "scale fractions (75 for 0.75)"),
        ("score", {"scores": {"quality": 2**63}}, "scores.quality is outside the range of a 64-bit integer"),
        ("score", b'{"scores": {"quality": 100000000000000000000}}', "scores.quality is outside the range of a "
                                                                      "64-bit integer"),
        ("score", {"scores": {f"s{i}": 1 for i in range(101)}}, "scores has 101 names; the limit is 100 per request"),
        ("feedback", {"rating": 1}, "rating must be true or false, not 1"),
        ("feedback", {"rating": "yes"}, "rating must be true or false, not 'yes'"),
        ("feedback", {}, 'rating is missing; expected {"rating": true}'),
        ("session", {"rating": None}, "rating must be true or false, not None"),
        ("property", {"key": "k"}, 'value is missing; expected {"key": "name", "value": "text"}'),
        ("property", {"key": "", "value": "v"}, "key must be a non-empty string"),
        ("property", {"key": 3, "value": "v"}, "key must be a non-empty string, not a number"),
        ("property", {"key": "k" * 257, "value": "v"}, "key is longer than 256 characters"),
        ("property", {"key": "k", "value": 3}, "value must be a string, not a number"),
        ("property", {"key": "k", "value": "v" * 10_001}, "value is longer than 10000 characters"),
    ],
)
def test_bad_bodies_are_400_naming_the_field(api: Api, route: str, body: Any, error: str) -> None:
    rows = api.stored_rows()
    send = {"score": lambda: api.score("r0", body), "feedback": lambda: api.feedback("r0", body),
            "property": lambda: api.prop("r0", body), "session": lambda: api.session_feedback("s1", body)}[route]
    r = send()
    assert (r.status_code, r.json()) == (400, {"error": error})
    assert api.stored_rows() == rows


def test_oversized_body_is_413(api: Api) -> None:
    rows = api.stored_rows()
    body = b'{"scores": {"q": 1}, "pad": "' + b"x" * 70_000 + b'"}'
    r = api.score("r0", body)
    assert (r.status_code, r.json()) == (413, {"error": f"the body is {len(body)} bytes; the limit is 65536 bytes"})
    assert api.stored_rows() == rows


def test_request_detail_page_shows_scores(api: Api) -> None:
    api.score("r0", {"scores": {"quality": 8, "helpful": True}})
    api.services.control.create_user("ada@example.com", "correct horse battery")
    with httpx.Client(base_url=api.url) as client:
        token = re.search(r'name="csrf" value="([^"]+)"', client.get("/login").text).group(1)  # type: ignore[union-attr]
        assert client.post("/login", data={"email": "ada@example.com", "password": "correct horse battery",
                                           "csrf": token}).status_code == 303
        html = client.get("/requests/r0").text
        assert re.search(r'<dd id="scores"><span class="chip">helpful: 1</span><span class="chip">quality: 8</span></dd>',
                         html)
        assert re.search(r'<dd id="scores">none</dd>', client.get("/requests/r1").text)
        listed = client.get("/requests?range=1h&score.quality=8")
        assert listed.status_code == 200 and "/requests/r0" in listed.text and "/requests/r1" not in listed.text
        assert "score quality=8" in listed.text


@pytest.fixture
def slow_writer(settings: Settings) -> Iterator[Api]:
    """A writer that would hold events in the spool for a minute unless something flushes it."""
    s = dataclasses.replace(settings, batch_wait_s=60.0)
    services = open_services(s)
    try:
        with serve(create_app(s, services)) as url:
            yield Api(url, services.control.create_key("slow")[1], services)
    finally:
        services.pg.close()


def test_a_score_right_after_the_log_finds_it_in_the_spool(slow_writer: Api) -> None:
    post_logs(slow_writer, SEED[:1])
    assert slow_writer.stored_rows() == 0  # still in the spool
    assert slow_writer.score("r0", {"scores": {"quality": 9}}).status_code == 200
    assert slow_writer.scores_of("r0") == {"quality": 9}
    assert slow_writer.get("/api/v1/overview", range="1h")["kpis"]["requests"] == 1


def test_a_score_right_after_a_proxied_call(settings: Settings, fake: FakeProvider) -> None:
    with running(dataclasses.replace(settings, batch_wait_s=60.0), fake) as p:
        raw = p.openai().chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        request_id = raw.headers["helicone-id"]
        r = httpx.post(f"{p.url}/v1/request/{request_id}/feedback", json={"rating": True},
                       headers={"Helicone-Auth": f"Bearer {p.key}"})
        assert (r.status_code, r.json()) == (200, {"data": {"request_id": request_id, "rating": True}, "error": None})
        got = httpx.get(f"{p.url}/api/v1/requests/{request_id}", headers={"Helicone-Auth": f"Bearer {p.key}"}).json()
        assert (got["scores"], got["user_id"]) == ({"helicone-score-feedback": 1}, "u42")
