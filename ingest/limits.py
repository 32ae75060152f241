"""Rate limits (Helicone-RateLimit-Policy and saved policies) and hard budgets, enforced before the provider call.

Token buckets live in PostgreSQL and are refilled lazily inside one atomic statement, so several llmlens
processes sharing a PostgreSQL enforce one limit. Budgets keep their running spend per period in PostgreSQL.
Only requests that carry a policy, or whose org saved policies or budgets, touch PostgreSQL at all.
"""

from __future__ import annotations

import math
import re
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from ingest.errors import HttpError, IngestError
from storage.postgres import Postgres

# Helicone's grammar (worker/src/lib/rate-limit/policyParser.ts)
_POLICY = re.compile(r"^(\d+(?:\.\d+)?);w=(\d+)(?:;u=(request|cents))?(?:;s=([\w-]+))?$", re.I)
MIN_WINDOW, MAX_WINDOW = 60, 31_536_000
ORG_CACHE_S = 10.0


class RateLimited(HttpError):
    status = 429


@dataclass(frozen=True, slots=True)
class Policy:
    quota: Decimal
    window_s: int
    unit: str  # "request" | "cents"
    segment: str  # "" (global), "user", or a property name
    text: str

    @property
    def rate(self) -> float:
        return float(self.quota) / self.window_s


def parse_policy(text: str) -> Policy:
    m = _POLICY.match(text.strip())
    if not m:
        raise IngestError(f"Helicone-RateLimit-Policy {text!r} is not '<quota>;w=<seconds>[;u=request|cents][;s=user|<property>]'")
    quota, window = Decimal(m.group(1)), int(m.group(2))
    if quota <= 0:
        raise IngestError(f"Helicone-RateLimit-Policy {text!r}: the quota must be above 0")
    if not MIN_WINDOW <= window <= MAX_WINDOW:
        raise IngestError(f"Helicone-RateLimit-Policy {text!r}: the window must be {MIN_WINDOW} to {MAX_WINDOW} seconds")
    unit = (m.group(3) or "request").lower()
    segment = m.group(4) or ""
    return Policy(quota, window, unit, "user" if segment.lower() == "user" else segment.lower(), text.strip())


@dataclass(frozen=True, slots=True)
class Budget:
    id: str
    scope: str  # "key" | "user" | "property"
    scope_key: str
    scope_value: str
    period: str  # "day" | "month"
    limit_nanos: int

    def applies(self, key_id: str, user_id: str, properties: dict[str, str]) -> bool:
        if self.scope == "key":
            return key_id == self.scope_value
        if self.scope == "user":
            return user_id == self.scope_value
        return properties.get(self.scope_key) == self.scope_value

    def describe(self) -> str:
        who = {"key": f"API key {self.scope_value}", "user": f"user {self.scope_value!r}"}.get(
            self.scope, f"property {self.scope_key}={self.scope_value!r}")
        return f"the {'daily' if self.period == 'day' else 'monthly'} budget of ${Decimal(self.limit_nanos) / 10**9:f} for {who}"


def period_bounds(period: str, now: datetime) -> tuple[datetime, datetime]:
    if period == "day":
        start = now.replace(hour=0, minute=0, second=0, microsecond=0)
        return start, datetime.fromtimestamp(start.timestamp() + 86400, UTC)
    start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)
    return start, end


@dataclass(frozen=True, slots=True)
class _OrgRules:
    expires: float
    policies: dict[str, list[Policy]]  # by API key id; "" = every key of the org
    budgets: list[Budget]


@dataclass
class Verdict:
    """What the limits said about one request: headers to add, and what to settle after it."""

    headers: list[tuple[bytes, bytes]]
    cents_buckets: list[str]
    budgets: list[Budget]


