"""Spans the proxy finished, collected in memory (the SDK's exporter) and awaitable."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

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


VARIED_ATTRIBUTES = {
    "s": "text ü",
    "i": 7,
    "big": 2**62,
    "f": 0.25,
    "b": True,
    "list_s": ["stop", "length"],
    "list_i": [1, 2],
    "list_b": [True, False],
}


def varied_spans() -> list[ReadableSpan]:
    """Spans with every field an encoder must write: kinds, links, events, error status,
    a remote parent, attributes of each type."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "svc", "deployment.environment": "test"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("flywheel.proxy", "1.2.3")
    with tracer.start_as_current_span("parent", kind=SpanKind.SERVER) as parent:
        child = tracer.start_span(
            "chat gpt",
            kind=SpanKind.CLIENT,
            attributes=VARIED_ATTRIBUTES,
            links=[Link(parent.get_span_context(), {"why": "x"})],
        )
        child.add_event("first chunk", {"n": 1})
        child.set_status(Status(StatusCode.ERROR, "boom"))
        child.end()
    remote = trace.set_span_in_context(
        trace.NonRecordingSpan(trace.SpanContext(0xABC, 0xDEF, is_remote=True, trace_flags=trace.TraceFlags(1)))
    )
    tracer.start_span("evaluation", context=remote).end()
    return list(exporter.get_finished_spans())
