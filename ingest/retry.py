"""Retries and fallbacks on the proxy (Helicone-Retry-*, Helicone-Fallbacks): parsing and the backoff schedule."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any

import orjson

from ingest.errors import IngestError

RETRY_ON = frozenset({429, 500, 502, 503, 504})


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Helicone's defaults: 5 retries, factor 2, 1 s to 10 s (worker/src/lib/models/HeliconeHeaders.ts)."""

    retries: int = 5
    factor: float = 2.0
    min_timeout_ms: int = 1000
    max_timeout_ms: int = 10000

    def delay_s(self, attempt: int, retry_after: str | None, rand: random.Random | None = None) -> float:
        """Wait before retry number `attempt` (0-based): exponential with jitter, or the provider's retry-after."""
        hinted = parse_retry_after(retry_after)
        if hinted is not None:
            return min(hinted, self.max_timeout_ms / 1000)
        base = min(self.max_timeout_ms, self.min_timeout_ms * self.factor**attempt) / 1000
        return base * (0.5 + (rand or random).random() / 2)  # "equal jitter": half fixed, half random


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        from datetime import UTC, datetime

        return max((parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds(), 0.0)
    except (TypeError, ValueError):
        return None


def _number(controls: dict[str, str], name: str, default: float, lo: float, hi: float, integer: bool) -> float:
    raw = controls.get(name)
    if raw is None:
        return default
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        raise IngestError(f"{name} must be {'an integer' if integer else 'a number'}, not {raw!r}") from None
    if not lo <= value <= hi:
        raise IngestError(f"{name} must be between {lo:g} and {hi:g}, not {raw!r}")
    return value


def retry_policy(controls: dict[str, str]) -> RetryPolicy | None:
    enabled = controls.get("helicone-retry-enabled", "").strip().lower()
    if enabled not in ("", "true", "false"):
        raise IngestError(f"Helicone-Retry-Enabled must be true or false, not {controls['helicone-retry-enabled']!r}")
    if enabled != "true":
        return None
    d = RetryPolicy()
    return RetryPolicy(
        retries=int(_number(controls, "helicone-retry-num", d.retries, 0, 20, True)),
        factor=_number(controls, "helicone-retry-factor", d.factor, 1, 10, False),
        min_timeout_ms=int(_number(controls, "helicone-retry-min-timeout", d.min_timeout_ms, 0, 600_000, True)),
        max_timeout_ms=int(_number(controls, "helicone-retry-max-timeout", d.max_timeout_ms, 0, 600_000, True)),
    )


@dataclass(frozen=True, slots=True)
class Fallback:
    target_url: str
    headers: dict[str, str] = field(default_factory=dict)
    on_codes: tuple[tuple[int, int], ...] = ((400, 599),)
    body_override: dict[str, Any] = field(default_factory=dict)

    def moves_on(self, status: int) -> bool:
        return any(lo <= status <= hi for lo, hi in self.on_codes)

    def body(self, original: bytes) -> bytes:
        if not self.body_override:
            return original
        try:
            parsed = orjson.loads(original)
        except orjson.JSONDecodeError:
            return original
        if not isinstance(parsed, dict):
            return original
        return orjson.dumps({**parsed, **self.body_override})


def fallbacks(controls: dict[str, str]) -> list[Fallback] | None:
    """Helicone-Fallbacks: a JSON array of {"target-url", "headers"?, "onCodes"?, "bodyKeyOverride"?}."""
    raw = controls.get("helicone-fallbacks")
    if raw is None:
        return None
    where = "Helicone-Fallbacks"
    try:
        items = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise IngestError(f"{where} is not valid JSON; expected an array of {{\"target-url\": ...}} objects") from None
    if not isinstance(items, list) or not items:
        raise IngestError(f"{where} must be a non-empty JSON array")
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("target-url"), str):
            raise IngestError(f"{where}[{i}] needs a \"target-url\" string")
        headers = item.get("headers", {})
        if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
            raise IngestError(f"{where}[{i}].headers must be an object of strings")
        codes: list[tuple[int, int]] = []
        for c in item.get("onCodes", [{"from": 400, "to": 599}]):
            if isinstance(c, int) and not isinstance(c, bool):
                codes.append((c, c))
            elif isinstance(c, dict) and isinstance(c.get("from"), int) and isinstance(c.get("to"), int):
                codes.append((c["from"], c["to"]))
            else:
                raise IngestError(f"{where}[{i}].onCodes entries must be integers or {{\"from\", \"to\"}} ranges")
        override = item.get("bodyKeyOverride", {})
        if not isinstance(override, dict):
            raise IngestError(f"{where}[{i}].bodyKeyOverride must be an object")
        out.append(Fallback(item["target-url"], {k.lower(): v for k, v in headers.items()}, tuple(codes), override))
    return out
