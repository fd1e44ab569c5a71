"""Mining straight from OTLP-JSON span files, streamed: never the whole file in memory.

One pass gathers the counts, the failing calls and the adverse feedback. Feedback
usually follows its call within minutes, so the last ``window`` calls of the prompt
are kept and feedback is joined to them as it is read; only feedback on calls older
than that costs a second pass.
"""

from __future__ import annotations

import gc
from collections import Counter, OrderedDict
from collections.abc import Iterable, Iterator, Mapping

from flywheel.spans import SpanSource
from optimizer.records import CallRecord, FeedbackRecord, from_attributes


class FileSpanStore:
    def __init__(self, source: SpanSource, window: int = 100_000) -> None:
        self._source = source
        self._window = window
        self._scanned_for: str | None = None
        self._counts: Counter[str] = Counter()
        self._failing: list[CallRecord] = []
        self._feedback: list[FeedbackRecord] = []
        self._joined: dict[str, CallRecord] = {}  # calls adverse feedback pointed at, found in the window

    def call_counts(self, prompt: str) -> Mapping[str, int]:
        self._scan(prompt)
        return dict(self._counts)

    def failing_calls(self, prompt: str) -> Iterable[CallRecord]:
        self._scan(prompt)
        return list(self._failing)

    def adverse_feedback(self) -> Iterable[FeedbackRecord]:
        if self._scanned_for is None:
            raise RuntimeError("adverse_feedback() comes after call_counts() for a prompt")
        return list(self._feedback)

    def calls(self, request_ids: set[str]) -> Iterable[CallRecord]:
        found = [self._joined[i] for i in request_ids if i in self._joined]
        yield from found
        rest = request_ids - {c.request_id for c in found}
        if rest:  # feedback on calls that had left the window: one more pass
            for record in self._records():
                if isinstance(record, CallRecord) and record.request_id in rest:
                    yield record

    def _scan(self, prompt: str) -> None:
        if self._scanned_for == prompt:
            return
        self._counts.clear()
        self._failing.clear()
        self._feedback.clear()
        self._joined.clear()
        recent: OrderedDict[str, CallRecord] = OrderedDict()
        for record in self._records():
            if isinstance(record, FeedbackRecord):
                if record.negative or record.correction:
                    self._feedback.append(record)
                    call = recent.get(record.request_id)
                    if call is not None:
                        self._joined[record.request_id] = call
            elif record.prompt == prompt:
                self._counts[record.version] += 1
                if record.schema_valid is False or (record.error_type is not None and record.error_type != "cancelled"):
                    self._failing.append(record)
                recent[record.request_id] = record
                if len(recent) > self._window:
                    recent.popitem(last=False)
        self._scanned_for = prompt

    def _records(self) -> Iterator[CallRecord | FeedbackRecord]:
        # Decoding makes millions of dicts and strings and no reference cycles; the cyclic
        # GC would rescan the growing set of kept records again and again for nothing.
        enabled = gc.isenabled()
        gc.disable()
        try:
            for name, attributes, start_ns, end_ns in self._source.attribute_rows():
                record = from_attributes(name, attributes, start_ns, end_ns)
                if record is not None:
                    yield record
        finally:
            if enabled:
                gc.enable()
