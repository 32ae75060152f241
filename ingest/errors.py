"""The one error hierarchy: each maps to a status and a JSON body {"error": "..."} saying what was wrong."""

from __future__ import annotations

from typing import Any


class HttpError(Exception):
    status = 500

    def __init__(self, message: str, *, headers: dict[str, str] | None = None, extra: dict[str, Any] | None = None):
        super().__init__(message)
        self.message = message
        self.headers = headers or {}
        self.extra = extra or {}

    def body(self) -> dict[str, Any]:
        return {"error": self.message, **self.extra}


class IngestError(HttpError):
    status = 400


class Unauthorized(HttpError):
    status = 401


class Forbidden(HttpError):
    status = 403


class NotFound(HttpError):
    status = 404


class PayloadTooLarge(HttpError):
    status = 413


class Unavailable(HttpError):
    """A store llmlens needs is not answering; nothing was changed, so the client may retry."""

    status = 503

    def __init__(self, message: str):
        super().__init__(message, headers={"Retry-After": "5"})


class SpoolFullError(HttpError):
    status = 503

    def __init__(self, message: str = "llmlens cannot accept events right now: its spool is full; retry later"):
        super().__init__(message, headers={"Retry-After": "5"})
