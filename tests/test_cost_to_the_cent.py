"""Cost at ingest, coverage of unpriced traffic, overrides and repricing, against real chDB."""

from __future__ import annotations

import dataclasses
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx

from ingest.reprice import reprice
from llmlens.app import Services, create_app, open_services
from llmlens.settings import Settings
from pricing.prices import PriceBook, usd_from_nanos
from tests.servers import serve

OVERRIDES = """
[[price]]
provider = "acme"
model = "acme-large"
input_per_mtok = "2.50"
output_per_mtok = "10.00"

[[price]]
model = "ft:gpt-4o-mini:acme:*"
input_per_mtok = "0.30"
output_per_mtok = "1.20"
"""


def wait_rows(services: Services, n: int, sql: str) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 15
    while len(rows := services.ch.query(sql)) < n and time.monotonic() < deadline:
        time.sleep(0.05)
    return rows


def test_unknown_price_is_null_counted_in_coverage_then_repriced(tmp_path: Path, settings: Settings) -> None:
    services = open_services(settings)  # no overrides yet: acme-large has no price
    key = services.control.create_key("k")[1]
    auth = {"Authorization": f"Bearer {key}"}
    events = [
        {"request_id": "a1", "created_at": "2026-11-10T10:00:00Z", "provider": "acme", "model": "acme-large",
         "prompt_tokens": 1_000_000, "completion_tokens": 100_000},
        {"request_id": "a2", "created_at": "2026-11-10T11:00:00Z", "provider": "acme", "model": "acme-large",
         "prompt_tokens": 2_000, "completion_tokens": 500},
        {"request_id": "p1", "created_at": "2026-11-10T12:00:00Z", "provider": "acme", "model": "acme-large",
         "prompt_tokens": 10, "completion_tokens": 10, "cost_usd": "0.5"},
        {"request_id": "f1", "created_at": "2026-11-11T12:00:00Z", "provider": "openai",
         "model": "ft:gpt-4o-mini:acme:xyz", "prompt_tokens": 10_000, "completion_tokens": 1_000},
    ]
    with serve(create_app(settings, services)) as url:
        assert httpx.post(f"{url}/api/v1/logs", json=events, headers=auth).status_code == 202
        rows = wait_rows(services, 4, "SELECT request_id, cost_nanos, cost_source FROM request_events FINAL ORDER BY request_id")
        assert rows == [
            {"request_id": "a1", "cost_nanos": None, "cost_source": ""},
            {"request_id": "a2", "cost_nanos": None, "cost_source": ""},
            {"request_id": "f1", "cost_nanos": None, "cost_source": ""},
            {"request_id": "p1", "cost_nanos": 500_000_000, "cost_source": "provided"},
        ]
        cov = httpx.get(f"{url}/api/v1/pricing/coverage", headers=auth).json()
        assert cov == {
            "events": 4, "unpriced_events": 3, "unpriced_event_share": 0.75,
            "tokens": 1_113_520, "unpriced_tokens": 1_113_500, "unpriced_token_share": round(1_113_500 / 1_113_520, 6),
            "unpriced_models": [
                {"provider": "acme", "model": "acme-large", "events": 2, "tokens": 1_102_500},
                {"provider": "openai", "model": "ft:gpt-4o-mini:acme:xyz", "events": 1, "tokens": 11_000},
            ],
        }
        listed = httpx.get(f"{url}/api/v1/requests", headers=auth).json()["data"]
        assert {r["request_id"]: r["cost_usd"] for r in listed} == {"a1": None, "a2": None, "f1": None, "p1": "0.500000000"}
    services.pg.close()

    prices_file = tmp_path / "prices.toml"
    prices_file.write_text(OVERRIDES)
    book = PriceBook.load(prices_file)
    first = reprice(services.ch, book)
    assert (first.scanned, first.changed) == (3, 3)
    rows = services.ch.query("SELECT request_id, cost_nanos, cost_source FROM request_events FINAL ORDER BY request_id")
    assert rows == [
        # 1M input at $2.50/M + 100k output at $10/M = $3.50
        {"request_id": "a1", "cost_nanos": 3_500_000_000, "cost_source": "override"},
        # 2000 * 2.5 / 1e6 + 500 * 10 / 1e6 = 0.005 + 0.005
        {"request_id": "a2", "cost_nanos": 10_000_000, "cost_source": "override"},
        # 10000 * 0.30 / 1e6 + 1000 * 1.20 / 1e6 = 0.003 + 0.0012
        {"request_id": "f1", "cost_nanos": 4_200_000, "cost_source": "override"},
        {"request_id": "p1", "cost_nanos": 500_000_000, "cost_source": "provided"},
    ]
    second = reprice(services.ch, book)
    assert (second.scanned, second.changed) == (3, 0)
    assert services.ch.query("SELECT count() AS n FROM request_events FINAL") == [{"n": 4}]

    # New events are priced at ingest with the override.
    s2 = dataclasses.replace(settings, prices_file=prices_file)
    services2 = open_services(s2)
    with serve(create_app(s2, services2)) as url:
        httpx.post(f"{url}/api/v1/logs", headers=auth, json=[
            {"request_id": "a3", "provider": "acme", "model": "acme-large", "prompt_tokens": 4, "completion_tokens": 1}])
        rows = wait_rows(services2, 5, "SELECT request_id, cost_nanos FROM request_events FINAL WHERE request_id = 'a3'")
        assert rows == [{"request_id": "a3", "cost_nanos": 20_000}]  # (4 * 2.50 + 1 * 10.00) / 1e6 USD
    services2.pg.close()


def test_a_million_costs_sum_exactly(services: Services) -> None:
    n = 1_000_000
    # Awkward amounts (sub-cent, nine significant digits): float sums would drift; integers must not.
    services.ch.command(
        "INSERT INTO request_events (org_id, created_at, request_id, source, model, cost_nanos) "
        "SELECT 'o', toDateTime64('2026-11-01 00:00:00', 3) + number, toString(number), 'async', 'm', "
        f"(number * 7919 + 13) % 1000000007 FROM numbers({n})"
    )
    expected = sum((i * 7919 + 13) % 1000000007 for i in range(n))
    (row,) = services.ch.query("SELECT sum(cost_nanos) AS total, count() AS n FROM request_events FINAL WHERE org_id = 'o'")
    assert (int(row["total"]), row["n"]) == (expected, n)
    assert Decimal(usd_from_nanos(int(row["total"]))) == Decimal(expected) / Decimal(10**9)
