"""The proxy's span processor, here in front of the spans file: batches encoded by the
caller, written by an I/O thread (waiting batches joined), stale batches flushed at low
traffic, backlog and failures counted."""

from __future__ import annotations

import threading
from pathlib import Path

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanContext, TraceFlags
from prometheus_client import CollectorRegistry, Counter

from flywheel.spans import SpansFileExporter, encode_spans, open_span_source
from proxy.span_batches import BatchedSpansProcessor, SpanSink


def file_processor(sink: SpanSink, dropped: Counter, **settings: float) -> BatchedSpansProcessor:
    return BatchedSpansProcessor(encode_spans, sink, dropped, **settings)  # type: ignore[arg-type]


def _span(i: int) -> ReadableSpan:
    return ReadableSpan(f"s{i}", SpanContext(i + 1, i + 1, False, TraceFlags(1)), attributes={"i": i})


def _counter() -> Counter:
    return Counter("dropped", "spans dropped", registry=CollectorRegistry())


def _count(counter: Counter) -> float:
    return sum(s.value for m in counter.collect() for s in m.samples if s.name.endswith("_total"))


class Watched(SpansFileExporter):
    """The spans file, saying when something was written."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.written = threading.Event()

    def write(self, line: bytes) -> bool:
        ok = super().write(line)
        self.written.set()
        return ok


def _names(path: Path) -> list[str]:
    return [s.name for s in open_span_source(path).spans()] if path.exists() else []


def test_full_batches_go_out_and_flush_takes_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "spans.jsonl"
    processor = file_processor(SpansFileExporter(path), _counter(), batch=4, max_delay=60)
    for i in range(10):
        processor.on_end(_span(i))
    assert processor.force_flush(5000)
    assert _names(path) == [f"s{i}" for i in range(10)]
    assert len(path.read_bytes().splitlines()) == 3  # 4 + 4 + the 2 flushed
    processor.shutdown()


def test_a_full_batch_is_written_at_the_next_tick_without_a_signal(tmp_path: Path) -> None:
    path = tmp_path / "spans.jsonl"
    exporter = Watched(path)
    processor = file_processor(exporter, _counter(), batch=2, max_delay=60, tick=0.05)
    processor.on_end(_span(0))
    processor.on_end(_span(1))  # a full batch: encoded here, left for the I/O thread to find
    assert exporter.written.wait(5)
    assert _names(path) == ["s0", "s1"]
    processor.shutdown()


def test_a_few_spans_are_written_after_max_delay_without_a_flush(tmp_path: Path) -> None:
    path = tmp_path / "spans.jsonl"
    exporter = Watched(path)
    processor = file_processor(exporter, _counter(), batch=64, max_delay=0.05)
    processor.on_end(_span(1))
    assert exporter.written.wait(5)  # nobody flushed: the writer thread found the stale batch
    assert _names(path) == ["s1"]
    processor.shutdown()


def test_a_backlog_beyond_max_pending_is_dropped_and_counted(tmp_path: Path) -> None:
    gate, writing = threading.Event(), threading.Event()

    class Stuck(SpansFileExporter):
        def write(self, line: bytes) -> bool:
            writing.set()
            gate.wait(5)
            return super().write(line)

    dropped = _counter()
    processor = file_processor(Stuck(tmp_path / "spans.jsonl"), dropped, batch=2, max_delay=60, max_pending=4)
    processor.on_end(_span(0))
    processor.on_end(_span(1))
    # The writer holds the first batch alone: had it joined a second one, fewer would be dropped.
    assert writing.wait(5)
    for i in range(2, 12):  # 5 more batches for a writer that can hold 2 waiting
        processor.on_end(_span(i))
    assert _count(dropped) == 6
    gate.set()
    assert processor.force_flush(5000)
    kept = len(_names(tmp_path / "spans.jsonl"))
    assert kept + _count(dropped) == 12
    processor.shutdown()


def test_write_failures_are_counted(tmp_path: Path) -> None:
    dropped = _counter()
    blocked = tmp_path / "dir-not-file"
    blocked.mkdir()  # opening a directory for append fails
    processor = file_processor(SpansFileExporter(blocked), dropped, batch=2, max_delay=60)
    for i in range(4):
        processor.on_end(_span(i))
    assert processor.force_flush(5000)
    assert _count(dropped) == 4
    processor.shutdown()


def test_batches_waiting_for_a_slow_sink_go_out_in_one_write(tmp_path: Path) -> None:
    path = tmp_path / "spans.jsonl"
    gate = threading.Event()
    writes: list[int] = []

    class Slow(SpansFileExporter):
        def write(self, line: bytes) -> bool:
            gate.wait(5)
            writes.append(line.count(b"\n"))
            return super().write(line)

    processor = file_processor(Slow(path), _counter(), batch=2, max_delay=60)
    for i in range(10):  # the first batch holds the thread; four more wait
        processor.on_end(_span(i))
    gate.set()
    assert processor.force_flush(5000)
    assert sum(writes) == 5 and len(writes) <= 2  # lines kept whole, batches joined
    assert _names(path) == [f"s{i}" for i in range(10)]
    processor.shutdown()
