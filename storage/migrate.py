"""Migration runner: numbered plain-SQL files applied in order, recorded with a checksum, never edited once applied."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from storage.clickhouse import ClickHouse
from storage.postgres import Postgres

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


class MigrationError(RuntimeError):
    pass


@dataclass(frozen=True)
class Migration:
    number: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()

    def statements(self) -> list[str]:
        # Statements are separated by a line holding only ';' or by ';' at the end of a line.
        parts = re.split(r";\s*\n", self.sql + "\n")
        return [p.strip() for p in parts if p.strip() and not all(line.startswith("--") for line in p.strip().splitlines())]


def load(kind: str, folder: Path = MIGRATIONS) -> list[Migration]:
    found: dict[int, Migration] = {}
    for path in sorted((folder / kind).glob("*.sql")):
        m = _NAME.match(path.name)
        if not m:
            raise MigrationError(f"migration file name {path.name!r} is not NNNN_name.sql")
        number = int(m.group(1))
        if number in found:
            raise MigrationError(f"two {kind} migrations numbered {number:04d}: {found[number].name}, {path.name}")
        found[number] = Migration(number, path.name, path.read_text())
    return [found[n] for n in sorted(found)]


def _check(kind: str, migration: Migration, applied: dict[str, str]) -> bool:
    """True when already applied; raises if an applied file changed since."""
    if migration.name not in applied:
        return False
    if applied[migration.name] != migration.checksum:
        raise MigrationError(f"{kind} migration {migration.name} changed after it was applied; add a new migration instead")
    return True


def migrate_clickhouse(ch: ClickHouse, folder: Path = MIGRATIONS) -> list[str]:
    ch.command(
        "CREATE TABLE IF NOT EXISTS schema_migrations (name String, checksum String, applied_at DateTime64(3) DEFAULT now64(3))"
        " ENGINE = MergeTree ORDER BY name"
    )
    applied = {r["name"]: r["checksum"] for r in ch.query("SELECT name, checksum FROM schema_migrations", name="migrations")}
    done = []
    for migration in load("clickhouse", folder):
        if _check("clickhouse", migration, applied):
            continue
        for statement in migration.statements():
            ch.command(statement)
        ch.command(
            "INSERT INTO schema_migrations (name, checksum) VALUES ({name:String}, {checksum:String})",
            {"name": migration.name, "checksum": migration.checksum},
        )
        done.append(migration.name)
    return done


def migrate_postgres(pg: Postgres, folder: Path = MIGRATIONS) -> list[str]:
    done = []
    with pg.connection() as conn:
        # One migrator at a time across every process sharing this PostgreSQL.
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(7261001)")
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (name text PRIMARY KEY, checksum text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            applied = {r["name"]: r["checksum"] for r in conn.execute("SELECT name, checksum FROM schema_migrations")}
            for migration in load("postgres", folder):
                if _check("postgres", migration, applied):
                    continue
                conn.execute(migration.sql.encode())
                conn.execute(
                    "INSERT INTO schema_migrations (name, checksum) VALUES (%s, %s)", (migration.name, migration.checksum)
                )
                done.append(migration.name)
    return done


def pending(ch: ClickHouse, pg: Postgres, folder: Path = MIGRATIONS) -> list[str]:
    """Names of migrations not yet applied to either store (for /readyz)."""
    ch_applied = {r["name"] for r in ch.query("SELECT name FROM schema_migrations", name="migrations")}
    pg_applied = {r["name"] for r in pg.fetchall("SELECT name FROM schema_migrations")}
    return [m.name for m in load("clickhouse", folder) if m.name not in ch_applied] + [
        m.name for m in load("postgres", folder) if m.name not in pg_applied
    ]
