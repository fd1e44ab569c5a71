"""Production-like traffic for the optimizer's tests: a proxy with a registry that
captures content and writes spans, the official SDK as the app, and feedback."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import openai

from flywheel.registry import Registry
from proxy.content import CaptureContent
from proxy.server import RunningProxy, running
from proxy.tracing import Export
from tests.conftest import API_KEY, config_for
from tests.fake_upstream import FakeUpstream


@contextlib.asynccontextmanager
async def recording(
    upstream: FakeUpstream, registry: Registry, spans: Path
) -> AsyncIterator[tuple[RunningProxy, openai.AsyncOpenAI]]:
    """A proxy (content redacted, spans to ``spans``) and an SDK client pointed at it."""
    config = config_for(
        upstream.url, registry=registry, capture_content=CaptureContent.REDACTED, export=Export(spans_file=spans)
    )
    async with running(config) as proxy:
        async with openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key=API_KEY, max_retries=0) as client:
            yield proxy, client


async def ask(client: openai.AsyncOpenAI, prompt: str, key: str, question: str, model: str = "m") -> tuple[str, str]:
    """One call of ``prompt`` for user ``key``: (request id, arm)."""
    raw = await client.chat.completions.with_raw_response.create(
        model=model,
        messages=[{"role": "user", "content": question}],
        extra_headers={"X-Prompt-Name": prompt, "X-Prompt-Key": key},
    )
    return raw.headers["X-Request-Id"], raw.headers["X-Prompt-Arm"]


async def give_feedback(proxy: RunningProxy, bodies: Iterable[Mapping[str, Any]]) -> None:
    async with aiohttp.ClientSession() as session:
        for body in bodies:
            async with session.post(proxy.url + "/v1/feedback", json=dict(body)) as r:
                assert r.status == 202, await r.text()
