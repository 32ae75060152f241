from __future__ import annotations

from pathlib import Path

import pytest

from ingest.spool import Spool, SpoolFull


def test_segments_replay_in_order_after_reopen(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=10_000)
    spool.append(b'{"a":1}\n', 1)
    first = spool.seal()
    spool.append(b'{"a":2}\n{"a":3}\n', 2)
    second = spool.seal()
    spool.append(b'{"a":4}\n', 1)  # left open, as at a crash
    fd = spool.sync_target()
    assert fd is not None
    spool.close()

    reopened = Spool(tmp_path, max_bytes=10_000)
    contents = []
    while (seg := reopened.oldest_sealed()) is not None:
        contents.append(seg.path.read_bytes())
        reopened.drop(seg)
    assert contents == [b'{"a":1}\n', b'{"a":2}\n{"a":3}\n', b'{"a":4}\n']
    assert first is not None and second is not None and first.seq < second.seq
    assert reopened.bytes_used == 0 and list(tmp_path.glob("seg-*")) == []


def test_quota_refuses_and_frees(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=20)
    spool.append(b"x" * 15, 1)
    with pytest.raises(SpoolFull, match="15 bytes of its 20 byte quota"):
        spool.append(b"y" * 10, 1)
    seg = spool.seal()
    assert seg is not None
    spool.drop(seg)
    spool.append(b"y" * 10, 1)
    assert spool.bytes_used == 10


def test_segment_tokens_are_unique(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1000)
    tokens = set()
    for _ in range(5):
        spool.append(b"{}\n", 1)
        seg = spool.seal()
        assert seg is not None
        tokens.add(seg.token)
        spool.drop(seg)
    assert len(tokens) == 5
