"""Rate-limit buckets are shared through PostgreSQL: several llmlens processes enforce one limit."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from ingest.limits import Limits, RateLimited, parse_policy
from llmlens.app import Services
from storage.postgres import Postgres


def test_two_processes_share_one_bucket(services: Services) -> None:
    # Two Limits on separate connection pools stand for two llmlens processes on one PostgreSQL.
    other = Postgres(services.pg.dsn)
    now = 1_800_000_000.0
    a, b = Limits(services.pg, clock=lambda: now), Limits(other, clock=lambda: now)
    policy = parse_policy("25;w=3600")

    def attempt(i: int) -> bool:
        try:
            (a if i % 2 else b).check(org_id="default", key_id="k", user_id="", properties={}, header_policy=policy)
            return True
        except RateLimited:
            return False

    with ThreadPoolExecutor(8) as pool:
        allowed = sum(pool.map(attempt, range(100)))
    other.close()
    assert allowed == 25


@pytest.mark.parametrize(("text", "parsed"), [
    ("1000;w=3600", ("1000", 3600, "request", "")),
    ("5000;w=86400;u=cents", ("5000", 86400, "cents", "")),
    ("100;w=60;s=user", ("100", 60, "request", "user")),
    ("2.5;w=60;u=REQUEST;s=Team", ("2.5", 60, "request", "team")),
])
def test_policy_grammar(text: str, parsed: tuple[str, int, str, str]) -> None:
    p = parse_policy(text)
    assert (str(p.quota), p.window_s, p.unit, p.segment) == parsed
