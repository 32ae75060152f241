"""The response cache (Helicone-Cache-* semantics), kept in PostgreSQL so every llmlens process shares it.

Exact-match key over the org, the llmlens key, the provider credential, the target URL, the body minus the
ignored keys, and the seed: one key's cache never answers another key or org. A bucket of N (1-20) keeps up to
N different responses for one key; once full, a hit returns one of them at random.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import orjson
from psycopg.types.json import Jsonb

from ingest.errors import IngestError
from storage.postgres import Postgres

DEFAULT_MAX_AGE_S = 7 * 24 * 3600  # Helicone's default (worker/src/lib/util/cache/cacheSettings.ts)
MAX_MAX_AGE_S = 365 * 24 * 3600
MAX_BUCKET = 20
_MAX_AGE = re.compile(r"(?:^|,)\s*s?-?max-?age\s*=\s*(\d+)", re.I)
CREDENTIAL_HEADERS = ("authorization", "x-api-key", "api-key", "x-goog-api-key")


@dataclass(frozen=True, slots=True)
class CachePolicy:
    read: bool
    save: bool
    max_age_s: int
    bucket_size: int
    seed: str
    ignore_keys: frozenset[str]


def _flag(controls: dict[str, str], name: str) -> bool:
    value = controls.get(name, "").strip().lower()
    if value in ("", "false"):
        return False
    if value == "true":
        return True
    raise IngestError(f"{name} must be true or false, not {controls[name]!r}")


def policy(controls: dict[str, str], cache_control: str | None) -> CachePolicy | None:
    """The cache policy a request asks for, or None; bad values are a 400 naming the header."""
    enabled = _flag(controls, "helicone-cache-enabled")
    save = enabled or _flag(controls, "helicone-cache-save")
    read = enabled or _flag(controls, "helicone-cache-read")
    if not (save or read):
        return None
    max_age = DEFAULT_MAX_AGE_S
    if cache_control:
        m = _MAX_AGE.search(cache_control)
        if m:
            max_age = min(int(m.group(1)), MAX_MAX_AGE_S)
    raw_bucket = controls.get("helicone-cache-bucket-max-size", "1").strip()
    if not raw_bucket.isdigit() or not 1 <= int(raw_bucket) <= MAX_BUCKET:
        raise IngestError(f"Helicone-Cache-Bucket-Max-Size must be an integer from 1 to {MAX_BUCKET}, not {raw_bucket!r}")
    ignore = frozenset(k.strip() for k in controls.get("helicone-cache-ignore-keys", "").split(",") if k.strip())
    return CachePolicy(read, save, max_age, int(raw_bucket), controls.get("helicone-cache-seed", ""), ignore)


def cache_key(
    *, org_id: str, key_id: str, url: str, body: bytes, pol: CachePolicy, headers: list[tuple[str, str]]
) -> str:
    if pol.ignore_keys and body[:1] == b"{":
        try:
            parsed = orjson.loads(body)
            if isinstance(parsed, dict):
                body = orjson.dumps({k: v for k, v in parsed.items() if k not in pol.ignore_keys},
                                    option=orjson.OPT_SORT_KEYS)
        except orjson.JSONDecodeError:
            pass
    h = hashlib.sha256()
    for part in (org_id, key_id, pol.seed, url):
        h.update(part.encode() + b"\x00")
    for name, value in headers:
        if name in CREDENTIAL_HEADERS:
            h.update(name.encode() + b"=" + value.encode() + b"\x00")
    h.update(body)
    return h.hexdigest()


@dataclass(frozen=True, slots=True)
class Entry:
    bucket: int
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    stream: bool
    cost_nanos: int | None


class ResponseCache:
    def __init__(self, pg: Postgres, *, max_entry_bytes: int, max_total_bytes: int) -> None:
        self.pg = pg
        self.max_entry_bytes = max_entry_bytes
        self.max_total_bytes = max_total_bytes

    def lookup(self, key: str, bucket_size: int, now: datetime) -> tuple[Entry | None, int]:
        """(a hit, its bucket index) when the bucket is full, else (None, the index a new response should fill)."""
        rows = self.pg.fetchall(
            "SELECT bucket, status, headers, body, stream, cost_nanos FROM cache_entries"
            " WHERE key = %s AND expires_at > %s AND bucket < %s ORDER BY bucket", (key, now, bucket_size))
        if len(rows) < bucket_size:
            taken = {r["bucket"] for r in rows}
            return None, next(i for i in range(bucket_size) if i not in taken)
        row = random.choice(rows)
        self.pg.execute("UPDATE cache_entries SET hits = hits + 1 WHERE key = %s AND bucket = %s", (key, row["bucket"]))
        headers = [(str(k), str(v)) for k, v in row["headers"]]
        return Entry(row["bucket"], row["status"], headers, bytes(row["body"]), row["stream"], row["cost_nanos"]), row["bucket"]

    def slot(self, key: str, bucket_size: int, now: datetime) -> int:
        """Where a response saved without reading should go: the first free index, else a random one."""
        rows = self.pg.fetchall(
            "SELECT bucket FROM cache_entries WHERE key = %s AND expires_at > %s AND bucket < %s", (key, now, bucket_size))
        taken = {r["bucket"] for r in rows}
        free = [i for i in range(bucket_size) if i not in taken]
        return free[0] if free else random.randrange(bucket_size)

    def store(self, key: str, bucket: int, *, org_id: str, status: int, headers: list[tuple[str, str]], body: bytes,
              stream: bool, cost_nanos: int | None, model: str, max_age_s: int, now: datetime) -> bool:
        if len(body) > self.max_entry_bytes:
            return False
        self.pg.execute(
            "INSERT INTO cache_entries (key, bucket, org_id, status, headers, body, stream, cost_nanos, model,"
            " size_bytes, created_at, expires_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (key, bucket) DO UPDATE SET status = EXCLUDED.status, headers = EXCLUDED.headers,"
            " body = EXCLUDED.body, stream = EXCLUDED.stream, cost_nanos = EXCLUDED.cost_nanos,"
            " size_bytes = EXCLUDED.size_bytes, created_at = EXCLUDED.created_at, expires_at = EXCLUDED.expires_at",
            (key, bucket, org_id, status, Jsonb(headers), body, stream, cost_nanos, model, len(body), now,
             now + timedelta(seconds=max_age_s)),
        )
        return True

    def evict(self, now: datetime | None = None) -> int:
        """Drop expired entries, then the oldest until the total fits the bound."""
        now = now or datetime.now(UTC)
        dropped = self.pg.execute("DELETE FROM cache_entries WHERE expires_at <= %s", (now,))
        row = self.pg.fetchone("SELECT coalesce(sum(size_bytes), 0) AS total FROM cache_entries")
        excess = int(row["total"]) - self.max_total_bytes if row else 0
        if excess > 0:
            dropped += self.pg.execute(
                "DELETE FROM cache_entries WHERE (key, bucket) IN (SELECT key, bucket FROM ("
                " SELECT key, bucket, size_bytes, sum(size_bytes) OVER (ORDER BY created_at, key, bucket) AS running"
                " FROM cache_entries) t WHERE running - size_bytes < %s)", (excess,))
        return dropped


def replay_chunks(body: bytes) -> list[bytes]:
    """A cached stream replayed event by event, as it first arrived."""
    parts = body.split(b"\n\n")
    return [p + b"\n\n" for p in parts[:-1]] + ([parts[-1]] if parts[-1] else [])


def stored_headers(raw: list[tuple[bytes, bytes]], drop: set[str]) -> list[tuple[str, str]]:
    return [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in raw if k.decode("latin-1").lower() not in drop]
