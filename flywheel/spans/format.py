"""OTLP/JSON (one ``ExportTraceServiceRequest`` per line), the Collector file-exporter format.

Spans are encoded straight to the OTLP/JSON mapping (hex trace and span ids, integer
enums, 64-bit integers as strings): going through the SDK's protobuf encoder and
protobuf's JSON mapping gives the same document at ~15x the cost, and this runs for
every span the proxy makes. A test holds the two to the same output.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanKind, Status, StatusCode

# SpanFlags as the SDK's encoder sets them: "is-remote is known", and whether it is.
_FLAGS_LOCAL = 0x100
_FLAGS_REMOTE = 0x300


def encode_spans(spans: Sequence[ReadableSpan]) -> bytes:
    """One OTLP/JSON line (with its newline) holding ``spans``."""
    return JsonEncoder().encode(spans)


class KeptPairs:
    """Attribute key/value pairs encoded by ``encode``, kept for the values that repeat
    from span to span (operation, provider, model, prompt version, status): a key that
    shows more than ``per_key`` distinct values (request ids, timings, token counts) is
    encoded afresh every time, so unique values never churn the rest out. Shared by the
    JSON and the protobuf encoder. Used from the loop and the spans' I/O thread at once,
    it stays right: every entry is its value's encoding, so a race only keeps one less."""

    def __init__(self, encode: Callable[[str, Any], bytes], per_key: int = 256, longest: int = 256) -> None:
        self._encode = encode
        self._per_key = per_key
        self._longest = longest  # longer strings (captured content) are not kept
        self._by_key: dict[str, dict[Any, tuple[type, bytes]] | None] = {}  # None: not kept

    def __len__(self) -> int:
        return sum(len(kept) for kept in self._by_key.values() if kept)

    def encoded(self, attributes: Mapping[str, Any]) -> list[bytes]:
        """Each pair's encoding, in order."""
        by_key = self._by_key
        out = []
        for key, value in attributes.items():
            kept = by_key.get(key, _NEW)
            if kept:
                try:
                    found = kept.get(value)
                except TypeError:  # unhashable (a list)
                    found = None
                if found is not None and found[0] is type(value):  # True == 1, but they encode apart
                    out.append(found[1])
                    continue
            out.append(self._missed(key, value, kept))
        return out

    def _missed(self, key: str, value: Any, kept: dict[Any, tuple[type, bytes]] | None) -> bytes:
        encoded = self._encode(key, value)
        if kept is None:
            return encoded
        kind = type(value)
        if not (
            kind is int
            or kind is bool
            or (kind is float and value == value and value != 0)  # -0.0 == 0.0 and NaN != NaN
            or (kind is str and len(value) <= self._longest)
            or (kind is tuple and all(type(v) is str for v in value))  # finish reasons
        ):
            return encoded
        if kept is _NEW:
            kept = self._by_key[key] = {}
        if len(kept) < self._per_key:
            kept[value] = (kind, encoded)
        else:
            self._by_key[key] = None
        return encoded


_NEW: dict[Any, tuple[type, bytes]] = {}  # a key not seen yet (empty, so falsy like None)


class JsonEncoder:
    """Encodes batches of spans to OTLP/JSON lines, written as bytes from kept pieces
    (:class:`KeptPairs`); the rare parts (events, links) go through orjson. 6.5 µs a
    proxy call span with a unique request id, against 14.5 µs building the document as
    dicts for orjson."""

    def __init__(self) -> None:
        self._pairs = KeptPairs(self._key_value)
        self._prefixes: dict[tuple[str, type], bytes] = {}  # '{"key":…,"value":{"intValue":' by key and type

    def _key_value(self, key: str, value: Any) -> bytes:
        """One pair: scalars written into a kept prefix (a value that changes every span, a
        request id or a timing, costs one small dumps instead of two nested dicts)."""
        kind = type(value)
        field = _SCALAR_FIELDS.get(kind)
        if field is None:
            return _key_value(key, value)
        prefix = self._prefixes.get((key, kind))
        if prefix is None:
            prefix = b'{"key":' + orjson.dumps(key) + b',"value":{' + field
            if len(self._prefixes) < 1024:
                self._prefixes[(key, kind)] = prefix
        return prefix + (b'"%d"}}' % value if kind is int else orjson.dumps(value) + b"}}")

    def encode(self, spans: Sequence[ReadableSpan]) -> bytes:
        """One OTLP/JSON line (with its newline) holding ``spans``."""
        # Grouped by identity: hashing a Resource serializes its attributes every time.
        grouped: dict[int, tuple[Resource, dict[int, tuple[InstrumentationScope | None, list[bytes]]]]] = {}
        for span in spans:
            resource, scope = span.resource, span.instrumentation_scope
            found = grouped.get(id(resource))
            if found is None:
                found = grouped[id(resource)] = (resource, {})
            scoped = found[1].get(id(scope))
            if scoped is None:
                scoped = found[1][id(scope)] = (scope, [])
            scoped[1].append(self._span(span))
        resource_spans = []
        for resource, scopes in grouped.values():
            entry = b'{"resource":' + orjson.dumps(
                {"attributes": _key_values(resource.attributes)} if resource.attributes else {}
            )
            scope_spans = [
                (b'{"scope":' + orjson.dumps(_scope(scope)) + b"," if scope is not None else b"{")
                + b'"spans":['
                + b",".join(encoded)
                + b"]}"
                for scope, encoded in scopes.values()
            ]
            entry += b',"scopeSpans":[' + b",".join(scope_spans) + b"]"
            if resource.schema_url:
                entry += b',"schemaUrl":' + orjson.dumps(resource.schema_url)
            resource_spans.append(entry + b"}")
        return b'{"resourceSpans":[' + b",".join(resource_spans) + b"]}\n"

    def _span(self, span: ReadableSpan) -> bytes:
        context = span.get_span_context()
        assert context is not None
        parts = [b'{"traceId":"%032x","spanId":"%016x"' % (context.trace_id, context.span_id)]
        if context.trace_state:
            parts.append(b',"traceState":' + orjson.dumps(context.trace_state.to_header()))
        parent = span.parent
        if parent is not None:
            parts.append(b',"parentSpanId":"%016x"' % parent.span_id)
        parts.append(
            b',"flags":%d,"name":%b,"kind":%d,"startTimeUnixNano":"%d","endTimeUnixNano":"%d"'
            % (
                _FLAGS_REMOTE if parent is not None and parent.is_remote else _FLAGS_LOCAL,
                orjson.dumps(span.name),
                _KINDS[span.kind],
                span.start_time or 0,
                span.end_time or 0,
            )
        )
        attributes, events, links = span.attributes, span.events, span.links  # properties that copy
        if attributes:
            parts.append(b',"attributes":[' + b",".join(self._pairs.encoded(attributes)) + b"]")
        if span.dropped_attributes:
            parts.append(b',"droppedAttributesCount":%d' % span.dropped_attributes)
        if events:
            parts.append(b',"events":' + orjson.dumps([_event(e) for e in events]))
        if links:
            parts.append(b',"links":' + orjson.dumps([_link(link) for link in links]))
        status = span.status
        if status.description:
            parts.append(b',"status":' + orjson.dumps(_status(status)) + b"}")
        else:
            parts.append(_STATUS_ENDS[status.status_code])
        return b"".join(parts)


