"""The schema evaluator: a call's output against its prompt version's ``response_schema``.

It runs after the answer has gone out, but on the proxy's event loop it would still hold
up every other call while it runs: jsonschema takes 0.2–0.6 ms per KB of JSON (a 580 KB
answer held the loop for 109 ms). Small outputs are checked in place; larger ones in a
worker thread, where the interpreter hands the loop its turn every switch interval (the
loop's worst pause: 5–13 ms), and the call's span and metrics are recorded when the
verdict is in.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jsonschema
import orjson

from flywheel.registry import Version

log = logging.getLogger("flywheel.proxy")

IN_PLACE = 8 * 1024  # characters of output checked on the loop (~5 ms at most)

Verdict = Callable[[bool | None], None]  # called with the verdict; None: no verdict (the check failed)


class SchemaChecks:
    def __init__(self) -> None:
        self._validators: dict[str, Any] = {}  # by version hash
        self._worker: ThreadPoolExecutor | None = None  # made for the first large output
        self._running: set[asyncio.Future[bool]] = set()

    def valid(self, version: Version, text: str) -> bool:
        assert version.content.response_schema is not None
        validator = self._validators.get(version.hash)
        if validator is None:
            schema = dict(version.content.response_schema)
            validator = self._validators[version.hash] = jsonschema.validators.validator_for(schema)(schema)
        try:
            document = orjson.loads(text)
        except orjson.JSONDecodeError:
            return False
        return bool(validator.is_valid(document))

    def check(self, version: Version, text: str, then: Verdict) -> None:
        """``then(verdict)`` now for a small output (or with no loop running), else once
        the worker has checked it."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if len(text) <= IN_PLACE or loop is None:
            then(self.valid(version, text))
            return
        if self._worker is None:
            # One thread: checks queue rather than compete with the loop for the interpreter.
            self._worker = ThreadPoolExecutor(1, thread_name_prefix="flywheel-schema")
        running = loop.run_in_executor(self._worker, self.valid, version, text)
        self._running.add(running)
        running.add_done_callback(lambda done: self._finished(done, then))

    def _finished(self, done: asyncio.Future[bool], then: Verdict) -> None:
        self._running.discard(done)
        verdict = None
        if not done.cancelled() and (error := done.exception()) is None:
            verdict = done.result()
        elif not done.cancelled():
            log.warning("schema check failed (%s): the call is recorded without a verdict", type(error).__name__)
        try:
            then(verdict)
        except Exception:  # one bad call must not lose the others' spans and metrics
            log.exception("recording a call after its schema check failed")

    async def close(self) -> None:
        """Wait for the checks still running (their calls are recorded as they finish)."""
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
        if self._worker is not None:
            self._worker.shutdown(wait=False)
