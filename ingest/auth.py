"""API-key authentication for ingest and API routes: `Helicone-Auth: Bearer <key>` or `Authorization: Bearer <key>`."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from ingest.errors import Unauthorized
from storage.controlplane import KeyCache, Principal

EXPECTED = "expected 'Bearer <llmlens API key>'"


def bearer(value: str, header: str) -> str:
    scheme, _, token = value.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized(f"{header} header is malformed; {EXPECTED}")
    return token


async def resolve(keys: KeyCache, token: str) -> Principal:
    hit, principal = keys.cached(token)
    if not hit:
        principal = await asyncio.to_thread(keys.lookup, token)
    if principal is None:
        raise Unauthorized("the API key is unknown or revoked")
    return principal


async def authenticate(keys: KeyCache, headers: Mapping[str, str], *, allow_authorization: bool = True) -> Principal:
    """The principal behind a request's key (`headers` looked up by lower-case name).

    On proxy routes `Authorization` carries the provider's key, so only `Helicone-Auth` counts there.
    """
    get = headers.get
    value = get("helicone-auth")
    header = "Helicone-Auth"
    if not value and allow_authorization:
        value, header = get("authorization"), "Authorization"
    if not value:
        where = "Helicone-Auth or Authorization" if allow_authorization else "Helicone-Auth"
        raise Unauthorized(f"{where} header is missing; {EXPECTED}")
    return await resolve(keys, bearer(value, header))
