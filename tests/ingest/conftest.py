"""Fixtures for proxy tests: a fake provider, and llmlens in front of it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from llmlens.settings import Settings
from tests.fake_provider import FakeProvider
from tests.proxied import Proxied, running


@pytest.fixture
def fake() -> Iterator[FakeProvider]:
    with FakeProvider() as fp:
        yield fp


@pytest.fixture
def proxied(settings: Settings, fake: FakeProvider) -> Iterator[Proxied]:
    with running(settings, fake) as p:
        yield p
