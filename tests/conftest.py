"""Fixtures: the fake provider and a real in-process proxy in front of it, on loopback."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import pytest

from proxy.config import ProxyConfig
from proxy.server import RunningProxy, running
from proxy.upstreams import OpenAIUpstream, Upstreams
from tests.fake_upstream import FakeUpstream

API_KEY = "sk-test-0123456789abcdefSECRET"


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream().running() as fake:
        yield fake


def config_for(upstream_url: str, **overrides: Any) -> ProxyConfig:
    config = ProxyConfig(upstreams=Upstreams(default=OpenAIUpstream(upstream_url + "/v1")), port=0)
    return dataclasses.replace(config, **overrides)


@contextlib.asynccontextmanager
async def proxy_for(upstream: FakeUpstream, **overrides: Any) -> AsyncIterator[RunningProxy]:
    async with running(config_for(upstream.url, **overrides)) as proxy:
        yield proxy


@pytest.fixture
async def proxy(upstream: FakeUpstream) -> AsyncIterator[RunningProxy]:
    async with proxy_for(upstream) as running_proxy:
        yield running_proxy