class Limits:
    def __init__(self, pg: Postgres, clock: Any = time.time) -> None:
        self.pg = pg
        self.clock = clock
        self._org: dict[str, _OrgRules] = {}
        self._lock = threading.Lock()

    # --- saved policies and budgets (cached per org) ---------------------------------------------
    def _rules(self, org_id: str) -> _OrgRules:
        hit = self._org.get(org_id)
        if hit is None or hit.expires < time.monotonic():
            rows = self.pg.fetchall(
                "SELECT api_key_id, policy FROM rate_limit_policies WHERE org_id = %s ORDER BY created_at", (org_id,))
            budgets = [Budget(r["id"], r["scope"], r["scope_key"], r["scope_value"], r["period"], r["limit_nanos"])
                       for r in self.pg.fetchall("SELECT * FROM budgets WHERE org_id = %s ORDER BY created_at", (org_id,))]
            by_key: dict[str, list[Policy]] = {}
            for r in rows:
                by_key.setdefault(r["api_key_id"] or "", []).append(parse_policy(r["policy"]))
            hit = _OrgRules(time.monotonic() + ORG_CACHE_S, by_key, budgets)
            with self._lock:
                self._org[org_id] = hit
        return hit

    def has_rules(self, org_id: str) -> bool | None:
        """From memory: whether the org saved policies or budgets; None when that must be loaded first."""
        hit = self._org.get(org_id)
        if hit is None or hit.expires < time.monotonic():
            return None
        return bool(hit.policies or hit.budgets)

    def load(self, org_id: str) -> bool:
        rules = self._rules(org_id)
        return bool(rules.policies or rules.budgets)

    def forget(self, org_id: str) -> None:
        self._org.pop(org_id, None)

    # --- enforcement ---------------------------------------------------------------------------------
    def check(self, *, org_id: str, key_id: str, user_id: str, properties: dict[str, str],
              header_policy: Policy | None) -> Verdict:
        """Raise RateLimited (429, with Helicone-RateLimit-* headers) or return what to settle afterwards."""
        rules = self._rules(org_id)
        policies = rules.policies.get("", []) + rules.policies.get(key_id, [])
        budgets = rules.budgets
        if header_policy is not None:
            policies = [header_policy, *policies]
        now = self.clock()
        verdict = Verdict([], [], [])
        for pol in policies:
            if pol.segment == "user":
                seg, value = "user", user_id
            elif pol.segment:
                seg, value = "prop", properties.get(pol.segment, "")
                if not value:
                    continue  # requests without the property are not in any segment of this policy
            else:
                seg, value = "global", ""
            key = f"tb:{org_id}:{seg}:{pol.segment}:{value}:{pol.unit}:{pol.quota}:{pol.window_s}"
            cost = 1.0 if pol.unit == "request" else 0.0
            tokens = self._take(key, float(pol.quota), pol.rate, cost, now)
            if tokens is None:
                left = self._peek(key, float(pol.quota), pol.rate, now)
                wait = math.ceil(max(cost - left, 1e-9 if cost == 0 else 0) / pol.rate) if pol.rate else pol.window_s
                raise RateLimited(
                    f"rate limit exceeded: {pol.text} ({_segment_text(pol, value)}); retry in {wait} s",
                    headers=_headers(pol, 0, wait) | {"Retry-After": str(wait), "X-Helicone-Error": "rate_limited"},
                )
            verdict.headers = [(k.lower().encode(), v.encode()) for k, v in _headers(
                pol, max(int(tokens), 0), math.ceil((float(pol.quota) - tokens) / pol.rate) if pol.rate else 0).items()]
            if pol.unit == "cents":
                verdict.cents_buckets.append(key)
        now_dt = datetime.fromtimestamp(now, UTC)
        for b in budgets:
            if not b.applies(key_id, user_id, properties):
                continue
            start, end = period_bounds(b.period, now_dt)
            row = self.pg.fetchone("SELECT spent_nanos FROM budget_spend WHERE budget_id = %s AND period_start = %s",
                                   (b.id, start))
            if row is not None and row["spent_nanos"] >= b.limit_nanos:
                raise RateLimited(f"{b.describe()} is spent; it resets at {end.isoformat().replace('+00:00', 'Z')}",
                                  headers={"Retry-After": str(int((end - now_dt).total_seconds()))})
            verdict.budgets.append(b)
        return verdict

    def settle(self, verdict: Verdict, cost_nanos: int | None) -> None:
        """After the call: take its cost from cents buckets and add it to budgets."""
        if not cost_nanos:
            return
        cents = cost_nanos / 10**7
        for key in verdict.cents_buckets:
            self.pg.execute("UPDATE rate_buckets SET tokens = tokens - %s WHERE key = %s", (cents, key))
        now_dt = datetime.fromtimestamp(self.clock(), UTC)
        for b in verdict.budgets:
            start, _ = period_bounds(b.period, now_dt)
            self.pg.execute(
                "INSERT INTO budget_spend (budget_id, period_start, spent_nanos) VALUES (%s, %s, %s)"
                " ON CONFLICT (budget_id, period_start) DO UPDATE SET spent_nanos = budget_spend.spent_nanos + %s",
                (b.id, start, cost_nanos, cost_nanos))

    def _take(self, key: str, quota: float, rate: float, cost: float, now: float) -> float | None:
        """Refill lazily and take `cost` atomically; None when there is not enough (or, for cents, balance <= 0)."""
        need = "> 0" if cost == 0 else ">= %(cost)s"
        row = self.pg.fetchone(
            "INSERT INTO rate_buckets AS b (key, tokens, updated_at) VALUES (%(key)s, %(quota)s - %(cost)s, %(now)s)"
            " ON CONFLICT (key) DO UPDATE SET"
            " tokens = LEAST(%(quota)s, b.tokens + GREATEST(%(now)s - b.updated_at, 0) * %(rate)s) - %(cost)s,"
            " updated_at = %(now)s"
            f" WHERE LEAST(%(quota)s, b.tokens + GREATEST(%(now)s - b.updated_at, 0) * %(rate)s) {need}"
            " RETURNING tokens",
            {"key": key, "quota": quota, "cost": cost, "now": now, "rate": rate},
        )
        return float(row["tokens"]) if row is not None else None

    def _peek(self, key: str, quota: float, rate: float, now: float) -> float:
        row = self.pg.fetchone("SELECT tokens, updated_at FROM rate_buckets WHERE key = %s", (key,))
        if row is None:
            return quota
        return min(quota, float(row["tokens"]) + max(now - float(row["updated_at"]), 0.0) * rate)

    # --- saved rules (API) ---------------------------------------------------------------------------
    def add_policy(self, org_id: str, name: str, text: str, api_key_id: str | None) -> dict[str, Any]:
        pol = parse_policy(text)
        pid = "rl_" + secrets.token_hex(6)
        self.pg.execute("INSERT INTO rate_limit_policies (id, org_id, api_key_id, name, policy) VALUES (%s, %s, %s, %s, %s)",
                        (pid, org_id, api_key_id, name, pol.text))
        self.forget(org_id)
        return {"id": pid, "name": name, "policy": pol.text, "api_key_id": api_key_id}

    def add_budget(self, org_id: str, scope: str, scope_key: str, scope_value: str, period: str, limit_nanos: int) -> Budget:
        bid = "bud_" + secrets.token_hex(6)
        self.pg.execute(
            "INSERT INTO budgets (id, org_id, scope, scope_key, scope_value, period, limit_nanos)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s)", (bid, org_id, scope, scope_key, scope_value, period, limit_nanos))
        self.forget(org_id)
        return Budget(bid, scope, scope_key, scope_value, period, limit_nanos)


def _segment_text(pol: Policy, value: str) -> str:
    if pol.segment == "user":
        return f"user {value!r}"
    if pol.segment:
        return f"property {pol.segment}={value!r}"
    return "all requests"


def _headers(pol: Policy, remaining: int, reset_s: int) -> dict[str, str]:
    return {
        "Helicone-RateLimit-Limit": f"{pol.quota:f}".rstrip("0").rstrip(".") if "." in f"{pol.quota:f}" else f"{pol.quota}",
        "Helicone-RateLimit-Remaining": str(remaining),
        "Helicone-RateLimit-Policy": f"{pol.quota};w={pol.window_s};u={pol.unit}" + (f";s={pol.segment}" if pol.segment else ""),
        "Helicone-RateLimit-Reset": str(max(reset_s, 0)),
    }
