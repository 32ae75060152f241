"""The llmlens command, run as a user runs it (a subprocess), against a real PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from llmlens.app import Services
from storage.controlplane import KeyCache

COMMANDS = [[], ["serve"], ["demo"], ["import"], ["migrate"], ["keys"], ["keys", "create"], ["keys", "list"], ["keys", "revoke"],
            ["users"], ["users", "create"], ["pricing"], ["pricing", "show"], ["pricing", "reprice"]]


def run(args: list[str], env: dict[str, str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "llmlens.cli", *args], env={**os.environ, **env}, input=stdin,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "llmlens")
def test_help_on_every_command(command: list[str]) -> None:
    r = run([*command, "--help"], {})
    assert r.returncode == 0 and r.stdout.startswith("usage: llmlens"), r.stderr


def test_keys_create_list_revoke(tmp_path: Path, pg_dsn: str, services: Services) -> None:
    env = {"LLMLENS_DATA_DIR": str(tmp_path), "LLMLENS_DATABASE_URL": pg_dsn}
    services.control.create_key("existing")  # services migrated this database
    r = run(["keys", "create", "--name", "ci", "--org", "acme"], env)
    assert r.returncode == 0, r.stderr
    key = r.stdout.strip()
    assert r.stdout.count("\n") == 1 and key.startswith("sk-llmlens-") and len(key) > 30
    with psycopg.connect(pg_dsn) as conn:
        rows = conn.execute("SELECT * FROM api_keys").fetchall()
    assert key not in repr(rows)  # only a hash is stored
    listed = run(["keys", "list", "--org", "acme"], env)
    assert listed.returncode == 0 and key not in listed.stdout
    lines = listed.stdout.strip().splitlines()
    assert len(lines) == 2 and " acme " in lines[1] and " ci " in lines[1] and lines[1].endswith("active")
    key_id = lines[1].split()[0]
    cache = KeyCache(services.control, ttl_s=30)
    assert cache.lookup(key) is not None
    assert run(["keys", "revoke", key_id], env).stdout.strip() == f"revoked {key_id}"
    assert KeyCache(services.control, ttl_s=30).lookup(key) is None
    again = run(["keys", "revoke", key_id], env)
    assert (again.returncode, again.stderr.strip()) == (1, f"llmlens: no active key with id {key_id!r}")
    assert run(["keys", "list", "--org", "acme"], env).stdout.strip().splitlines()[1].endswith("revoked")


def test_users_create(tmp_path: Path, pg_dsn: str, services: Services) -> None:
    env = {"LLMLENS_DATA_DIR": str(tmp_path), "LLMLENS_DATABASE_URL": pg_dsn}
    r = run(["users", "create", "--email", "Ada@Example.com", "--password-stdin"], env, "correct horse battery\n")
    assert r.returncode == 0 and r.stdout.startswith("created user ada@example.com (usr_"), r.stderr
    with psycopg.connect(pg_dsn) as conn:
        (hashed,) = conn.execute("SELECT password_hash FROM users WHERE email = 'ada@example.com'").fetchone()  # type: ignore[misc]
    assert hashed.startswith("$argon2id$") and "correct horse" not in hashed
    assert services.control.verify_user("ada@example.com", "correct horse battery") is not None
    assert services.control.verify_user("ada@example.com", "wrong") is None
    for args, stdin, message in [
        (["--email", "not-an-email", "--password-stdin"], "long enough pw\n", "llmlens: 'not-an-email' is not an email address"),
        (["--email", "b@example.com", "--password-stdin"], "short\n", "llmlens: the password must have at least 8 characters"),
        (["--email", "ada@example.com", "--password-stdin"], "another long one\n", "llmlens: a user ada@example.com already exists"),
        (["--email", "c@example.com"], None, "llmlens: pass the password on standard input with --password-stdin"),
    ]:
        r = run(["users", "create", *args], env, stdin)
        assert (r.returncode, r.stderr.strip()) == (2, message)


def test_cli_on_embedded_defaults(tmp_path: Path) -> None:
    """No LLMLENS_DATABASE_URL: the embedded PostgreSQL under the data dir, shared by successive processes."""
    env = {"LLMLENS_DATA_DIR": str(tmp_path / "d")}
    env.pop("LLMLENS_DATABASE_URL", None)
    created = run(["keys", "create", "--name", "first"], env)
    assert created.returncode == 0, created.stderr
    listed = run(["keys", "list"], env)
    assert listed.returncode == 0 and " first " in listed.stdout
    assert (tmp_path / "d" / "postgres" / "PG_VERSION").exists()
    migrated = run(["migrate"], env)
    assert migrated.returncode == 0 and migrated.stdout.startswith("applied: 0001_request_events.sql")
    assert run(["migrate"], env).stdout.strip() == "nothing to apply; both stores are up to date"


def test_pricing_show(tmp_path: Path) -> None:
    r = run(["pricing", "show", "gpt-4o-2024-08-06", "--provider", "openai"], {})
    assert r.returncode == 0 and r.stdout.splitlines()[:3] == [
        "model:        gpt-4o (openai)", "input:        $2.5 / 1M tokens", "output:       $10 / 1M tokens"]
    assert r.stdout.strip().splitlines()[-1].startswith("source:       genai-prices ")
    prices = tmp_path / "p.toml"
    prices.write_text('[[price]]\nmodel = "house-*"\ninput_per_mtok = 1\noutput_per_mtok = "2"\n')
    r = run(["pricing", "show", "house-llm"], {"LLMLENS_PRICES_FILE": str(prices)})
    assert r.stdout.strip().splitlines()[-1] == f"source:       override {prices}"
    r = run(["pricing", "show", "no-such-model"], {})
    assert (r.returncode, r.stderr.strip()) == (1, "llmlens: no price known for model 'no-such-model'; add it to LLMLENS_PRICES_FILE")


def test_demo_fills_the_store_through_the_write_path(tmp_path: Path) -> None:
    env = {"LLMLENS_DATA_DIR": str(tmp_path / "d")}
    r = run(["demo", "--events", "3000"], env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == ("added 3000 synthetic events over the last 30 days to org default; "
                                "start `llmlens serve` and open the dashboard")
    assert list((tmp_path / "d" / "spool").glob("seg-*")) == []  # everything reached ClickHouse
    r = run(["demo", "--events", "10"], env)  # a second run adds traffic, not a second set of templates
    assert r.returncode == 0, r.stderr
    from dashboard.prompts import registered
    from storage.postgres import connect

    pg = connect("", tmp_path / "d")
    try:
        assert [(v["version"], v["note"], v["created_by"]) for v in registered(pg, "default", "support-answer")] == [
            (1, "first cut", "llmlens demo"), (2, "shorter answers", "llmlens demo"), (3, "cite sources", "llmlens demo")]
    finally:
        pg.close()
