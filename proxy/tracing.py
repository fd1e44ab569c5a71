"""Where spans go, configured by flags and the standard ``OTEL_*`` variables: OTLP (HTTP
or gRPC, :mod:`proxy.otlp`), standard output (``OTEL_TRACES_EXPORTER=console``) and the
``--spans-file`` store, each through
:mod:`proxy.span_batches` (encoded on the loop in small batches, an I/O thread sends or
writes, so export never blocks a request). Spans dropped because a queue was full or an
export failed are counted in ``flywheel_spans_dropped_total``.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import (
    ReadableSpan,
    SpanLimits,
    SpanProcessor,
    SynchronousMultiSpanProcessor,
    TracerProvider,
    sampling,
)
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags
from prometheus_client import Counter

from flywheel.spans import JsonEncoder, SpansFileExporter
from proxy.otlp import OtlpSettings, sender_for
from proxy.otlp_protobuf import ProtobufEncoder
from proxy.span_batches import BatchedSpansProcessor, Encode, SpanSink


@dataclass(frozen=True, slots=True)
class Export:
    """Which exporters to run; read once from flags and the ``OTEL_*`` environment."""

    otlp: OtlpSettings | None = None  # None: no OTLP export
    console: bool = False  # OTEL_TRACES_EXPORTER=console: OTLP/JSON lines on standard output
    spans_file: Path | None = None
    spans_file_max_bytes: int = 100 * 1024 * 1024
    service_name: str | None = "flywheel-proxy"  # None when OTEL_SERVICE_NAME names it
    queue_size: int = 8192  # OTEL_BSP_MAX_QUEUE_SIZE: spans waiting, per exporter, before drops
    schedule_delay: float = 1.0  # OTEL_BSP_SCHEDULE_DELAY (ms there): the oldest span's longest wait
    # OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT, else OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT: longer
    # strings are cut, as the SDK cuts them (captured content is what grows past a backend's limit)
    attribute_length: int | None = None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str], spans_file: Path | None, spans_file_max_bytes: int) -> Export:
        endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        # Unset, OTLP follows the endpoint: a sidecar with no collector beside it stays quiet.
        exporters = _traces_exporters(environ, default=frozenset({"otlp"}) if endpoint else frozenset())
        if environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
            exporters = frozenset()
        protocol = (
            environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
            or "http/protobuf"
        )
        return cls(
            otlp=OtlpSettings.from_environ(environ, protocol) if "otlp" in exporters else None,
            console="console" in exporters,
            spans_file=spans_file,
            spans_file_max_bytes=spans_file_max_bytes,
            service_name=None if environ.get("OTEL_SERVICE_NAME") else "flywheel-proxy",
            queue_size=_positive_int(environ, "OTEL_BSP_MAX_QUEUE_SIZE", 8192),
            schedule_delay=_positive_int(environ, "OTEL_BSP_SCHEDULE_DELAY", 1000) / 1000,
            attribute_length=_length_limit(environ),
        )


def _traces_exporters(environ: Mapping[str, str], default: frozenset[str]) -> frozenset[str]:
    """``OTEL_TRACES_EXPORTER`` as the SDK reads it (a list; ``none``: no exporter)."""
    raw = environ.get("OTEL_TRACES_EXPORTER", "")
    names = frozenset(name.strip().lower() for name in raw.split(",") if name.strip())
    if not names:
        return default
    if not names <= {"otlp", "console", "none"}:
        raise ValueError(f"OTEL_TRACES_EXPORTER={raw!r}: flywheel exports spans with otlp or console, or none")
    return frozenset() if "none" in names else names


def _positive_int(environ: Mapping[str, str], name: str, default: int) -> int:
    raw = environ.get(name)
    if not raw:
        return default
    if not raw.strip().isdigit() or int(raw) == 0:
        raise ValueError(f"{name}={raw!r}: give a positive whole number")
    return int(raw)


def _length_limit(environ: Mapping[str, str]) -> int | None:
    for name in ("OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT", "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT"):
        raw = (environ.get(name) or "").strip()
        if raw and not raw.isdigit():
            raise ValueError(f"{name}={raw!r}: give a whole number of characters")
        if raw:
            return int(raw)
    return None


@dataclass(frozen=True, slots=True)
class Tracing:
    """The SDK objects the proxy records with: the provider (feedback spans, flush,
    shutdown, ids, sampler, resource) and the processor registered with it, to which
    call spans are handed whole (see :class:`CallSpans`)."""

    provider: TracerProvider
    processor: SpanProcessor
    attribute_length: int | None = None  # string attributes cut to this many characters

    @classmethod
    def around(
        cls, processor: SpanProcessor, resource: Resource | None = None, attribute_length: int | None = None
    ) -> Tracing:
        # The SDK's spans (feedback) cut to the same length as the call spans.
        limits = SpanLimits(max_span_attribute_length=attribute_length) if attribute_length is not None else None
        provider = TracerProvider(resource=resource, span_limits=limits)
        provider.add_span_processor(processor)
        return cls(provider, processor, attribute_length)


def build_tracing(export: Export, dropped: Counter) -> Tracing:
    processor = SynchronousMultiSpanProcessor()  # type: ignore[no-untyped-call]
    if export.otlp is not None:
        sender = sender_for(export.otlp)
        processor.add_span_processor(_batched(export, ProtobufEncoder().encode, sender, dropped, "flywheel-otlp"))
    if export.console:
        processor.add_span_processor(_batched(export, JsonEncoder().encode, Stdout(), dropped, "flywheel-console"))
    if export.spans_file is not None:
        store = SpansFileExporter(export.spans_file, export.spans_file_max_bytes)
        processor.add_span_processor(_batched(export, JsonEncoder().encode, store, dropped, "flywheel-spans-file"))
    # Resource.create also reads OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES, as users expect.
    resource = Resource.create({"service.name": export.service_name} if export.service_name else {})
    return Tracing.around(processor, resource, export.attribute_length)


def _batched(export: Export, encode: Encode, sink: SpanSink, dropped: Counter, name: str) -> BatchedSpansProcessor:
    return BatchedSpansProcessor(
        encode, sink, dropped, max_pending=export.queue_size, max_delay=export.schedule_delay, name=name
    )


class Stdout:
    """A span sink writing OTLP/JSON lines to standard output (the log goes to standard
    error), for ``kubectl logs`` and for trying things out."""

    def __init__(self, stream: BinaryIO | None = None) -> None:
        self._stream = stream if stream is not None else sys.stdout.buffer

    def write(self, payload: bytes) -> bool:
        try:
            self._stream.write(payload)
            self._stream.flush()
        except (OSError, ValueError):  # closed, or a broken pipe: the spans are lost, and counted
            return False
        return True

    def shutdown(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self._stream.flush()


class OpenSpan(NamedTuple):
    """A call span between its start and its end (a tuple: one a call, cheaper to make
    than a frozen dataclass)."""

    context: SpanContext
    parent: SpanContext | None
    start_ns: int


class CallSpans:
    """Call spans assembled once, when the call is over, as the SDK's ``ReadableSpan``
    and handed to the provider's processors (batching, OTLP, the spans file) — what
    ``Span.end()`` does, minus the mutable ``Span``: its lock, per-attribute validation
    and renames cost 37 µs a call in a microbenchmark against 4 µs for this, and the
    proxy knows a call's attributes only at its end anyway. Ids, the sampler (``OTEL_
    TRACES_SAMPLER``) and the resource are the provider's; ``OTEL_SDK_DISABLED`` is honoured.
    """

    def __init__(self, tracing: Tracing) -> None:
        provider = tracing.provider
        self.enabled = not isinstance(provider.get_tracer(SCOPE.name), trace.NoOpTracer)
        self._ids = provider.id_generator
        self._sampler = provider.sampler
        # The SDK's default sampler follows the parent's flag and samples roots: decided
        # here, it saves ~2 µs of the ~2.6 µs a span start costs.
        self._parent_based_always_on = provider.sampler is sampling.DEFAULT_ON
        self._resource = provider.resource
        self._processor = tracing.processor
        self._attribute_length = tracing.attribute_length

    def start(self, parent: Context | None, name: str, start_ns: int) -> OpenSpan:
        parent_span = trace.get_current_span(parent).get_span_context() if parent is not None else None
        if parent_span is not None and not parent_span.is_valid:
            parent_span = None
        trace_id = parent_span.trace_id if parent_span is not None else self._ids.generate_trace_id()
        if self._parent_based_always_on:
            sampled = parent_span.trace_flags.sampled if parent_span is not None else True
            trace_state = parent_span.trace_state if parent_span is not None else None
        else:
            decided = self._sampler.should_sample(parent, trace_id, name, SpanKind.CLIENT)
            sampled = decided.decision.is_sampled()  # type: ignore[no-untyped-call]
            trace_state = decided.trace_state
        context = SpanContext(
            trace_id, self._ids.generate_span_id(), False, _SAMPLED if sampled else _NOT_SAMPLED, trace_state
        )
        return OpenSpan(context, parent_span, start_ns)

    def end(
        self, span: OpenSpan, name: str, attributes: dict[str, Any], error: bool, end_ns: int | None = None
    ) -> None:
        """Hand the finished span to the processors; it ended at ``end_ns`` (default: now)."""
        if not span.context.trace_flags.sampled:
            return
        if self._attribute_length is not None:
            attributes = _cut(attributes, self._attribute_length)
        self._processor.on_end(
            ReadableSpan(
                name,
                span.context,
                span.parent,
                self._resource,
                attributes,
                kind=SpanKind.CLIENT,
                status=_ERROR if error else _UNSET,
                start_time=span.start_ns,
                end_time=end_ns or time.time_ns(),
                instrumentation_scope=SCOPE,
            )
        )


def _cut(attributes: dict[str, Any], length: int) -> dict[str, Any]:
    """Strings, and strings in sequences, cut to ``length`` characters (what the SDK's
    ``BoundedAttributes`` does for its spans)."""
    cut = {}
    for key, value in attributes.items():
        if isinstance(value, str):
            value = value[:length]
        elif isinstance(value, tuple | list):
            value = tuple(v[:length] if isinstance(v, str) else v for v in value)
        cut[key] = value
    return cut


SCOPE = InstrumentationScope("flywheel.proxy")
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_NOT_SAMPLED = TraceFlags(TraceFlags.DEFAULT)
_ERROR = Status(StatusCode.ERROR)
_UNSET = Status(StatusCode.UNSET)
