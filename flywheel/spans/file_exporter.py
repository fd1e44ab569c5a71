"""``--spans-file``: a span exporter appending OTLP/JSON lines, rotated by size.

``export`` encodes and writes; ``write`` takes a line encoded elsewhere (the proxy
encodes on its own thread and writes from a writer thread). When the
file would grow past ``max_bytes`` it is renamed to ``PATH.1`` (older ones shift up to
``PATH.<backups>``), as the Collector's file exporter does.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from flywheel.spans.format import encode_spans

log = logging.getLogger("flywheel.spans")


class SpansFileExporter(SpanExporter):
    def __init__(self, path: Path, max_bytes: int = 100 * 1024 * 1024, backups: int = 5) -> None:
        self.path = path
        self._max_bytes = max_bytes
        self._backups = backups
        self._lock = threading.Lock()
        self._handle: BinaryIO | None = None
        self._size = 0
        path.parent.mkdir(parents=True, exist_ok=True)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS if self.write(encode_spans(spans)) else SpanExportResult.FAILURE

    def write(self, line: bytes) -> bool:
        """Append one encoded line (rotating first if it would not fit); False if it failed."""
        try:
            with self._lock:
                handle = self._open()
                if self._max_bytes and self._size and self._size + len(line) > self._max_bytes:
                    self._close()
                    self._rotate()
                    handle = self._open()
                handle.write(line)  # one unbuffered write per line: readers never see half a line
                self._size += len(line)
        except OSError as exc:
            log.error("cannot write spans to %s: %s", self.path, exc.strerror)
            self._close()
            return False
        return True

    def _open(self) -> BinaryIO:
        if self._handle is None:
            self._handle = open(self.path, "ab", buffering=0)  # noqa: SIM115 - kept open across exports
            self._size = self._handle.tell()
        return self._handle

    def _close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def _rotate(self) -> None:
        for index in range(self._backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{index}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{index + 1}"))
        if self._backups > 0:
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        else:
            self.path.unlink()

    def shutdown(self) -> None:
        with self._lock:
            self._close()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True
