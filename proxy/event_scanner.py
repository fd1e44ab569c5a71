"""Splitting an SSE stream into events as it passes, for :class:`~proxy.observation.Outcome`,
without changing a byte of it.

The one exception is the usage chunk flywheel asked for on the app's behalf
(``stream_options.include_usage``): the app did not ask for it, so it does not see it.
"""

from __future__ import annotations

import re

import orjson

from proxy.observation import Outcome

_BOUNDARIES = (b"\n\n", b"\r\n\r\n", b"\r\r")


class EventScanner:
    """Splits SSE bytes into events as they pass, for :class:`Outcome`.

    Chunks go on to the app as they came. With ``hide_usage`` only whole events go
    on (a partial event waits for its end), minus the usage-only chunk. Only events
    that can carry what is recorded are parsed: ids from the first, then finish
    reasons, usage and terminal events — and every event when the text is kept.
    """

    def __init__(self, outcome: Outcome, hide_usage: bool = False) -> None:
        self._outcome = outcome
        self._hide_usage = hide_usage
        self._buffer = bytearray()
        # Both spellings of each marker ("a":1 and "a": 1) until the first event shows
        # which one this provider writes: searching for half of them is half the cost.
        self._markers = _MARKERS[outcome.endpoint == "responses", True]
        self._spelling_known = False

    def feed(self, chunk: bytes) -> bytes:
        if not self._buffer and chunk.endswith(b"\n\n"):
            complete = chunk  # whole events, as providers mostly send them: no copy
        else:
            self._buffer += chunk
            end = max((i + len(b) for b in _BOUNDARIES if (i := self._buffer.rfind(b)) >= 0), default=0)
            if not end:
                return b"" if self._hide_usage else chunk
            complete = bytes(self._buffer[:end])
            del self._buffer[:end]
        outcome = self._outcome
        markers = self._markers
        if outcome.keep_text or b"\r" in complete:
            dropped = self._read_all(complete, markers)
        elif outcome.response_id is not None and not _marked(complete, markers):
            return chunk if not self._hide_usage else complete  # nothing in these events to read or hide
        else:
            dropped = self._read_marked(complete, markers)
        if not self._hide_usage:
            return chunk
        if not dropped:
            return complete
        kept, at = [], 0
        for start, end in dropped:
            kept.append(complete[at:start])
            at = end
        kept.append(complete[at:])
        return b"".join(kept)

    def _read_marked(self, complete: bytes, markers: tuple[bytes, ...]) -> list[tuple[int, int]]:
        """Parse only the events that hold a marker (and, while the ids are not known,
        each event with data until they are): found with ``bytes.find`` over the whole
        read, so the events in between cost nothing. Returns where the usage-only events
        are, blank line included."""
        dropped: list[tuple[int, int]] = []
        at = 0
        while self._outcome.response_id is None and (found := complete.find(b"data:", at)) >= 0:
            start, end = _around(complete, found)
            if self._parse_in(complete, start, end):
                dropped.append((start, end))
            at = end
        markers = self._markers  # the first event may have shown the provider's spelling
        stop = len(complete)
        if complete.endswith(_DONE_EVENT) and stop - len(_DONE_EVENT) >= at:
            self._outcome.completed = True  # the usual last event, known without a search
            stop -= len(_DONE_EVENT)
            markers = markers[1:]  # [DONE] comes first
        wanted: dict[int, int] = {}  # start → end of each marked event
        for marker in markers:
            found = complete.find(marker, at, stop)
            while found >= 0:
                before = complete.rfind(b"\n\n", at, found)
                end = complete.find(b"\n\n", found) + 2
                wanted[before + 2 if before >= 0 else at] = end
                found = complete.find(marker, end, stop)
        for start in sorted(wanted) if len(wanted) > 1 else wanted:
            if self._parse_in(complete, start, wanted[start]):
                dropped.append((start, wanted[start]))
        return dropped

    def _parse_in(self, complete: bytes, start: int, end: int) -> bool:
        """:meth:`_parse` of the event at ``complete[start:end]`` (blank line included),
        without the copies when it is one ``data: {…}`` line, as chunk events are."""
        if not complete.startswith(b"data: {", start) or complete.find(b"\n", start, end - 2) >= 0:
            return self._parse(complete[start : end - 2])
        return self._take(complete[start + 6 : end - 2])

    def _read_all(self, complete: bytes, markers: tuple[bytes, ...]) -> list[tuple[int, int]]:
        """Every event parsed, in order; blank lines of any kind (``\\r\\n``, ``\\r``)."""
        parts = _SPLIT.split(complete)  # event, separator, event, separator, …, b""
        dropped, at = [], 0
        for event, separator in zip(parts[0:-1:2], parts[1::2], strict=True):
            end = at + len(event) + len(separator)
            if self._read(event, markers):
                dropped.append((at, end))
            at = end
        return dropped

    def close(self) -> bytes:
        """What is left when the stream ends (an event without its blank line)."""
        if not self._buffer:
            return b""  # the stream ended with its last blank line, as streams do
        rest = bytes(self._buffer)
        self._buffer.clear()
        if rest.strip():
            self._read(rest, self._markers)
        return rest if self._hide_usage else b""

    def _read(self, event: bytes, markers: tuple[bytes, ...]) -> bool:
        outcome = self._outcome
        if b"data:" not in event:
            return False
        if not outcome.keep_text and outcome.response_id is not None and not _marked(event, markers):
            return False
        return self._parse(event)

    def _parse(self, event: bytes) -> bool:
        """Read one event's data; True when it is a usage-only chunk (to hide)."""
        outcome = self._outcome
        if event.startswith(b"data:") and b"\n" not in event and b"\r" not in event:
            payload = event[5:].removeprefix(b" ")  # one data line: most events
        else:
            payload = b"\n".join(
                line[5:].removeprefix(b" ") for line in event.splitlines() if line.startswith(b"data:")
            )
        if payload.strip() == b"[DONE]":
            outcome.completed = True
            return False
        return self._take(payload)

    def _take(self, payload: bytes) -> bool:
        """Parse one event's JSON data and take it in; True for a usage-only chunk."""
        try:
            parsed = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return False
        if not self._spelling_known:
            self._learn_spelling(payload)
        return isinstance(parsed, dict) and self._outcome.read_event(parsed)

    def _learn_spelling(self, payload: bytes) -> None:
        if b'":' in payload:  # an event with a key shows the spelling
            self._spelling_known = True
            self._markers = _MARKERS[self._outcome.endpoint == "responses", b'": ' in payload]