def _key_value(key: str, value: Any) -> bytes:
    return orjson.dumps({"key": key, "value": _any_value(value)})


# The OTLP/JSON field of each scalar type (int64 as a string, as _any_value writes it).
_SCALAR_FIELDS = {str: b'"stringValue":', bool: b'"boolValue":', int: b'"intValue":', float: b'"doubleValue":'}


def _status(status: Status) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if status.description:
        out["message"] = status.description
    if status.status_code.value:
        out["code"] = status.status_code.value
    return out


_KINDS = {kind: kind.value + 1 for kind in SpanKind}  # OTLP counts from SPAN_KIND_UNSPECIFIED = 0
_STATUS_ENDS = {code: b',"status":' + orjson.dumps(_status(Status(code))) + b"}" for code in StatusCode}


def _event(event: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"timeUnixNano": str(event.timestamp), "name": event.name}
    if event.attributes:
        out["attributes"] = _key_values(event.attributes)
    return out


def _link(link: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"traceId": f"{link.context.trace_id:032x}", "spanId": f"{link.context.span_id:016x}"}
    if link.attributes:
        out["attributes"] = _key_values(link.attributes)
    out["flags"] = _FLAGS_REMOTE if link.context.is_remote else _FLAGS_LOCAL
    return out


def _scope(scope: InstrumentationScope) -> dict[str, Any]:
    out: dict[str, Any] = {"name": scope.name}
    if scope.version:
        out["version"] = scope.version
    return out


def _key_values(attributes: Mapping[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    append = out.append
    for key, value in dict(attributes).items():  # inlined scalar cases: this runs ~15 times a span
        kind = type(value)
        if kind is str:
            append({"key": key, "value": {"stringValue": value}})
        elif kind is int:
            append({"key": key, "value": {"intValue": str(value)}})
        elif kind is float:
            append({"key": key, "value": {"doubleValue": value}})
        elif kind is bool:
            append({"key": key, "value": {"boolValue": value}})
        else:
            append({"key": key, "value": _any_value(value)})
    return out


def _any_value(value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        return {"stringValue": value}
    if isinstance(value, bool):  # before int: a bool is an int
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}
    if isinstance(value, float):
        return {"doubleValue": value}
    if isinstance(value, bytes):
        return {"bytesValue": base64.b64encode(value).decode()}
    if isinstance(value, Sequence):
        return {"arrayValue": {"values": [_any_value(v) for v in value]}}
    if isinstance(value, Mapping):
        return {"kvlistValue": {"values": _key_values(value)}}
    return {"stringValue": str(value)}


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


def decode_line_attributes(line: bytes | str) -> Iterator[tuple[str, dict[str, Any], int, int]]:
    """(name, attributes, start ns, end ns) of each span of a line: the slice mining reads,
    without building whole records; raises ``ValueError`` like :func:`decode_line`."""
    try:
        message = orjson.loads(line)
        for resource_spans in message.get("resourceSpans", ()):
            for scope_spans in resource_spans.get("scopeSpans", ()):
                for span in scope_spans.get("spans", ()):
                    yield (
                        span.get("name", ""),
                        _attributes(span.get("attributes", ())),
                        int(span["startTimeUnixNano"]),
                        int(span.get("endTimeUnixNano", 0)),
                    )
    except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError) as exc:
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
    out: dict[str, Any] = {}
    for pair in pairs:  # strings first, inline: most attributes are, and mining reads millions
        value = pair.get("value", {})
        text = value.get("stringValue")
        out[pair["key"]] = text if text is not None else _value(value)
    return out


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
