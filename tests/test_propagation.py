"""``OTEL_PROPAGATORS``: which trace headers the proxy reads from the app and writes to the
provider, as the OpenTelemetry SDK reads the variable (B3 through the real
opentelemetry-propagator-b3 package)."""

from __future__ import annotations

import argparse

import openai
import pytest

from proxy.config import ConfigError, add_arguments, from_args
from proxy.propagation import Propagators
from tests.conftest import API_KEY
from tests.fake_upstream import FakeUpstream
from tests.spans import traced_proxy

TRACE_ID, PARENT_ID = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
B3_MULTI = {"X-B3-TraceId": TRACE_ID, "X-B3-SpanId": PARENT_ID, "X-B3-Sampled": "1"}
MESSAGES = [{"role": "user", "content": "Hello there"}]


async def _chat(url: str, headers: dict[str, str]) -> None:
    async with openai.AsyncOpenAI(base_url=url + "/v1", api_key=API_KEY, max_retries=0) as client:
        await client.chat.completions.create(model="m", messages=MESSAGES, extra_headers=headers)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "names"),
    [
        ("", ("tracecontext", "baggage")),  # the SDK's default
        ("tracecontext", ("tracecontext",)),
        (" b3multi , tracecontext ,", ("b3multi", "tracecontext")),
        ("tracecontext,none", ()),  # none anywhere: no propagation, as in the SDK
        ("None", ()),
    ],
)
def test_the_variable_is_read_as_the_sdk_reads_it(value: str, names: tuple[str, ...]) -> None:
    assert Propagators.from_environ({"OTEL_PROPAGATORS": value}).names == names


def test_a_propagator_no_package_provides_stops_start_up_with_the_package_named() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--upstream", "http://127.0.0.1:9/v1"])
    with pytest.raises(ConfigError, match="'jaeger'.*pip install opentelemetry-propagator-jaeger"):
        from_args(args, {"OTEL_PROPAGATORS": "tracecontext,jaeger"})
    with pytest.raises(ConfigError, match="OTEL_PROPAGATORS.*'w3c'"):
        from_args(args, {"OTEL_PROPAGATORS": "w3c"})
    assert from_args(args, {"OTEL_PROPAGATORS": "b3"}).propagators.names == ("b3",)


async def test_b3_headers_are_the_parent_and_go_upstream_beside_traceparent(upstream: FakeUpstream) -> None:
    propagators = Propagators(("tracecontext", "baggage", "b3multi"))
    async with traced_proxy(upstream, propagators=propagators) as traced:
        await _chat(traced.url, B3_MULTI | {"baggage": "team=core, tier = gold"})
        span = await traced.spans.one("chat")
    assert format(span.context.trace_id, "032x") == TRACE_ID
    assert span.parent is not None and format(span.parent.span_id, "016x") == PARENT_ID
    sent, own = upstream.seen[-1].headers, format(span.context.span_id, "016x")
    assert (sent["X-B3-TraceId"], sent["X-B3-SpanId"], sent["X-B3-Sampled"]) == (TRACE_ID, own, "1")
    assert sent["traceparent"] == f"00-{TRACE_ID}-{own}-01"
    assert sent["baggage"] == "team=core, tier = gold"  # as the app sent it, never rewritten


async def test_the_last_propagator_that_finds_a_parent_wins(upstream: FakeUpstream) -> None:
    other_trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    b3_single = f"{other_trace}-00f067aa0ba902b7-1"
    async with traced_proxy(upstream, propagators=Propagators(("tracecontext", "b3"))) as traced:
        await _chat(traced.url, {"traceparent": TRACEPARENT, "b3": b3_single})
        span = await traced.spans.one("chat")
    assert format(span.context.trace_id, "032x") == other_trace
    sent = upstream.seen[-1].headers
    assert sent["b3"] == f"{other_trace}-{format(span.context.span_id, '016x')}-1"
    assert sent["traceparent"].startswith(f"00-{other_trace}-")


async def test_b3_only_leaves_the_apps_traceparent_alone(upstream: FakeUpstream) -> None:
    async with traced_proxy(upstream, propagators=Propagators(("b3multi",))) as traced:
        await _chat(traced.url, {"traceparent": TRACEPARENT})
        span = await traced.spans.one("chat")
    assert span.parent is None and format(span.context.trace_id, "032x") != TRACE_ID  # not read
    sent = upstream.seen[-1].headers
    assert sent["traceparent"] == TRACEPARENT  # passed through, not written
    assert sent["X-B3-TraceId"] == format(span.context.trace_id, "032x")


async def test_none_turns_propagation_off(upstream: FakeUpstream) -> None:
    async with traced_proxy(upstream, propagators=Propagators(())) as traced:
        await _chat(traced.url, {"traceparent": TRACEPARENT})
        span = await traced.spans.one("chat")
    assert span.parent is None and format(span.context.trace_id, "032x") != TRACE_ID
    sent = upstream.seen[-1].headers
    assert sent["traceparent"] == TRACEPARENT and "X-B3-TraceId" not in sent
