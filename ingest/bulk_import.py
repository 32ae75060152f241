"""`llmlens import`: backfill history from JSONL files (Helicone async-log bodies or llmlens's own export).

Resumable: after each durable chunk the byte offset reached is recorded under <data dir>/imports, and a rerun
continues from there. Idempotent: events keep their request ids (or, for Helicone bodies without one, an id derived
from the body), so importing a file twice counts every event once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import orjson

from ingest.log_api import events_from_items
from ingest.writer import Writer
from pricing.prices import PriceBook
from storage.controlplane import Principal

CHUNK = 5000


@dataclass
class ImportResult:
    imported: int = 0
    skipped_bytes: int = 0
    errors: list[str] = field(default_factory=list)
    error_count: int = 0


def _state_file(state_dir: Path, path: Path) -> Path:
    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]
    return state_dir / f"{digest}.offset"


async def import_file(
    path: Path, *, writer: Writer, prices: PriceBook, principal: Principal, state_dir: Path, max_body: int,
    progress: Callable[[int, int], None] | None = None, restart: bool = False,
) -> ImportResult:
    state_dir.mkdir(parents=True, exist_ok=True)
    state = _state_file(state_dir, path)
    offset = 0 if restart or not state.exists() else int(state.read_text().strip() or 0)
    size = path.stat().st_size
    result = ImportResult(skipped_bytes=offset)
    with open(path, "rb") as f:
        f.seek(offset)
        line_no = 0 if offset == 0 else None
        while True:
            lines = [f.readline() for _ in range(CHUNK)]
            lines = [line for line in lines if line]
            if not lines:
                break
            items, where = [], []
            for raw in lines:
                if line_no is not None:
                    line_no += 1
                if not raw.strip():
                    continue
                try:
                    items.append(orjson.loads(raw))
                    where.append(line_no)
                except orjson.JSONDecodeError as exc:
                    _error(result, line_no, f"not valid JSON: {exc}")
            events, errors = events_from_items(items, principal=principal, prices=prices, max_body=max_body,
                                               now=datetime.now(UTC))
            for e in errors:
                _error(result, where[e["index"]], e["error"])
            if events:
                await writer.submit(events, source="import")
            result.imported += len(events)
            offset = f.tell()
            state.write_text(str(offset))  # only after the chunk is durable in the spool
            if progress:
                progress(offset, size)
    return result


def _error(result: ImportResult, line: int | None, message: str) -> None:
    result.error_count += 1
    if len(result.errors) < 10:
        result.errors.append(f"line {line}: {message}" if line is not None else message)
