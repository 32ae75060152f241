"""Threshold alert rules: validation, storage in PostgreSQL, evaluation with one ClickHouse query per rule, and
notification through an outbox drained with retries.

A rule (or each group of a grouped rule) fires when its value crosses the threshold with at least the minimum number
of requests, and resolves once it has stayed clear for the cooldown. State changes and the notifications they cause
commit in one PostgreSQL transaction, and a rule is evaluated under a row lock (FOR UPDATE SKIP LOCKED), so several
llmlens processes on one PostgreSQL evaluate each rule once per interval and a restart sends nothing twice.
"""

from __future__ import annotations

import logging
import math
import random
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode, urlsplit

import psycopg
from psycopg.types.json import Jsonb

from dashboard import notify, queries
from ingest.limits import period_bounds
from storage.clickhouse import ClickHouse
from storage.postgres import Postgres

log = logging.getLogger("llmlens.alerts")


class RuleError(ValueError):
    """A rule definition llmlens cannot use; the message names the field."""


# metric -> (ClickHouse expression, label, unit). Identifiers reach SQL only from this table.
METRICS: dict[str, tuple[str, str, str]] = {
    "cost": ("toFloat64(coalesce(sum(cost_nanos), 0)) / 1e9", "Cost", "usd"),
    "error_rate": ("100 * countIf(status >= 400 OR status < 0) / count()", "Error rate", "pct"),
    "requests": ("toFloat64(count())", "Requests", "count"),
    "latency_p50": ("toFloat64(quantileExact(0.5)(latency_ms))", "Latency p50", "ms"),
    "latency_p95": ("toFloat64(quantileExact(0.95)(latency_ms))", "Latency p95", "ms"),
    "latency_p99": ("toFloat64(quantileExact(0.99)(latency_ms))", "Latency p99", "ms"),
    "tokens": ("toFloat64(sum(prompt_tokens + completion_tokens))", "Tokens", "count"),
    # month-to-date spend, extrapolated to the end of the calendar month (UTC)
    "projected_month_spend": ("toFloat64(coalesce(sum(cost_nanos), 0)) / 1e9", "Projected month-end spend", "usd"),
    # share of a hard budget (Settings → Budgets) spent in its current day or month
    "budget_used_pct": ("toFloat64(coalesce(sum(cost_nanos), 0))", "Budget used", "pct"),
}
COMPARATORS: dict[str, Callable[[float, float], bool]] = {
    ">=": lambda v, t: v >= t, ">": lambda v, t: v > t, "<=": lambda v, t: v <= t, "<": lambda v, t: v < t,
}
GROUPS = {"user": "user_id", "model": "model", "provider": "provider"}
FILTER_KEYS = {"model", "provider", "user_id", "api_key_id", "status_class"}
MIN_WINDOW_S, MAX_WINDOW_S = 300, 30 * 86400
MAX_ATTEMPTS = 12
INLINE_TRIES = 3
EMAIL = re.compile(r"[^@\s,;<>]+@[^@\s,;<>]+\.[^@\s,;<>]+")
FIELDS = {"name", "metric", "window", "comparator", "threshold", "min_requests", "filter", "group_by", "budget_id",
          "channels", "cooldown", "paused"}


@dataclass
class Rule:
    id: str
    org_id: str
    name: str
    metric: str
    window_s: int
    comparator: str
    threshold: float
    channels: list[dict[str, Any]]
    min_requests: int = 0
    filter: dict[str, str] = field(default_factory=dict)
    group_by: str = ""
    budget_id: str | None = None
    cooldown_s: int = 300
    paused: bool = False
    webhook_secret: str = ""

    @classmethod
    def from_row(cls, r: dict[str, Any]) -> Rule:
        return cls(id=r["id"], org_id=r["org_id"], name=r["name"], metric=r["metric"], window_s=r["window_s"],
                   comparator=r["comparator"], threshold=r["threshold"], channels=r["channels"],
                   min_requests=r["min_requests"], filter=r["filter"], group_by=r["group_by"], budget_id=r["budget_id"],
                   cooldown_s=r["cooldown_s"], paused=r["paused"], webhook_secret=r["webhook_secret"])

    def definition(self) -> dict[str, Any]:
        """The rule as the API takes it back (PATCH merges into this)."""
        return {"name": self.name, "metric": self.metric, "window": self.window_s, "comparator": self.comparator,
                "threshold": self.threshold, "min_requests": self.min_requests, "filter": self.filter,
                "group_by": self.group_by or None, "budget_id": self.budget_id, "channels": self.channels,
                "cooldown": self.cooldown_s, "paused": self.paused}


