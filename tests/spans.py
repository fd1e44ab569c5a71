"""Spans the proxy finished, collected in memory (the SDK's exporter) and awaitable."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Sequence
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from proxy.server import RunningProxy, running
from proxy.tracing import Tracing
from tests.conftest import config_for
from tests.fake_upstream import FakeUpstream


class SpanCollector(InMemorySpanExporter):
    """Exports synchronously on the event loop's thread (SimpleSpanProcessor), so a test
    can await the n-th span instead of sleeping."""

    def __init__(self) -> None:
        super().__init__()
        self._arrived = asyncio.Event()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        result = super().export(spans)
        self._arrived.set()
        return result

    async def wait_for(self, count: int, name_prefix: str = "", timeout: float = 10) -> list[ReadableSpan]:
        async def until() -> list[ReadableSpan]:
            while True:
                found = [s for s in self.get_finished_spans() if s.name.startswith(name_prefix)]
                if len(found) >= count:
                    return found
                self._arrived.clear()
                await self._arrived.wait()

        return await asyncio.wait_for(until(), timeout)

    async def one(self, name_prefix: str = "") -> ReadableSpan:
        return (await self.wait_for(1, name_prefix))[-1]


@dataclasses.dataclass
class Traced:
    proxy: RunningProxy
    spans: SpanCollector
    provider: TracerProvider

    @property
    def url(self) -> str:
        return self.proxy.url


@contextlib.asynccontextmanager
async def traced_proxy(upstream: FakeUpstream, **overrides: Any) -> AsyncIterator[Traced]:
    collector = SpanCollector()
    tracing = Tracing.around(SimpleSpanProcessor(collector))
    async with running(config_for(upstream.url, **overrides), tracing) as proxy:
        yield Traced(proxy, collector, tracing.provider)
