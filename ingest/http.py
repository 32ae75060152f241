"""Request bodies in, durable acknowledgements out: shared by every ingest endpoint."""

from __future__ import annotations

from starlette.requests import Request

from ingest.errors import IngestError, PayloadTooLarge, SpoolFullError
from ingest.event import RequestEvent
from ingest.spool import SpoolFull
from ingest.writer import Writer


async def read_body(request: Request, limit: int, *, setting: str = "LLMLENS_MAX_LOG_BYTES") -> bytes:
    """The request body, refusing (413) anything over `limit` bytes before reading it all.

    `setting` names where the limit comes from in the message (empty for a fixed limit).
    """
    where = f" ({setting})" if setting else ""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the body is {declared} bytes; the limit is {limit} bytes{where}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the body is over the limit of {limit} bytes{where}")
        chunks.append(chunk)
    body = b"".join(chunks)
    if request.headers.get("content-encoding", "").lower() == "gzip":
        body = gunzip(body, limit, where)
    return body


def gunzip(body: bytes, limit: int, where: str = " (LLMLENS_MAX_LOG_BYTES)") -> bytes:
    import zlib

    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = d.decompress(body, limit + 1)
    except zlib.error:
        raise IngestError("the body is not valid gzip") from None
    if len(out) > limit:
        raise PayloadTooLarge(f"the decompressed body is over the limit of {limit} bytes{where}")
    return out


async def submit_durably(writer: Writer, events: list[RequestEvent], source: str) -> None:
    try:
        await writer.submit(events, source=source)
    except SpoolFull:
        raise SpoolFullError() from None
