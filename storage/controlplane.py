"""Control-plane records in PostgreSQL: orgs, API keys (stored as SHA-256 hashes) and dashboard users."""

from __future__ import annotations

import hashlib
import re
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from storage.postgres import Postgres

KEY_PREFIX = "sk-llmlens-"
_ORG_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_hasher = PasswordHasher()


class ControlPlaneError(ValueError):
    """A control-plane request that cannot be honoured (bad name, unknown org, duplicate email)."""


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: str
    org_id: str
    name: str
    key_prefix: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the org every query is scoped to, and the key that proved it."""

    org_id: str
    key_id: str


def hash_key(key: str) -> str:
    # API keys carry 160 random bits, so a fast hash is enough; a slow one would cost every uncached request.
    return hashlib.sha256(key.encode()).hexdigest()


class ControlPlane:
    def __init__(self, pg: Postgres) -> None:
        self.pg = pg

    # orgs
    def ensure_org(self, org_id: str) -> str:
        if not _ORG_ID.match(org_id):
            raise ControlPlaneError(f"org {org_id!r} is not a valid id; use lowercase letters, digits, '-' and '_'")
        self.pg.execute("INSERT INTO orgs (id, name) VALUES (%s, %s) ON CONFLICT (id) DO NOTHING", (org_id, org_id))
        return org_id

    # API keys
    def create_key(self, name: str, org_id: str = "default") -> tuple[ApiKey, str]:
        """A new key; the plaintext is returned once and only its hash is stored."""
        if not name.strip():
            raise ControlPlaneError("a key needs a non-empty name")
        self.ensure_org(org_id)
        plaintext = KEY_PREFIX + secrets.token_urlsafe(24)
        key_id = "key_" + secrets.token_hex(8)
        row = self.pg.fetchone(
            "INSERT INTO api_keys (id, org_id, name, key_hash, key_prefix) VALUES (%s, %s, %s, %s, %s) RETURNING *",
            (key_id, org_id, name.strip(), hash_key(plaintext), plaintext[: len(KEY_PREFIX) + 4]),
        )
        assert row is not None
        return _key(row), plaintext

    def list_keys(self, org_id: str | None = None) -> list[ApiKey]:
        if org_id is None:
            rows = self.pg.fetchall("SELECT * FROM api_keys ORDER BY created_at")
        else:
            rows = self.pg.fetchall("SELECT * FROM api_keys WHERE org_id = %s ORDER BY created_at", (org_id,))
        return [_key(r) for r in rows]

    def revoke_key(self, key_id: str, org_id: str | None = None) -> bool:
        sql = "UPDATE api_keys SET revoked_at = now() WHERE id = %s AND revoked_at IS NULL"
        params: tuple[Any, ...] = (key_id,)
        if org_id is not None:
            sql += " AND org_id = %s"
            params += (org_id,)
        return self.pg.execute(sql, params) == 1

    def principal_for(self, key_hash: str) -> Principal | None:
        row = self.pg.fetchone("SELECT id, org_id FROM api_keys WHERE key_hash = %s AND revoked_at IS NULL", (key_hash,))
        return Principal(org_id=row["org_id"], key_id=row["id"]) if row else None

    def touch_keys(self, key_ids: list[str]) -> None:
        if key_ids:
            self.pg.execute("UPDATE api_keys SET last_used_at = now() WHERE id = ANY(%s)", (key_ids,))

    # dashboard users
    def create_user(self, email: str, password: str, org_id: str = "default", role: str = "admin") -> str:
        email = email.strip().lower()
        if not _EMAIL.match(email):
            raise ControlPlaneError(f"{email!r} is not an email address")
        if len(password) < 8:
            raise ControlPlaneError("the password must have at least 8 characters")
        self.ensure_org(org_id)
        if self.pg.fetchone("SELECT 1 AS x FROM users WHERE email = %s", (email,)):
            raise ControlPlaneError(f"a user {email} already exists")
        user_id = "usr_" + secrets.token_hex(8)
        self.pg.execute(
            "INSERT INTO users (id, org_id, email, password_hash, role) VALUES (%s, %s, %s, %s, %s)",
            (user_id, org_id, email, _hasher.hash(password), role),
        )
        return user_id

    def verify_user(self, email: str, password: str) -> dict[str, Any] | None:
        row = self.pg.fetchone("SELECT id, org_id, email, role, password_hash FROM users WHERE email = %s", (email.strip().lower(),))
        if row is None:
            _hasher.hash(password)  # same cost whether or not the user exists
            return None
        try:
            _hasher.verify(row["password_hash"], password)
        except (VerificationError, InvalidHashError):
            return None
        return {k: row[k] for k in ("id", "org_id", "email", "role")}

    def user_count(self) -> int:
        row = self.pg.fetchone("SELECT count(*) AS n FROM users")
        return int(row["n"]) if row else 0


def _key(row: dict[str, Any]) -> ApiKey:
    return ApiKey(
        id=row["id"], org_id=row["org_id"], name=row["name"], key_prefix=row["key_prefix"],
        created_at=row["created_at"], last_used_at=row["last_used_at"], revoked_at=row["revoked_at"],
    )


class KeyCache:
    """API-key lookups held in memory for `ttl_s`, so the hot path never waits on PostgreSQL twice for one key."""

    def __init__(self, control: ControlPlane, ttl_s: float, *, negative_ttl_s: float = 2.0) -> None:
        self._control = control
        self._ttl = ttl_s
        self._negative_ttl = negative_ttl_s
        self._entries: dict[str, tuple[float, Principal | None]] = {}
        self._used: set[str] = set()
        self._lock = threading.Lock()

    def cached(self, key: str) -> tuple[bool, Principal | None]:
        """(hit, principal) from memory only; never blocks."""
        entry = self._entries.get(hash_key(key))
        if entry is None or entry[0] < time.monotonic():
            return False, None
        if entry[1] is not None:
            self._used.add(entry[1].key_id)
        return True, entry[1]

    def lookup(self, key: str) -> Principal | None:
        """Blocking lookup (call from a worker thread on a cache miss)."""
        hit, principal = self.cached(key)
        if hit:
            return principal
        principal = self._control.principal_for(hash_key(key))
        ttl = self._ttl if principal is not None else self._negative_ttl
        with self._lock:
            self._entries[hash_key(key)] = (time.monotonic() + ttl, principal)
            if len(self._entries) > 100_000:
                self._entries.clear()
        if principal is not None:
            self._used.add(principal.key_id)
        return principal

    def flush_last_used(self) -> None:
        """Record last-used times in one statement (called periodically, off the request path)."""
        used, self._used = self._used, set()
        self._control.touch_keys(sorted(used))
