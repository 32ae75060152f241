"""Both ClickHouse backends run the same storage checks: chDB always; a server when LLMLENS_TEST_CLICKHOUSE_URL is set."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from storage.clickhouse import ChdbBackend, ClickHouse, ClickHouseError, ServerBackend

SERVER = os.environ.get("LLMLENS_TEST_CLICKHOUSE_URL", "")


@pytest.fixture(params=["chdb", "server"])
def ch(request: pytest.FixtureRequest, chdb_path: Path) -> Iterator[ClickHouse]:
    db = "t_" + secrets.token_hex(6)
    if request.param == "server":
        if not SERVER:
            pytest.skip("LLMLENS_TEST_CLICKHOUSE_URL is not set (no ClickHouse server on this machine)")
        backend: ClickHouse = ServerBackend(SERVER, db)
    else:
        backend = ChdbBackend(chdb_path, db)
    backend.command("CREATE TABLE t (id String, n UInt64, at DateTime64(3, 'UTC')) ENGINE = MergeTree ORDER BY id"
                    " SETTINGS non_replicated_deduplication_window = 100")
    yield backend
    backend.close()


def test_parameters_inserts_and_dedup_tokens(ch: ClickHouse, tmp_path: Path) -> None:
    rows = b'{"id": "a", "n": 18446744073709551615, "at": "2026-11-22T10:00:00.123+00:00"}\n{"id": "b", "n": 2, "at": "2026-11-22 10:00:01.5"}\n'
    ch.insert_jsonl("t", rows, "tok-1")
    ch.insert_jsonl("t", rows, "tok-1")  # a retried insert of the same segment is dropped by ClickHouse
    f = tmp_path / "seg.jsonl"
    f.write_bytes(b'{"id": "c", "n": 3, "at": "2026-11-22T10:00:02Z"}\n')
    ch.insert_file("t", f, "tok-2")
    got = ch.query("SELECT id, n, toString(at) AS at FROM t WHERE id != {skip:String} ORDER BY id", {"skip": "zzz"})
    assert got == [{"id": "a", "n": 18446744073709551615, "at": "2026-11-22 10:00:00.123"},
                   {"id": "b", "n": 2, "at": "2026-11-22 10:00:01.500"},
                   {"id": "c", "n": 3, "at": "2026-11-22 10:00:02.000"}]


def test_errors_say_whether_the_data_or_the_store_is_at_fault(ch: ClickHouse) -> None:
    with pytest.raises(ClickHouseError) as bad:
        ch.insert_jsonl("t", b'{"id": "x", "n": "not a number"}\n')
    assert bad.value.bad_data is True
    with pytest.raises(ClickHouseError) as gone:
        ch.insert_jsonl("missing_table", b'{"id": "x"}\n')
    assert gone.value.bad_data is False


def test_string_parameters_arrive_exactly(ch: ClickHouse) -> None:
    tricky = "a\\b \\n\t tab\nline 'quote' `tick` \"dq\" {\"k\": \"v\\\"\"} ü"
    assert ch.query("SELECT {s:String} AS s, length({s:String}) AS n", {"s": tricky}) == [
        {"s": tricky, "n": len(tricky.encode())}]
