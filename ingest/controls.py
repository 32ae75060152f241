"""Gateway controls for one proxied call: which cache, retry, fallback, rate-limit and budget rules apply.

A call that carries no control header, from an org with no saved policy or budget, never gets here.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime

from ingest import cache, limits
from ingest import retry as retries
from ingest.headers import HeliconeMeta
from storage.controlplane import Principal


@dataclass
class Plan:
    cache_policy: cache.CachePolicy | None = None
    cache_key: str = ""
    cache_bucket: int = 0
    hit: cache.Entry | None = None
    retry: retries.RetryPolicy | None = None
    fallbacks: list[retries.Fallback] | None = None
    verdict: limits.Verdict | None = None
    extra_headers: list[tuple[bytes, bytes]] = field(default_factory=list)


class Gateway:
    def __init__(self, response_cache: cache.ResponseCache, rate_limits: limits.Limits) -> None:
        self.cache = response_cache
        self.limits = rate_limits

    def needed(self, meta: HeliconeMeta, org_id: str) -> bool | None:
        """False when nothing applies (the hot path); None when the org's saved rules are not in memory yet."""
        if meta.controls:
            return True
        return self.limits.has_rules(org_id)

    async def plan(self, meta: HeliconeMeta, principal: Principal, *, url: str, body: bytes,
                   headers: list[tuple[str, str]]) -> Plan:
        """Parse the controls (400 on bad ones), enforce limits (429) and look the response up in the cache."""
        plan = Plan(
            cache_policy=cache.policy(meta.controls, next((v for n, v in headers if n == "cache-control"), None)),
            retry=retries.retry_policy(meta.controls),
            fallbacks=retries.fallbacks(meta.controls),
        )
        header_policy = meta.controls.get("helicone-ratelimit-policy")
        parsed = limits.parse_policy(header_policy) if header_policy is not None else None
        if parsed is not None or await asyncio.to_thread(self.limits.load, principal.org_id):
            plan.verdict = await asyncio.to_thread(
                self.limits.check, org_id=principal.org_id, key_id=principal.key_id, user_id=meta.user_id,
                properties=meta.properties, header_policy=parsed)
            plan.extra_headers += plan.verdict.headers
        pol = plan.cache_policy
        if pol is not None:
            plan.cache_key = cache.cache_key(org_id=principal.org_id, key_id=principal.key_id, url=url, body=body,
                                             pol=pol, headers=headers)
            if pol.read:
                plan.hit, plan.cache_bucket = await asyncio.to_thread(
                    self.cache.lookup, plan.cache_key, pol.bucket_size, datetime.now(UTC))
            else:
                plan.cache_bucket = await asyncio.to_thread(
                    self.cache.slot, plan.cache_key, pol.bucket_size, datetime.now(UTC))
        return plan
