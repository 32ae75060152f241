"""Crash safety: events acknowledged with 202 survive kill -9 of the server; a restart neither loses nor doubles any."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from storage.controlplane import ControlPlane
from storage.migrate import migrate_postgres
from storage.postgres import Postgres

N_REQUESTS = 40
PER_REQUEST = 25


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(data_dir: Path, pg_dsn: str, port: int, *, batch_wait_s: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "LLMLENS_DATA_DIR": str(data_dir),
        "LLMLENS_DATABASE_URL": pg_dsn,
        "LLMLENS_BATCH_WAIT_S": batch_wait_s,
        "LLMLENS_LOG_LEVEL": "warning",
    }
    log = data_dir.parent / "server.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "llmlens.cli", "serve", "--port", str(port)], env=env, stdout=out, stderr=out
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(log.read_text())
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("server did not start")


def count_all(url: str, key: str) -> list[str]:
    ids: list[str] = []
    cursor = None
    while True:
        params = {"limit": "1000", **({"cursor": cursor} if cursor else {})}
        body = httpx.get(f"{url}/api/v1/requests", params=params, headers={"Authorization": f"Bearer {key}"}).json()
        ids += [r["request_id"] for r in body["data"]]
        cursor = body["next_cursor"]
        if cursor is None:
            return ids


def test_acknowledged_events_survive_kill_9(tmp_path: Path, pg_dsn: str) -> None:
    pg = Postgres(pg_dsn)
    migrate_postgres(pg)
    key = ControlPlane(pg).create_key("crash")[1]
    port = free_port()
    # A long batch wait keeps acknowledged events in the spool (not yet in ClickHouse) when the kill lands.
    proc = start(tmp_path / "d", pg_dsn, port, batch_wait_s="30")
    url = f"http://127.0.0.1:{port}"
    sent = []
    try:
        with httpx.Client(headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
            for r in range(N_REQUESTS):
                batch = [
                    {"request_id": f"crash-{r}-{i}", "created_at": "2026-11-21T08:00:00Z", "model": "gpt-4o", "status": 200}
                    for i in range(PER_REQUEST)
                ]
                resp = client.post(f"{url}/api/v1/logs", json=batch)
                assert resp.status_code == 202, resp.text
                sent += [e["request_id"] for e in batch]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    assert list((tmp_path / "d" / "spool").glob("seg-*.jsonl")), "the kill should land before the batch was inserted"
    proc = start(tmp_path / "d", pg_dsn, port, batch_wait_s="0.05")
    try:
        deadline = time.monotonic() + 30
        ids = count_all(url, key)
        while len(ids) < len(sent) and time.monotonic() < deadline:
            time.sleep(0.2)
            ids = count_all(url, key)
        assert sorted(ids) == sorted(sent)
        assert len(ids) == N_REQUESTS * PER_REQUEST
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
