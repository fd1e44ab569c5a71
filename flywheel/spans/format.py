"""OTLP/JSON (one ``ExportTraceServiceRequest`` per line), the Collector file-exporter format.

Encoding goes through the SDK's own protobuf encoder, then protobuf's JSON mapping
with the two differences OTLP/JSON prescribes: trace and span ids are hex, not
base64, and enums are integers.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from google.protobuf.json_format import MessageToDict
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as _encode_protobuf
from opentelemetry.sdk.trace import ReadableSpan

_ID_FIELDS = ("traceId", "spanId", "parentSpanId")


def encode_spans(spans: Sequence[ReadableSpan]) -> bytes:
    """One OTLP/JSON line (with its newline) holding ``spans``."""
    message = MessageToDict(_encode_protobuf(spans), use_integers_for_enums=True)
    for resource_spans in message.get("resourceSpans", ()):
        for scope_spans in resource_spans.get("scopeSpans", ()):
            for span in scope_spans.get("spans", ()):
                _hex_ids(span)
                for link in span.get("links", ()):
                    _hex_ids(link)
    return orjson.dumps(message) + b"\n"


def _hex_ids(record: dict[str, Any]) -> None:
    for key in _ID_FIELDS:
        if record.get(key):
            record[key] = base64.b64decode(record[key]).hex()


@dataclass(frozen=True, slots=True)
class SpanRecord:
    """A span as read back from the store, with plain Python attribute values."""

    trace_id: str
    span_id: str
    parent_span_id: str | None
    name: str
    kind: int
    start_ns: int
    end_ns: int
    attributes: Mapping[str, Any]
    status_code: int = 0  # 0 unset, 1 ok, 2 error
    resource: Mapping[str, Any] = field(default_factory=dict)
    links: tuple[tuple[str, str], ...] = ()  # (trace_id, span_id)

    @property
    def duration_s(self) -> float:
        return (self.end_ns - self.start_ns) / 1e9


def decode_line(line: bytes | str) -> Iterator[SpanRecord]:
    """The spans of one OTLP/JSON line; raises ``ValueError`` on a line that is not one."""
    try:
        message = orjson.loads(line)
        for resource_spans in message.get("resourceSpans", ()):
            resource = _attributes(resource_spans.get("resource", {}).get("attributes", ()))
            for scope_spans in resource_spans.get("scopeSpans", ()):
                for span in scope_spans.get("spans", ()):
                    yield _record(span, resource)
    except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError) as exc:
        raise ValueError(f"not an OTLP/JSON trace line: {exc}") from exc


def _record(span: Mapping[str, Any], resource: Mapping[str, Any]) -> SpanRecord:
    return SpanRecord(
        trace_id=span["traceId"],
        span_id=span["spanId"],
        parent_span_id=span.get("parentSpanId") or None,
        name=span.get("name", ""),
        kind=int(span.get("kind", 0)),
        start_ns=int(span.get("startTimeUnixNano", 0)),
        end_ns=int(span.get("endTimeUnixNano", 0)),
        attributes=_attributes(span.get("attributes", ())),
        status_code=int(span.get("status", {}).get("code", 0)),
        resource=resource,
        links=tuple((link["traceId"], link["spanId"]) for link in span.get("links", ())),
    )


def _attributes(pairs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    return {pair["key"]: _value(pair.get("value", {})) for pair in pairs}


def _value(value: Mapping[str, Any]) -> Any:
    if "stringValue" in value:
        return value["stringValue"]
    if "intValue" in value:
        return int(value["intValue"])  # int64 travels as a string in JSON
    if "doubleValue" in value:
        return float(value["doubleValue"])
    if "boolValue" in value:
        return bool(value["boolValue"])
    if "arrayValue" in value:
        return [_value(v) for v in value["arrayValue"].get("values", ())]
    if "kvlistValue" in value:
        return _attributes(value["kvlistValue"].get("values", ()))
    if "bytesValue" in value:
        return base64.b64decode(value["bytesValue"])
    return None