def _around(complete: bytes, at: int) -> tuple[int, int]:
    """Start and end (after its blank line) of the ``\\n\\n``-separated event holding ``at``."""
    before = complete.rfind(b"\n\n", 0, at)
    return (before + 2 if before >= 0 else 0), complete.find(b"\n\n", at) + 2


def _marked(data: bytes, markers: tuple[bytes, ...]) -> bool:
    for marker in markers:
        if marker in data:
            return True
    return False


_SPLIT = re.compile(rb"(\r\n\r\n|\n\n|\r\r)")
# What an event must contain to be worth parsing once the ids are known. Substring
# tests, not one regular expression: an alternation without a literal prefix made
# Python's re try every position (44 µs a 12-event stream against ~10 µs).
_CHUNK_MARKERS = (b"[DONE]", b'"usage":{', b'"finish_reason":"', b'"error":{')
_RESPONSE_MARKERS = (b"[DONE]", b"response.completed", b"response.incomplete", b"response.failed", b'"type":"error"')
_DONE_EVENT = b"data: [DONE]\n\n"


def _spaced(markers: tuple[bytes, ...]) -> tuple[bytes, ...]:
    """The markers as JSON written with a space after the colon, added to the compact ones."""
    return markers + tuple(m.replace(b'":', b'": ') for m in markers if b'":' in m)


# By (Responses API?, written with spaces?); both spellings while it is not known yet.
_MARKERS = {
    (False, False): _CHUNK_MARKERS,
    (False, True): _spaced(_CHUNK_MARKERS),
    (True, False): _RESPONSE_MARKERS,
    (True, True): _spaced(_RESPONSE_MARKERS),
}
