"""Call spans assembled whole (``proxy.tracing.CallSpans``) still follow the SDK's
sampler and ``OTEL_SDK_DISABLED``, and still carry the app's trace upstream."""

from __future__ import annotations

import aiohttp
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

from proxy.server import running
from proxy.tracing import Tracing
from tests.conftest import config_for
from tests.fake_upstream import FakeUpstream
from tests.spans import SpanCollector

BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


async def _call(tracing: Tracing, upstream: FakeUpstream, headers: dict[str, str]) -> None:
    async with running(config_for(upstream.url), tracing) as proxy, aiohttp.ClientSession() as session:
        async with session.post(proxy.url + "/v1/chat/completions", json=BODY, headers=headers) as r:
            assert r.status == 200


async def test_a_sampler_that_drops_everything_is_obeyed(upstream: FakeUpstream) -> None:
    collector = SpanCollector()
    processor = SimpleSpanProcessor(collector)
    provider = TracerProvider(sampler=ALWAYS_OFF)
    provider.add_span_processor(processor)
    await _call(Tracing(provider, processor), upstream, {})
    assert collector.get_finished_spans() == ()
    sent = upstream.seen[-1].headers["traceparent"]
    assert sent.endswith("-00")  # propagated, marked not sampled


async def test_the_app_trace_continues_with_a_new_span(upstream: FakeUpstream) -> None:
    collector = SpanCollector()
    await _call(Tracing.around(SimpleSpanProcessor(collector)), upstream, {"traceparent": PARENT})
    span = await collector.one("chat")
    assert span.context is not None and span.parent is not None
    assert f"{span.context.trace_id:032x}" == PARENT.split("-")[1]
    assert f"{span.parent.span_id:016x}" == PARENT.split("-")[2] and span.parent.is_remote
    assert upstream.seen[-1].headers["traceparent"] == f"00-{PARENT.split('-')[1]}-{span.context.span_id:016x}-01"


async def test_sdk_disabled_records_nothing_and_sends_no_traceparent(
    upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    collector = SpanCollector()
    await _call(Tracing.around(SimpleSpanProcessor(collector)), upstream, {})
    assert collector.get_finished_spans() == ()
    assert "traceparent" not in upstream.seen[-1].headers


async def test_the_default_sampler_follows_an_unsampled_parent(upstream: FakeUpstream) -> None:
    collector = SpanCollector()
    unsampled = PARENT[:-2] + "00"
    headers = {"traceparent": unsampled, "tracestate": "vendor=1"}
    await _call(Tracing.around(SimpleSpanProcessor(collector)), upstream, headers)
    assert collector.get_finished_spans() == ()
    sent = upstream.seen[-1].headers
    assert sent["traceparent"].startswith(f"00-{PARENT.split('-')[1]}-") and sent["traceparent"].endswith("-00")
    assert sent["traceparent"].split("-")[2] != PARENT.split("-")[2]  # the proxy's own span id
    assert sent["tracestate"] == "vendor=1"
