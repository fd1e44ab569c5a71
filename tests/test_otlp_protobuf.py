"""The OTLP protobuf encoder writes what the SDK's encoder writes, message for message."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as sdk_encode
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, TraceFlags, TraceState

from proxy.otlp_protobuf import ProtobufEncoder
from proxy.tracing import SCOPE, CallSpans, Tracing
from tests.spans import SpanCollector, varied_spans


def parsed(payload: bytes) -> ExportTraceServiceRequest:
    return ExportTraceServiceRequest.FromString(payload)


def test_matches_the_sdk_encoder_on_every_kind_of_field() -> None:
    spans = varied_spans()
    assert parsed(ProtobufEncoder().encode(spans)) == sdk_encode(spans)


def test_call_spans_as_the_proxy_assembles_them() -> None:
    """Tuples of finish reasons, a trace state, the error status, two resources."""
    collector = SpanCollector()
    call_spans = CallSpans(Tracing.around(SimpleSpanProcessor(collector)))
    state = TraceState([("vendor", "v1")])
    parent = trace.set_span_in_context(trace.NonRecordingSpan(SpanContext(0x1234, 0x5678, True, TraceFlags(1), state)))
    opened = call_spans.start(parent, "chat gpt-4o-mini", 1_700_000_000_000_000_000)
    attributes = {
        "gen_ai.operation.name": "chat",
        "gen_ai.response.finish_reasons": ("stop", "length"),
        "gen_ai.usage.input_tokens": 25,
        "gen_ai.request.temperature": 0.5,
        "gen_ai.request.stream": False,
        "server.port": 443,
    }
    call_spans.end(opened, "chat gpt-4o-mini", attributes, True)
    other = ReadableSpan(
        "embeddings x",
        SpanContext(1, 2, False, TraceFlags(1)),
        resource=Resource.create({"service.name": "other"}),
        kind=SpanKind.CLIENT,
        start_time=5,
        end_time=6,
        instrumentation_scope=SCOPE,
    )
    spans = [*collector.get_finished_spans(), other]
    assert parsed(ProtobufEncoder().encode(spans)) == sdk_encode(spans)


def test_repeated_pairs_come_from_the_cache_and_keep_their_type() -> None:
    encoder = ProtobufEncoder()
    first = _span({"flag": True, "count": 1, "ratio": 1.0, "name": "a"})
    second = _span({"flag": 1, "count": True, "ratio": 1, "name": "a"})  # equal values, other types
    for span in (first, second, first):
        assert parsed(encoder.encode([span])) == sdk_encode([span])


def test_the_cache_stays_bounded_and_right_with_unique_values() -> None:
    encoder = ProtobufEncoder()
    for i in range(5000):
        span = _span({"flywheel.request_id": f"req-{i}", "gen_ai.operation.name": "chat"})
        payload = encoder.encode([span])
        if i % 997 == 0:
            assert parsed(payload) == sdk_encode([span])
    assert len(encoder._pairs) <= 257  # the request ids stopped being kept; "chat" still is


def test_serialized_requests_concatenate_into_one() -> None:
    encoder = ProtobufEncoder()
    a, b = _span({"n": 1}), _span({"n": 2})
    joined = parsed(encoder.encode([a]) + encoder.encode([b]))
    assert [s.attributes[0].value.int_value for s in _spans_of(joined)] == [1, 2]


scalars = st.one_of(
    st.text(max_size=20),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False),
)
values = st.one_of(
    scalars,
    st.lists(st.text(max_size=5), max_size=3).map(tuple),
    st.lists(st.integers(min_value=-(2**63), max_value=2**63 - 1), max_size=3).map(tuple),
    st.lists(st.booleans(), max_size=3).map(tuple),
)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(min_size=1, max_size=10), values, max_size=8), st.text(max_size=30))
def test_any_attributes_match_the_sdk(attributes: dict[str, Any], name: str) -> None:
    span = _span(attributes, name)
    encoder = ProtobufEncoder()
    assert parsed(encoder.encode([span])) == sdk_encode([span])
    assert parsed(encoder.encode([span])) == sdk_encode([span])  # again, from the cache


def _span(attributes: dict[str, Any], name: str = "chat m") -> ReadableSpan:
    return ReadableSpan(
        name,
        SpanContext(0xABCDEF, 0x123, False, TraceFlags(1)),
        resource=Resource.create({"service.name": "svc"}),
        attributes=attributes,
        kind=SpanKind.CLIENT,
        start_time=1_700_000_000_123_456_789,
        end_time=1_700_000_000_223_456_789,
        instrumentation_scope=InstrumentationScope("flywheel.proxy", "1.0"),
    )


def _spans_of(request: ExportTraceServiceRequest) -> list[Any]:
    return [s for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans]