# --- validation -----------------------------------------------------------------------------------------------

def parse_duration(name: str, raw: Any, lo: int, hi: int) -> int:
    """Seconds from an integer or "15m" / "1h" / "7d"."""
    if isinstance(raw, bool) or not isinstance(raw, (int, str)):
        raise RuleError(f"{name} must be seconds or a duration such as 15m, 1h or 7d")
    if isinstance(raw, str):
        m = re.fullmatch(r"\s*(\d+)\s*([smhd])\s*", raw)
        if not m:
            raise RuleError(f"{name} {raw!r} is not a duration such as 15m, 1h or 7d")
        seconds = int(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
    else:
        seconds = raw
    if not lo <= seconds <= hi:
        raise RuleError(f"{name} must be between {human_duration(lo)} and {human_duration(hi)}, not {human_duration(seconds)}")
    return seconds


def human_duration(seconds: int) -> str:
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= n and seconds % n == 0:
            return f"{seconds // n}{unit}"
    return f"{seconds}s"


def _channels(raw: Any, *, smtp_configured: bool) -> list[dict[str, Any]]:
    if not isinstance(raw, list) or not raw:
        raise RuleError("channels must be a non-empty list of {type: webhook|slack|email, ...}")
    out: list[dict[str, Any]] = []
    for i, ch in enumerate(raw):
        if not isinstance(ch, dict):
            raise RuleError(f"channels[{i}] must be an object")
        kind = ch.get("type")
        if kind in ("webhook", "slack"):
            url = ch.get("url")
            if not isinstance(url, str) or urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).netloc:
                raise RuleError(f"channels[{i}].url must be an http(s) URL")
            extra = set(ch) - {"type", "url"}
            out.append({"type": kind, "url": url})
        elif kind == "email":
            to = ch.get("to")
            if isinstance(to, str):
                to = [a.strip() for a in re.split(r"[,;\s]+", to) if a.strip()]
            if not isinstance(to, list) or not to or not all(isinstance(a, str) and EMAIL.fullmatch(a) for a in to):
                raise RuleError(f"channels[{i}].to must be a list of email addresses")
            if not smtp_configured:
                raise RuleError("email channels need LLMLENS_SMTP_URL to be set on the llmlens server")
            extra = set(ch) - {"type", "to"}
            out.append({"type": "email", "to": to})
        else:
            raise RuleError(f"channels[{i}].type must be webhook, slack or email, not {kind!r}")
        if extra:
            raise RuleError(f"channels[{i}] has unknown field {sorted(extra)[0]!r}")
    return out


