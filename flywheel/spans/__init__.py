"""The embedded span store: OTLP-JSON lines, as the OpenTelemetry Collector's file
exporter writes them. ``format`` is the one encoding both sides share, ``file_exporter``
writes it from the proxy (with size rotation), ``source`` reads it back for the
optimizer and the canary controller."""

from flywheel.spans.file_exporter import SpansFileExporter
from flywheel.spans.format import JsonEncoder, SpanRecord, decode_line, encode_spans
from flywheel.spans.source import SpanSource, open_span_source

__all__ = [
    "JsonEncoder",
    "SpanRecord",
    "SpanSource",
    "SpansFileExporter",
    "decode_line",
    "encode_spans",
    "open_span_source",
]
