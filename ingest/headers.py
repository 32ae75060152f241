"""Helicone-* header parsing, shared by the proxy and the async-log endpoints (one implementation)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

# Helicone accepts v1-5 UUIDs as a client-chosen request id (worker/src/lib/models/HeliconeHeaders.ts).
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[1-5][0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$", re.I)
PROPERTY_PREFIX = "helicone-property-"
MAX_VALUE = 4096

# Credentials and hop-by-hop headers: never stored (credentials) or never forwarded (hop-by-hop, RFC 9110 §7.6.1).
CREDENTIAL_HEADERS = frozenset({
    "authorization", "x-api-key", "api-key", "proxy-authorization", "cookie", "set-cookie", "helicone-auth",
    "openai-organization", "openai-project", "x-goog-api-key", "helicone-openai-api-base",
})
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade",
    "proxy-authenticate", "proxy-authorization",
})


@dataclass(slots=True)
class HeliconeMeta:
    """What the Helicone-* headers of one request say."""

    auth: str = ""
    request_id: str = ""
    user_id: str = ""
    session_id: str = ""
    session_path: str = ""
    session_name: str = ""
    prompt_id: str = ""
    prompt_version: str = ""
    model_override: str = ""
    target_url: str = ""
    openai_api_base: str = ""
    omit_request: bool = False
    omit_response: bool = False
    properties: dict[str, str] = field(default_factory=dict)
    # Gateway controls (cache, retries, fallbacks, rate limits), by lower-case header name; empty for most calls.
    controls: dict[str, str] = field(default_factory=dict)


CONTROL_PREFIXES = ("helicone-cache-", "helicone-retry-", "helicone-ratelimit-policy", "helicone-fallbacks")


def _true(value: str) -> bool:
    return value.strip().lower() == "true"


def parse(pairs: Iterable[tuple[str, str]]) -> HeliconeMeta:
    """Read Helicone headers from (name, value) pairs; names compared case-insensitively.

    Property names are lower-cased, as HTTP/1.1 servers (and Cloudflare, where Helicone runs) deliver header
    names, so `Helicone-Property-Team` and a meta key `Helicone-Property-team` both become property `team`.
    """
    meta = HeliconeMeta()
    for raw_name, raw_value in pairs:
        name = raw_name.lower()
        if not name.startswith("helicone-"):
            continue
        value = str(raw_value)[:MAX_VALUE]
        if name.startswith(PROPERTY_PREFIX):
            key = name[len(PROPERTY_PREFIX):]
            if key:
                meta.properties[key] = value
            continue
        match name:
            case "helicone-auth":
                meta.auth = value
            case "helicone-request-id":
                meta.request_id = value.strip().lower() if _UUID.match(value.strip()) else ""
            case "helicone-user-id":
                meta.user_id = value
            case "helicone-session-id":
                meta.session_id = value
            case "helicone-session-path":
                meta.session_path = value
            case "helicone-session-name":
                meta.session_name = value
            case "helicone-prompt-id":
                meta.prompt_id = value
            case "helicone-prompt-version":
                meta.prompt_version = value
            case "helicone-model-override":
                meta.model_override = value
            case "helicone-target-url":
                meta.target_url = value.strip()
            case "helicone-openai-api-base":
                meta.openai_api_base = value.strip()
            case "helicone-omit-request":
                meta.omit_request = _true(value)
            case "helicone-omit-response":
                meta.omit_response = _true(value)
            case _ if name.startswith(CONTROL_PREFIXES):
                meta.controls[name] = value
    return meta


def storable(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Headers worth keeping with an event: no credentials, no Helicone control headers."""
    return {
        n: v for n, v in ((n.lower(), v) for n, v in pairs)
        if n not in CREDENTIAL_HEADERS and not n.startswith("helicone-")
    }