def validate(body: Any, *, smtp_configured: bool) -> dict[str, Any]:
    """A rule definition from the API or the dashboard form → column values; RuleError names the bad field."""
    if not isinstance(body, dict):
        raise RuleError("expected a JSON object")
    unknown = set(body) - FIELDS
    if unknown:
        raise RuleError(f"unknown field {sorted(unknown)[0]!r}; known: {', '.join(sorted(FIELDS))}")
    name = body.get("name")
    if not isinstance(name, str) or not name.strip() or len(name) > 200:
        raise RuleError("name must be a non-empty string of at most 200 characters")
    metric = body.get("metric")
    if metric not in METRICS:
        raise RuleError(f"metric must be one of {', '.join(METRICS)}, not {metric!r}")
    comparator = body.get("comparator", ">=")
    if comparator not in COMPARATORS:
        raise RuleError(f"comparator must be one of {', '.join(COMPARATORS)}, not {comparator!r}")
    threshold = body.get("threshold")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold) or threshold < 0:
        raise RuleError("threshold must be a non-negative number")
    if metric in ("error_rate", "budget_used_pct") and threshold > 100:
        raise RuleError(f"threshold of {metric} is a percentage: 0 to 100")
    if metric in ("projected_month_spend", "budget_used_pct"):
        window_s = MAX_WINDOW_S if body.get("window") is None else parse_duration("window", body["window"], MIN_WINDOW_S, MAX_WINDOW_S)
    else:
        if body.get("window") is None:
            raise RuleError("window is required: 5m to 30d")
        window_s = parse_duration("window", body["window"], MIN_WINDOW_S, MAX_WINDOW_S)
    min_requests = body.get("min_requests", 0)
    if isinstance(min_requests, bool) or not isinstance(min_requests, int) or min_requests < 0:
        raise RuleError("min_requests must be a non-negative integer")
    filt = body.get("filter") or {}
    if not isinstance(filt, dict) or not all(isinstance(k, str) and isinstance(v, str) and v for k, v in filt.items()):
        raise RuleError("filter must be an object of non-empty strings, e.g. {\"model\": \"gpt-4o\", \"property.team\": \"search\"}")
    try:
        queries.parse_filters(filt, allowed=FILTER_KEYS)
    except queries.QueryError as exc:
        raise RuleError(f"filter: {exc}") from None
    group_by = body.get("group_by") or ""
    if group_by and group_by not in GROUPS and not (group_by.startswith("property.") and len(group_by) > len("property.")):
        raise RuleError(f"group_by must be user, model, provider or property.<key>, not {group_by!r}")
    budget_id = body.get("budget_id")
    if metric == "budget_used_pct":
        if not isinstance(budget_id, str) or not budget_id:
            raise RuleError("budget_used_pct needs budget_id: the id of a budget of this org")
        if group_by or filt:
            raise RuleError("a budget_used_pct rule takes its scope from the budget: no filter or group_by")
    elif budget_id is not None:
        raise RuleError("budget_id applies only to metric budget_used_pct")
    cooldown_s = parse_duration("cooldown", body.get("cooldown", 300), 0, 86400)
    paused = body.get("paused", False)
    if not isinstance(paused, bool):
        raise RuleError("paused must be true or false")
    return {"name": name.strip(), "metric": metric, "window_s": window_s, "comparator": comparator,
            "threshold": float(threshold), "min_requests": min_requests,
            "filter": {k.lower() if k.startswith("property.") else k: v for k, v in filt.items()},
            "group_by": group_by.lower() if group_by.startswith("property.") else group_by, "budget_id": budget_id,
            "channels": _channels(body.get("channels"), smtp_configured=smtp_configured),
            "cooldown_s": cooldown_s, "paused": paused}


# --- formatting ---------------------------------------------------------------------------------------------

def format_value(metric: str, value: float | None) -> str:
    if value is None:
        return "—"
    unit = METRICS[metric][2]
    if unit == "usd":
        return f"${value:,.2f}" if value >= 1 or value == 0 else f"${value:.4g}"
    if unit == "pct":
        return f"{value:.1f}%"
    if unit == "ms":
        return f"{value:,.0f} ms"
    return f"{value:,.0f}"


def _iso(ts: datetime | None) -> str | None:
    return None if ts is None else ts.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


# --- the store, the evaluator and the outbox -----------------------------------------------------------------

DUE = """
SELECT * FROM alert_rules
WHERE NOT paused AND (last_evaluated_at IS NULL OR last_evaluated_at <= %(due_before)s)
ORDER BY last_evaluated_at NULLS FIRST, id LIMIT 1
FOR UPDATE SKIP LOCKED
"""
PENDING = """
SELECT o.*, r.webhook_secret FROM alert_outbox o JOIN alert_rules r ON r.id = o.rule_id
WHERE o.delivered_at IS NULL AND o.failed_at IS NULL AND o.next_attempt_at <= %(now)s
ORDER BY o.id LIMIT 1
FOR UPDATE OF o SKIP LOCKED
"""


