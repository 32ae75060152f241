"""The durable spool: append-only segment files of ClickHouse-ready rows, fsynced before an event is acknowledged."""

from __future__ import annotations

import os
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path


class SpoolFull(Exception):
    """The spool reached its disk quota; the event was not accepted."""


@dataclass(frozen=True, slots=True)
class Segment:
    seq: int
    path: Path

    @property
    def token(self) -> str:
        # Unique per segment for all time (random suffix), so ClickHouse can drop a re-inserted segment.
        return self.path.stem


class Spool:
    """Segments are named seg-<seq>-<random>.jsonl and replayed in seq order.

    The writer appends to the open segment, fsyncs it in groups, and seals it when a batch is due; a sealed
    segment is deleted only after ClickHouse has its rows. Not async: callers serialise access with `lock`.
    """

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.dir = directory
        self.max_bytes = max_bytes
        self.dir.mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()
        existing = sorted(self._scan(), key=lambda s: s.seq)
        self._sealed: list[Segment] = existing
        self._sizes = {s.seq: s.path.stat().st_size for s in existing}
        self._rows: dict[int, int] = {}
        self._next_seq = (existing[-1].seq + 1) if existing else 1
        self._open: Segment | None = None
        self._fd: int | None = None
        self._open_rows = 0
        self._unsynced = False

    def _scan(self) -> list[Segment]:
        out = []
        for p in self.dir.glob("seg-*.jsonl"):
            try:
                out.append(Segment(int(p.name.split("-")[1]), p))
            except (IndexError, ValueError):
                continue
        return out

    @property
    def bytes_used(self) -> int:
        return sum(self._sizes.values())

    @property
    def open_rows(self) -> int:
        return self._open_rows

    def append(self, data: bytes, rows: int) -> None:
        """Write rows to the open segment (durable after the next `sync`); SpoolFull beyond the quota."""
        if self.bytes_used + len(data) > self.max_bytes:
            raise SpoolFull(f"the spool holds {self.bytes_used} bytes of its {self.max_bytes} byte quota")
        if self._fd is None:
            name = f"seg-{self._next_seq:012d}-{secrets.token_hex(4)}.jsonl"
            self._open = Segment(self._next_seq, self.dir / name)
            self._next_seq += 1
            self._fd = os.open(self._open.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            self._sizes[self._open.seq] = 0
            _fsync_dir(self.dir)
        assert self._open is not None
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        self._sizes[self._open.seq] += len(data)
        self._rows[self._open.seq] = self._rows.get(self._open.seq, 0) + rows
        self._open_rows += rows
        self._unsynced = True

    def sync_target(self) -> int | None:
        """The descriptor a group commit should fsync, or None if nothing is pending (call under `lock`)."""
        if not self._unsynced or self._fd is None:
            return None
        self._unsynced = False
        return os.dup(self._fd)

    def seal(self) -> Segment | None:
        """Close the open segment (fsynced) and queue it for insertion."""
        if self._fd is None or self._open is None:
            return None
        os.fsync(self._fd)
        os.close(self._fd)
        seg = self._open
        self._fd, self._open, self._open_rows, self._unsynced = None, None, 0, False
        self._sealed.append(seg)
        return seg

    def oldest_sealed(self) -> Segment | None:
        return self._sealed[0] if self._sealed else None

    def rows_of(self, seg: Segment) -> int:
        """Rows in a sealed segment (counted from the file for segments replayed after a restart)."""
        rows = self._rows.get(seg.seq)
        if rows is None:
            with open(seg.path, "rb") as f:
                rows = sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
        return rows

    def drop(self, seg: Segment) -> None:
        """Forget an inserted segment."""
        self._sealed.remove(seg)
        self._sizes.pop(seg.seq, None)
        self._rows.pop(seg.seq, None)
        seg.path.unlink(missing_ok=True)

    @property
    def segments(self) -> int:
        return len(self._sealed) + (1 if self._open else 0)

    def close(self) -> None:
        if self._fd is not None:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None


def _fsync_dir(directory: Path) -> None:
    # A new file's directory entry must be durable too, or a crash can lose the whole segment.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
