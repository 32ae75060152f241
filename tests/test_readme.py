"""The README stays honest: every setting, route and honoured Helicone header is documented there."""

from __future__ import annotations

import re
from pathlib import Path

from llmlens.app import Services, create_app
from llmlens.settings import Settings, documented

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()

HELICONE_HEADERS = [
    "Helicone-Auth", "Helicone-Property-", "Helicone-User-Id", "Helicone-Session-Id", "Helicone-Session-Path",
    "Helicone-Session-Name", "Helicone-Prompt-Id", "Helicone-Prompt-Version", "Helicone-Request-Id",
    "Helicone-Omit-Request", "Helicone-Omit-Response", "Helicone-Model-Override", "Helicone-Target-Url",
    "Helicone-OpenAI-Api-Base", "Helicone-Cache-Enabled", "Helicone-Cache-Save", "Helicone-Cache-Read",
    "Helicone-Cache-Bucket-Max-Size", "Helicone-Cache-Seed", "Helicone-Cache-Ignore-Keys", "Helicone-Retry-Enabled",
    "Helicone-Retry-Num", "Helicone-Retry-Factor", "Helicone-Retry-Min-Timeout", "Helicone-Retry-Max-Timeout",
    "Helicone-Fallbacks", "Helicone-RateLimit-Policy",
]


def test_every_setting_is_in_the_readme_with_its_default() -> None:
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| `(LLMLENS_[A-Z_]+)` \| ([^|]+) \|", README, re.M)}
    for name, default, _help in documented():
        assert name in rows, f"{name} is not in the README's configuration table"
        assert rows[name].strip() == (f"`{default}`" if default else "(empty)"), name
    assert set(rows) == {name for name, _, _ in documented()}, "the README lists a setting that does not exist"


def test_every_route_is_in_the_readme(settings: Settings, services: Services) -> None:
    app = create_app(settings, services)
    starlette = app.app.app  # type: ignore[attr-defined]  # Dispatch -> HttpMetrics -> Starlette
    paths = {re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path) for route in starlette.routes}  # drop converters
    missing = sorted(p for p in paths if f"`{p}`" not in README and f"`{p} " not in README and f"{p}`" not in README)
    assert missing == []
    for prefix in ("/openai/", "/anthropic/", "/gateway/"):
        assert f"`{prefix}<rest>`" in README


def test_every_honoured_helicone_header_is_in_the_readme() -> None:
    for header in HELICONE_HEADERS:
        assert header in README, header