class Alerts:
    def __init__(self, pg: Postgres, ch: ClickHouse, *, interval_s: float, base_url: str, smtp_url: str = "",
                 mail_from: str = "llmlens@localhost", retry_base_s: float = 1.0) -> None:
        self.pg, self.ch = pg, ch
        self.interval_s = interval_s
        self.base_url = base_url
        self.smtp_url, self.mail_from = smtp_url, mail_from
        self.retry_base_s = retry_base_s

    # --- rules (every statement carries the org) ----------------------------------------------------------
    def create(self, org_id: str, body: Any) -> dict[str, Any]:
        v = validate(body, smtp_configured=bool(self.smtp_url))
        self._check_budget(org_id, v["budget_id"])
        rule_id = "alr_" + secrets.token_hex(8)
        self.pg.execute(
            "INSERT INTO alert_rules (id, org_id, name, metric, window_s, comparator, threshold, min_requests, filter,"
            " group_by, budget_id, channels, cooldown_s, paused, webhook_secret) VALUES (%(id)s, %(org)s, %(name)s,"
            " %(metric)s, %(window_s)s, %(comparator)s, %(threshold)s, %(min_requests)s, %(filter)s, %(group_by)s,"
            " %(budget_id)s, %(channels)s, %(cooldown_s)s, %(paused)s, %(secret)s)",
            {**v, "id": rule_id, "org": org_id, "filter": Jsonb(v["filter"]), "channels": Jsonb(v["channels"]),
             "secret": "whsec_" + secrets.token_urlsafe(24)})
        return self.get(org_id, rule_id) or {}

    def update(self, org_id: str, rule_id: str, changes: Any) -> dict[str, Any] | None:
        """Merge `changes` into the stored definition and validate the whole; None when the org has no such rule."""
        rule = self.rule(org_id, rule_id)
        if rule is None:
            return None
        if not isinstance(changes, dict):
            raise RuleError("expected a JSON object")
        merged = {**rule.definition(), **changes}
        if "metric" in changes and changes["metric"] != "budget_used_pct" and "budget_id" not in changes:
            merged["budget_id"] = None
        v = validate(merged, smtp_configured=bool(self.smtp_url))
        self._check_budget(org_id, v["budget_id"])
        with self.pg.connection() as conn, conn.transaction():
            conn.execute(
                "UPDATE alert_rules SET name = %(name)s, metric = %(metric)s, window_s = %(window_s)s,"
                " comparator = %(comparator)s, threshold = %(threshold)s, min_requests = %(min_requests)s,"
                " filter = %(filter)s, group_by = %(group_by)s, budget_id = %(budget_id)s, channels = %(channels)s,"
                " cooldown_s = %(cooldown_s)s, paused = %(paused)s, updated_at = now(), last_evaluated_at = NULL"
                " WHERE id = %(id)s AND org_id = %(org)s",
                {**v, "id": rule_id, "org": org_id, "filter": Jsonb(v["filter"]), "channels": Jsonb(v["channels"])})
            what_changed = {k for k in ("metric", "filter", "group_by", "budget_id") if v[k] != getattr(rule, k)}
            if what_changed:  # a different question: its open episodes are over, and nobody is told twice
                conn.execute("UPDATE alert_history SET resolved_at = now() WHERE rule_id = %s AND resolved_at IS NULL",
                             (rule_id,))
                conn.execute("DELETE FROM alert_state WHERE rule_id = %s", (rule_id,))
        return self.get(org_id, rule_id)

    def delete(self, org_id: str, rule_id: str) -> bool:
        return self.pg.execute("DELETE FROM alert_rules WHERE id = %s AND org_id = %s", (rule_id, org_id)) > 0

    def rule(self, org_id: str, rule_id: str) -> Rule | None:
        row = self.pg.fetchone("SELECT * FROM alert_rules WHERE id = %s AND org_id = %s", (rule_id, org_id))
        return None if row is None else Rule.from_row(row)

    def _check_budget(self, org_id: str, budget_id: str | None) -> None:
        if budget_id is not None and self.pg.fetchone(
                "SELECT 1 AS ok FROM budgets WHERE id = %s AND org_id = %s", (budget_id, org_id)) is None:
            raise RuleError(f"budget_id {budget_id!r} is not a budget of this org")

    def list_rules(self, org_id: str) -> list[dict[str, Any]]:
        rows = self.pg.fetchall("SELECT * FROM alert_rules WHERE org_id = %s ORDER BY created_at, id", (org_id,))
        firing = self._firing(org_id)
        return [self._out(r, firing.get(r["id"], [])) for r in rows]

    def get(self, org_id: str, rule_id: str) -> dict[str, Any] | None:
        row = self.pg.fetchone("SELECT * FROM alert_rules WHERE id = %s AND org_id = %s", (rule_id, org_id))
        if row is None:
            return None
        out = self._out(row, self._firing(org_id, rule_id).get(rule_id, []))
        out["webhook_secret"] = row["webhook_secret"]
        out["history"] = [
            {"group": h["group_key"] or None, "fired_at": _iso(h["fired_at"]), "fired_value": h["fired_value"],
             "resolved_at": _iso(h["resolved_at"]), "resolved_value": h["resolved_value"],
             "fired_value_text": format_value(row["metric"], h["fired_value"]),
             "resolved_value_text": format_value(row["metric"], h["resolved_value"])}
            for h in self.pg.fetchall("SELECT * FROM alert_history WHERE rule_id = %s ORDER BY fired_at DESC, id DESC"
                                      " LIMIT 100", (rule_id,))]
        out["deliveries"] = [
            {"id": d["id"], "event": d["payload"]["event"], "group": d["payload"].get("group"),
             "channel": notify.describe(d["channel"]), "attempts": d["attempts"], "created_at": _iso(d["created_at"]),
             "delivered_at": _iso(d["delivered_at"]), "failed_at": _iso(d["failed_at"]), "last_error": d["last_error"] or None}
            for d in self.pg.fetchall("SELECT * FROM alert_outbox WHERE rule_id = %s ORDER BY id DESC LIMIT 50", (rule_id,))]
        return out

    def _firing(self, org_id: str, rule_id: str | None = None) -> dict[str, list[dict[str, Any]]]:
        rows = self.pg.fetchall(
            "SELECT s.*, r.metric FROM alert_state s JOIN alert_rules r ON r.id = s.rule_id WHERE r.org_id = %s"
            + (" AND r.id = %s" if rule_id else "") + " ORDER BY s.group_key", (org_id, rule_id) if rule_id else (org_id,))
        out: dict[str, list[dict[str, Any]]] = {}
        for s in rows:
            out.setdefault(s["rule_id"], []).append(
                {"group": s["group_key"] or None, "value": s["value"], "value_text": format_value(s["metric"], s["value"]),
                 "requests": s["requests"],
                 "fired_at": _iso(s["fired_at"]), "clear_since": _iso(s["clear_since"])})
        return out

    def _out(self, r: dict[str, Any], firing: list[dict[str, Any]]) -> dict[str, Any]:
        rule = Rule.from_row(r)
        return {"id": r["id"], **rule.definition(), "window": human_duration(rule.window_s),
                "cooldown": human_duration(rule.cooldown_s) if rule.cooldown_s else "0s",
                "state": "paused" if rule.paused else ("firing" if firing else "ok"), "firing": firing,
                "value": r["last_value"], "value_text": format_value(rule.metric, r["last_value"]),
                "threshold_text": format_value(rule.metric, rule.threshold),
                "requests": r["last_requests"], "last_evaluated_at": _iso(r["last_evaluated_at"]),
                "last_error": r["last_error"] or None, "last_delivery_error": r["last_delivery_error"] or None,
                "requests_url": self.requests_url(rule, None, datetime.now(UTC))}

    # --- measuring ------------------------------------------------------------------------------------------
    def window_of(self, rule: Rule, now: datetime) -> tuple[datetime, datetime]:
        if rule.metric == "projected_month_spend":
            return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0), now
        if rule.metric == "budget_used_pct":
            b = self._budget(rule)
            return period_bounds(b["period"], now)[0], now
        return now - timedelta(seconds=rule.window_s), now

    def _budget(self, rule: Rule) -> dict[str, Any]:
        b = self.pg.fetchone("SELECT * FROM budgets WHERE id = %s AND org_id = %s", (rule.budget_id, rule.org_id))
        if b is None:
            raise RuleError(f"budget {rule.budget_id!r} no longer exists")
        return b

    def filters(self, rule: Rule, start: datetime, end: datetime) -> queries.Filters:
        f = queries.parse_filters(rule.filter, allowed=FILTER_KEYS)
        if rule.metric == "budget_used_pct":
            b = self._budget(rule)
            if b["scope"] == "key":
                f.api_key_id = b["scope_value"]
            elif b["scope"] == "user":
                f.user_id = b["scope_value"]
            else:
                f.properties.append((b["scope_key"], b["scope_value"]))
        f.start, f.end = start, end
        return f

    def measure(self, rule: Rule, now: datetime) -> dict[str, tuple[float, int]]:
        """{group: (value, requests)} for the rule's window; one ClickHouse query. Ungrouped rules use group ''."""
        start, end = self.window_of(rule, now)
        where, params = self.filters(rule, start, end).where(rule.org_id)
        expr = METRICS[rule.metric][0]
        if rule.group_by:
            if rule.group_by in GROUPS:
                group = GROUPS[rule.group_by]
            else:
                group, params["gkey"] = "properties[{gkey:String}]", rule.group_by[len("property."):]
            sql = (f"SELECT {group} AS grp, count() AS requests, {expr} AS value FROM request_events FINAL"
                   f" WHERE {where} AND grp != '' GROUP BY grp")
        else:
            sql = f"SELECT '' AS grp, count() AS requests, {expr} AS value FROM request_events FINAL WHERE {where}"
        out: dict[str, tuple[float, int]] = {}
        for r in self.ch.query(sql, params, name="alert_rule"):
            n = int(r["requests"])
            value = float(r["value"]) if n else 0.0
            if math.isnan(value):
                value = 0.0
            if rule.metric == "projected_month_spend":
                _, month_end = period_bounds("month", now)
                elapsed = max((now - start).total_seconds(), 3600.0)  # the first hour of a month says little
                value = value * (month_end - start).total_seconds() / elapsed
            elif rule.metric == "budget_used_pct":
                value = 100.0 * value / max(self._budget(rule)["limit_nanos"], 1)
            out[r["grp"]] = (value, n)
        return out

    def requests_url(self, rule: Rule, group: str | None, now: datetime) -> str:
        """The request explorer over what the rule measures (its window, filter, budget scope and group)."""
        start, end = self.window_of(rule, now)
        q: dict[str, str] = {"range": "custom", "start": _iso(start) or "", "end": _iso(end) or "", **rule.filter}
        if rule.metric == "budget_used_pct":
            b = self._budget(rule)
            scope = {"key": "api_key_id", "user": "user_id"}.get(b["scope"], f"property.{b['scope_key']}")
            q[scope] = b["scope_value"]
        if group:
            q[{"user": "user_id", "model": "model", "provider": "provider"}.get(rule.group_by, rule.group_by)] = group
        return f"{self.base_url}/requests?{urlencode(q)}"

    # --- evaluation -------------------------------------------------------------------------------------------
    def evaluate_due(self, now: datetime | None = None) -> int:
        """Evaluate every active rule not evaluated within the interval; returns how many this process evaluated."""
        now = now or datetime.now(UTC)
        due_before = now - timedelta(seconds=self.interval_s * 0.9)
        done = 0
        while True:
            with self.pg.connection() as conn, conn.transaction():
                row = conn.execute(DUE, {"due_before": due_before}).fetchone()
                if row is None:
                    return done
                rule = Rule.from_row(row)
                try:
                    results = self.measure(rule, now)
                except Exception as exc:  # a broken rule (its budget deleted, ClickHouse down) must not stop the others
                    log.warning("alert rule %s could not be evaluated: %s", rule.id, exc)
                    conn.execute("UPDATE alert_rules SET last_evaluated_at = %s, last_error = %s WHERE id = %s",
                                 (now, f"evaluation failed: {str(exc)[:300]}", rule.id))
                else:
                    self._apply(conn, rule, results, now)
                done += 1

    def _apply(self, conn: psycopg.Connection[Any], rule: Rule, results: dict[str, tuple[float, int]], now: datetime) -> None:
        crosses = COMPARATORS[rule.comparator]
        states = {s["group_key"]: s for s in conn.execute(
            "SELECT * FROM alert_state WHERE rule_id = %s FOR UPDATE", (rule.id,)).fetchall()}
        for group in sorted(set(results) | set(states)):
            value, requests = results.get(group, (0.0, 0))
            crossed = group in results and requests >= rule.min_requests and crosses(value, rule.threshold)
            st = states.get(group)
            if st is None:
                if crossed:
                    inserted = conn.execute(
                        "INSERT INTO alert_history (rule_id, group_key, fired_at, fired_value) VALUES (%s, %s, %s, %s)"
                        " RETURNING id", (rule.id, group, now, value)).fetchone()
                    hid = inserted["id"] if inserted else None
                    conn.execute(
                        "INSERT INTO alert_state (rule_id, group_key, firing, value, requests, fired_at, history_id)"
                        " VALUES (%s, %s, true, %s, %s, %s, %s)", (rule.id, group, value, requests, now, hid))
                    self._enqueue(conn, rule, "fired", group, value, requests, now)
            elif crossed:
                conn.execute("UPDATE alert_state SET value = %s, requests = %s, clear_since = NULL"
                             " WHERE rule_id = %s AND group_key = %s", (value, requests, rule.id, group))
            else:
                clear_since = st["clear_since"] or now
                if (now - clear_since).total_seconds() >= rule.cooldown_s:
                    conn.execute("UPDATE alert_history SET resolved_at = %s, resolved_value = %s WHERE id = %s",
                                 (now, value, st["history_id"]))
                    conn.execute("DELETE FROM alert_state WHERE rule_id = %s AND group_key = %s", (rule.id, group))
                    self._enqueue(conn, rule, "resolved", group, value, requests, now, fired_at=st["fired_at"])
                else:
                    conn.execute("UPDATE alert_state SET value = %s, requests = %s, clear_since = %s"
                                 " WHERE rule_id = %s AND group_key = %s", (value, requests, clear_since, rule.id, group))
        counted = [(v, n) for v, n in results.values() if n >= rule.min_requests] or list(results.values())
        pick = min if rule.comparator.startswith("<") else max
        headline = pick(counted) if counted else (None, 0)
        conn.execute("UPDATE alert_rules SET last_evaluated_at = %s, last_value = %s, last_requests = %s, last_error = ''"
                     " WHERE id = %s", (now, headline[0], headline[1], rule.id))

    def payload(self, rule: Rule, event: str, group: str, value: float, requests: int, now: datetime,
                fired_at: datetime | None = None) -> dict[str, Any]:
        return {
            "event": event, "rule": {"id": rule.id, "name": rule.name, "metric": rule.metric},
            "metric_label": METRICS[rule.metric][1], "value": value, "value_text": format_value(rule.metric, value),
            "comparator": rule.comparator, "threshold": rule.threshold,
            "threshold_text": format_value(rule.metric, rule.threshold), "requests": requests,
            "window": human_duration(rule.window_s), "window_s": rule.window_s, "filter": rule.filter,
            "group_by": rule.group_by or None, "group": group or None,
            "fired_at": _iso(fired_at if event == "resolved" else now), "resolved_at": _iso(now) if event == "resolved" else None,
            "url": self.requests_url(rule, group or None, now),
        }

    def _enqueue(self, conn: psycopg.Connection[Any], rule: Rule, event: str, group: str, value: float, requests: int,
                 now: datetime, fired_at: datetime | None = None) -> None:
        body = self.payload(rule, event, group, value, requests, now, fired_at)
        for channel in rule.channels:
            conn.execute("INSERT INTO alert_outbox (rule_id, channel, payload, next_attempt_at) VALUES (%s, %s, %s, %s)",
                         (rule.id, Jsonb(channel), Jsonb(body), now))

    # --- delivery -------------------------------------------------------------------------------------------
    def deliver_pending(self, now: datetime | None = None) -> int:
        """Send what the outbox holds, each row under a lock (one sender per row), retrying with backoff."""
        now = now or datetime.now(UTC)
        sent = 0
        while True:
            with self.pg.connection() as conn, conn.transaction():
                row = conn.execute(PENDING, {"now": now}).fetchone()
                if row is None:
                    return sent
                error = self._send_with_retries(row["channel"], {**row["payload"], "delivery_id": row["id"]},
                                                row["webhook_secret"])
                attempts = row["attempts"] + (1 if error is None else INLINE_TRIES)
                if error is None:
                    conn.execute("UPDATE alert_outbox SET delivered_at = %s, attempts = %s, last_error = '' WHERE id = %s",
                                 (datetime.now(UTC), attempts, row["id"]))
                    conn.execute(
                        "UPDATE alert_rules SET last_delivery_error = '' WHERE id = %s AND NOT EXISTS (SELECT 1 FROM"
                        " alert_outbox WHERE rule_id = %s AND delivered_at IS NULL AND last_error != '')",
                        (row["rule_id"], row["rule_id"]))
                    sent += 1
                else:
                    gave_up = attempts >= MAX_ATTEMPTS
                    later = now + timedelta(seconds=min(60 * 2 ** (attempts // INLINE_TRIES), 3600))
                    conn.execute("UPDATE alert_outbox SET attempts = %s, last_error = %s, next_attempt_at = %s,"
                                 " failed_at = %s WHERE id = %s",
                                 (attempts, error, later, now if gave_up else None, row["id"]))
                    note = f"{notify.describe(row['channel'])}: {error}" + (" (gave up)" if gave_up else " (will retry)")
                    conn.execute("UPDATE alert_rules SET last_delivery_error = %s WHERE id = %s", (note, row["rule_id"]))

    def _send_with_retries(self, channel: dict[str, Any], payload: dict[str, Any], secret: str) -> str | None:
        error = None
        for attempt in range(INLINE_TRIES):
            if attempt:
                time.sleep(self.retry_base_s * 2 ** (attempt - 1) * (1 + random.random() / 4))
            try:
                notify.send(channel, payload, secret=secret, smtp_url=self.smtp_url, mail_from=self.mail_from)
                return None
            except notify.DeliveryError as exc:
                error = str(exc)
            except Exception as exc:  # a bug must not wedge the outbox: the row is retried and then given up
                log.exception("alert delivery to %s failed unexpectedly", notify.describe(channel))
                error = f"{exc.__class__.__name__}: {exc}"
        return error

    def send_test(self, org_id: str, rule_id: str) -> list[dict[str, Any]] | None:
        """Send a test notification to every channel of a rule now (no retries); None when the org has no such rule."""
        rule = self.rule(org_id, rule_id)
        if rule is None:
            return None
        now = datetime.now(UTC)
        body = {**self.payload(rule, "test", "", 0.0, 0, now), "delivery_id": None}
        results = []
        for channel in rule.channels:
            try:
                notify.send(channel, body, secret=rule.webhook_secret, smtp_url=self.smtp_url, mail_from=self.mail_from)
                results.append({"channel": notify.describe(channel), "ok": True, "error": None})
            except notify.DeliveryError as exc:
                results.append({"channel": notify.describe(channel), "ok": False, "error": str(exc)})
        return results

    def tick(self) -> None:
        """One round: evaluate what is due, then drain the outbox (the app runs this every interval)."""
        self.evaluate_due()
        self.deliver_pending()
