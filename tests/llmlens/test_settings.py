from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from llmlens.settings import Settings, SettingsError


def test_defaults_and_parsing() -> None:
    s = Settings.from_env({
        "LLMLENS_PORT": "9000", "LLMLENS_SPOOL_MAX_BYTES": "1_000", "LLMLENS_BATCH_WAIT_S": "0.5",
        "LLMLENS_PRICES_AUTO_UPDATE": "true", "LLMLENS_GATEWAY_ALLOWED_HOSTS": " api.groq.com, *.example.com ",
        "LLMLENS_CLICKHOUSE_URL": "http://ch:8123/", "LLMLENS_DATABASE_URL": "host=/tmp dbname=x",
        "LLMLENS_DATA_DIR": "/srv/llmlens", "UNRELATED": "x",
    })
    assert (s.port, s.spool_max_bytes, s.batch_wait_s, s.prices_auto_update, s.gateway_allowed_hosts,
            s.clickhouse_url, s.database_url, s.data_dir, s.chdb_dir) == (
        9000, 1000, 0.5, True, ("api.groq.com", "*.example.com"), "http://ch:8123", "host=/tmp dbname=x",
        Path("/srv/llmlens"), Path("/srv/llmlens/chdb"))
    assert Settings.from_env({}) == Settings()


@pytest.mark.parametrize(("env", "message"), [
    ({"LLMLENS_SPOOL_MAX_BYTES": "10x"}, "LLMLENS_SPOOL_MAX_BYTES has value '10x'; expected an integer"),
    ({"LLMLENS_PORT": "-1"}, "LLMLENS_PORT has value '-1'; expected a non-negative integer"),
    ({"LLMLENS_BATCH_WAIT_S": "0"}, "LLMLENS_BATCH_WAIT_S has value '0'; expected a positive number"),
    ({"LLMLENS_PRICES_AUTO_UPDATE": "maybe"}, "LLMLENS_PRICES_AUTO_UPDATE has value 'maybe'; expected true or false"),
    ({"LLMLENS_CLICKHOUSE_URL": "ch:8123"}, "LLMLENS_CLICKHOUSE_URL has value 'ch:8123'; expected a URL such as https://host:port"),
    ({"LLMLENS_DATABASE_URL": "mysql"}, "LLMLENS_DATABASE_URL has value 'mysql'; expected postgresql://user:password@host:5432/db"),
    ({"LLMLENS_CLICKHOUSE_DATABASE": "a-b"}, "LLMLENS_CLICKHOUSE_DATABASE has value 'a-b'; expected a database name of letters, digits and _"),
    ({"LLMLENS_UPSTREAM_TRANSPORT": "curl"}, "LLMLENS_UPSTREAM_TRANSPORT has value 'curl'; expected one of aiohttp, httpx"),
    ({"LLMLENS_GATEWAY_ALLOWED_HOSTS": "ok.com,bad host"}, "LLMLENS_GATEWAY_ALLOWED_HOSTS has value 'ok.com,bad host'; 'bad host' is not a host name"),
])
def test_bad_values_name_the_key_and_the_value(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env(env)
    assert str(info.value) == message


def test_serve_with_a_bad_setting_stops_with_the_message(tmp_path: Path) -> None:
    env = {**os.environ, "LLMLENS_DATA_DIR": str(tmp_path), "LLMLENS_SPOOL_MAX_BYTES": "10x"}
    r = subprocess.run([sys.executable, "-m", "llmlens.cli", "serve"], env=env, capture_output=True, text=True, timeout=60)
    assert (r.returncode, r.stderr.strip()) == (2, "llmlens: LLMLENS_SPOOL_MAX_BYTES has value '10x'; expected an integer")
