"""llmlens serving the proxy in front of fake providers, for the proxy and gateway-control tests."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import anthropic
import openai

from llmlens.app import Services, create_app, open_services
from llmlens.settings import Settings
from tests.fake_provider import FakeProvider
from tests.servers import serve

H = {
    "Helicone-Property-Team": "search",
    "Helicone-User-Id": "u42",
    "Helicone-Session-Id": "s-1",
    "Helicone-Session-Path": "/plan/search",
    "Helicone-Session-Name": "Research",
    "Helicone-Prompt-Id": "answer",
    "Helicone-Prompt-Version": "2",
}


@dataclasses.dataclass
class Proxied:
    url: str
    key: str
    fake: FakeProvider
    services: Services
    app: Any = None
    clients: list[Any] = dataclasses.field(default_factory=list)

    def proxy_tasks(self) -> list[Any]:
        """The proxy's background work (cache saves, budget charges) still in flight."""
        return list(self.app.proxy._tasks)

    def headers(self, **extra: str) -> dict[str, str]:
        return {"Helicone-Auth": f"Bearer {self.key}", **H, **extra}

    def openai(self, **extra: str) -> openai.OpenAI:
        client = openai.OpenAI(base_url=f"{self.url}/openai/v1", api_key="sk-provider-secret-123",
                               default_headers=self.headers(**extra), max_retries=0)
        self.clients.append(client)
        return client

    def anthropic(self, headers: dict[str, str] | None = None, **kw: Any) -> anthropic.Anthropic:
        client = anthropic.Anthropic(base_url=f"{self.url}/anthropic", default_headers=self.headers(**(headers or {})),
                                     max_retries=0, **kw)
        self.clients.append(client)
        return client

    def events(self, n: int, timeout: float = 15.0) -> list[dict[str, Any]]:
        """Wait until n events are stored; return them oldest first with every column."""
        deadline = time.monotonic() + timeout
        while True:
            rows = self.services.ch.query(
                "SELECT * EXCEPT (updated_at, schema_version) FROM request_events FINAL ORDER BY created_at, request_id")
            if len(rows) >= n or time.monotonic() > deadline:
                return rows
            time.sleep(0.05)


@contextmanager
def running(settings: Settings, fake: FakeProvider, *others: FakeProvider) -> Iterator[Proxied]:
    """llmlens in front of `fake`, with every fake provider's address on the gateway allow-list."""
    allowed = tuple(f"127.0.0.1:{f.url.rsplit(':', 1)[1]}" for f in (fake, *others))
    s = dataclasses.replace(
        settings, openai_base_url=fake.url, anthropic_base_url=fake.url,
        gateway_allowed_hosts=("api.together.xyz", *allowed),
    )
    services = open_services(s)
    key = services.control.create_key("proxy")[1]
    app = create_app(s, services)
    with serve(app) as url:
        p = Proxied(url, key, fake, services, app)
        yield p
        for client in p.clients:
            client.close()
    services.pg.close()
