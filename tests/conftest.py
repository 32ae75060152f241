"""Shared fixtures: one embedded PostgreSQL and one chDB per test process; a database of each per test."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from llmlens.app import Services, create_app, open_services
from llmlens.settings import Settings
from storage import postgres
from tests.servers import serve


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> str:
    """DSN of the session's embedded PostgreSQL (or LLMLENS_TEST_DATABASE_URL)."""
    url = os.environ.get("LLMLENS_TEST_DATABASE_URL")
    if url:
        return url
    return postgres.embedded_dsn(tmp_path_factory.mktemp("pg"))


@pytest.fixture(scope="session")
def chdb_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("chdb")


@pytest.fixture
def pg_dsn(pg_server: str) -> str:
    """A fresh PostgreSQL database for this test."""
    name = "t_" + secrets.token_hex(6)
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return psycopg.conninfo.make_conninfo(pg_server, dbname=name)


@pytest.fixture
def settings(tmp_path: Path, pg_dsn: str, chdb_path: Path) -> Settings:
    """Settings for one test: its own data dir, PostgreSQL database and ClickHouse database."""
    return Settings(
        data_dir=tmp_path / "data",
        chdb_path=chdb_path,
        clickhouse_url=os.environ.get("LLMLENS_TEST_CLICKHOUSE_URL", ""),
        clickhouse_database="t_" + secrets.token_hex(6),
        database_url=pg_dsn,
        batch_wait_s=0.05,
    )


@pytest.fixture
def services(settings: Settings) -> Iterator[Services]:
    svc = open_services(settings)
    yield svc
    svc.pg.close()


@pytest.fixture
def server(settings: Settings, services: Services) -> Iterator[str]:
    """llmlens itself, served on loopback; yields its base URL."""
    with serve(create_app(settings, services)) as url:
        yield url


@pytest.fixture
def api_key(services: Services) -> str:
    return services.control.create_key("test")[1]
