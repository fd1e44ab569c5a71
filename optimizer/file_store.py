"""Mining straight from OTLP-JSON span files, streamed: never the whole file in memory.

One pass gathers the counts, the failing calls and the adverse feedback; a second pass
fetches only the calls that feedback points at and the first pass did not keep.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Mapping

from flywheel.spans import SpanSource
from optimizer.records import CallRecord, FeedbackRecord, from_span


class FileSpanStore:
    def __init__(self, source: SpanSource) -> None:
        self._source = source
        self._scanned_for: str | None = None
        self._counts: Counter[str] = Counter()
        self._failing: list[CallRecord] = []
        self._feedback: list[FeedbackRecord] = []

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
        for record in self._records():
            if isinstance(record, CallRecord) and record.request_id in request_ids:
                yield record

    def _scan(self, prompt: str) -> None:
        if self._scanned_for == prompt:
            return
        self._counts.clear()
        self._failing.clear()
        self._feedback.clear()
        for record in self._records():
            if isinstance(record, FeedbackRecord):
                if record.negative or record.correction:
                    self._feedback.append(record)
            elif record.prompt == prompt:
                self._counts[record.version] += 1
                if record.schema_valid is False or (record.error_type is not None and record.error_type != "cancelled"):
                    self._failing.append(record)
        self._scanned_for = prompt

    def _records(self) -> Iterator[CallRecord | FeedbackRecord]:
        for span in self._source.spans():
            record = from_span(span)
            if record is not None:
                yield record
