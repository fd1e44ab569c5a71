"""The spans file's encoder gives the document the SDK's own OTLP encoder gives
(through protobuf's JSON mapping, with OTLP/JSON's hex ids), and reads back whole."""

from __future__ import annotations

import base64
from typing import Any

import orjson
from google.protobuf.json_format import MessageToDict
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as protobuf_encode
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanContext, TraceFlags

from flywheel.spans import JsonEncoder, decode_line, encode_spans
from flywheel.spans.format import KeptPairs, _any_value
from tests.spans import VARIED_ATTRIBUTES, varied_spans


def _hex(record: dict[str, Any]) -> None:
    for key in ("traceId", "spanId", "parentSpanId"):
        if record.get(key):
            record[key] = base64.b64decode(record[key]).hex()


def test_encoder_matches_the_sdk_protobuf_encoding() -> None:
    spans = varied_spans()
    expected = MessageToDict(protobuf_encode(spans), use_integers_for_enums=True)
    for resource_spans in expected["resourceSpans"]:
        for scope_spans in resource_spans["scopeSpans"]:
            for span in scope_spans["spans"]:
                _hex(span)
                for link in span.get("links", ()):
                    _hex(link)
    assert orjson.loads(encode_spans(spans)) == expected


def test_decoded_spans_keep_every_field() -> None:
    spans = varied_spans()
    records = list(decode_line(encode_spans(spans)))
    assert [r.name for r in records] == ["chat gpt", "parent", "evaluation"]
    chat, parent, evaluation = records
    assert dict(chat.attributes) == VARIED_ATTRIBUTES
    assert chat.parent_span_id == parent.span_id and chat.trace_id == parent.trace_id and chat.kind == 3
    assert chat.status_code == 2 and chat.links == ((parent.trace_id, parent.span_id),)
    assert evaluation.parent_span_id == f"{0xDEF:016x}" and evaluation.trace_id == f"{0xABC:032x}"
    assert chat.resource == {**chat.resource, "service.name": "svc", "deployment.environment": "test"}


def test_the_encoder_that_keeps_pairs_writes_the_same_lines() -> None:
    encoder = JsonEncoder()
    spans = varied_spans()
    for _ in range(3):  # the second and third time from the kept pairs
        assert encoder.encode(spans) == encode_spans(spans)
    flag, one = (_span_with({"v": True}), _span_with({"v": 1}))  # equal values of other types
    written = orjson.loads(encoder.encode([flag, one]))["resourceSpans"]
    values = [s["attributes"][0]["value"] for r in written for ss in r["scopeSpans"] for s in ss["spans"]]
    assert values == [{"boolValue": True}, {"intValue": "1"}]


def _span_with(attributes: dict[str, Any]) -> ReadableSpan:
    return ReadableSpan("s", SpanContext(1, 2, False, TraceFlags(1)), attributes=attributes)


def test_kept_pairs_keep_what_repeats_and_stop_keeping_unique_values() -> None:
    made: list[tuple[str, object]] = []

    def encode(key: str, value: object) -> bytes:
        made.append((key, value))
        return f"{key}={value!r}".encode()

    pairs = KeptPairs(encode, per_key=8, longest=10)
    for i in range(100):
        attributes = {"op": "chat", "id": f"req-{i}", "long": "x" * 11, "reasons": ("stop",), "list": ["a"]}
        assert pairs.encoded(attributes) == [
            b"op='chat'",
            f"id='req-{i}'".encode(),
            b"long='xxxxxxxxxxx'",
            b"reasons=('stop',)",
            b"list=['a']",
        ]
    assert made.count(("op", "chat")) == 1 and made.count(("reasons", ("stop",))) == 1  # kept
    assert made.count(("long", "x" * 11)) == 100 and made.count(("list", ["a"])) == 100  # too long, unhashable
    assert len(pairs) == 2  # op and reasons: the ids were let go once the key had shown more than 8 values
    assert pairs.encoded({"flag": True}) == [b"flag=True"] and pairs.encoded({"flag": 1}) == [b"flag=1"]
    assert pairs.encoded({"t": 0.0}) == [b"t=0.0"] and pairs.encoded({"t": -0.0}) == [b"t=-0.0"]  # equal, not alike


def test_scalar_pairs_are_written_as_orjson_writes_them() -> None:
    """The encoder's fast path for scalars gives the bytes of the plain dict encoding."""
    values = ["", 'é ✓ "q" \\ \n \u2028', 0, -1, 2**63 - 1, -(2**63), True, False, 0.0, -0.0, 1e-300, 1.5e300]
    values += [float("nan"), float("inf"), 4.5634999878529925e-05]
    encoder = JsonEncoder()
    for value in values * 2:  # the second time through the kept prefixes
        expected = orjson.dumps({"key": "k", "value": _any_value(value)})
        assert encoder._key_value("k", value) == expected, value
