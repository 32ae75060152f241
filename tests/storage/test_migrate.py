"""The migration runner against real chDB and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmlens.app import Services
from storage.migrate import MigrationError, load, migrate_clickhouse, migrate_postgres, pending


def folder(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, sql in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(sql)
    return tmp_path


def test_bad_names_and_duplicates_are_refused(tmp_path: Path) -> None:
    bad = folder(tmp_path / "a", {"clickhouse/1_x.sql": "SELECT 1"})
    with pytest.raises(MigrationError, match="migration file name '1_x.sql' is not NNNN_name.sql"):
        load("clickhouse", bad)
    dup = folder(tmp_path / "b", {"postgres/0001_a.sql": "", "postgres/0001_b.sql": ""})
    with pytest.raises(MigrationError, match="two postgres migrations numbered 0001: 0001_a.sql, 0001_b.sql"):
        load("postgres", dup)


def test_applies_in_order_once_and_refuses_edits(tmp_path: Path, services: Services) -> None:
    f = folder(tmp_path, {
        "clickhouse/0002_b.sql": "INSERT INTO t_order VALUES (2)",
        "clickhouse/0001_a.sql": "CREATE TABLE IF NOT EXISTS t_order (n UInt8) ENGINE = MergeTree ORDER BY n;\n"
                                 "INSERT INTO t_order VALUES (1)",
        "postgres/0001_a.sql": "CREATE TABLE IF NOT EXISTS t_pg (n int); INSERT INTO t_pg VALUES (1);",
    })
    ch, pg = services.ch, services.pg
    assert migrate_clickhouse(ch, f) == ["0001_a.sql", "0002_b.sql"]
    assert migrate_clickhouse(ch, f) == []
    assert ch.query("SELECT n FROM t_order ORDER BY n") == [{"n": 1}, {"n": 2}]
    assert migrate_postgres(pg, f) == ["0001_a.sql"]
    assert migrate_postgres(pg, f) == []
    assert pg.fetchall("SELECT n FROM t_pg") == [{"n": 1}]
    (f / "clickhouse" / "0001_a.sql").write_text("SELECT 2")
    with pytest.raises(MigrationError, match="clickhouse migration 0001_a.sql changed after it was applied"):
        migrate_clickhouse(ch, f)
    (f / "postgres" / "0002_c.sql").write_text("SELECT 1;")
    assert pending(ch, pg, f) == ["0002_c.sql"]


def test_real_migrations_leave_nothing_pending(services: Services) -> None:
    assert pending(services.ch, services.pg) == []
