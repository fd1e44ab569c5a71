"""Relaying a call to an OpenAI-compatible upstream and its answer back to the app.

JSON answers are read whole (flywheel needs them for usage and evaluation) and
sent on with their status and headers; everything else — SSE streams, audio,
file downloads — is written to the app chunk by chunk as it arrives.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping

import aiohttp
from aiohttp import web
from yarl import URL

from proxy.errors import UpstreamTimeout, UpstreamUnreachable
from proxy.event_scanner import EventScanner
from proxy.observation import Outcome
from proxy.upstreams import OpenAIUpstream
from proxy.wire import Call, client_headers

log = logging.getLogger("flywheel.proxy")


class Forwarder:
    """Sends calls to OpenAI-compatible upstreams over one pooled client session."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self._session = session
        self._reading: set[asyncio.Task[None]] = set()  # answers read to their end after the app left

    async def settled(self) -> None:
        """Wait for the answers still being read to their end (see :func:`_read_rest`)."""
        if self._reading:
            await asyncio.wait(self._reading)

    async def close(self) -> None:
        for task in self._reading:
            task.cancel()
        await self.settled()

    async def forward(self, request: web.Request, call: Call, upstream: OpenAIUpstream) -> web.StreamResponse:
        if upstream.model is not None and call.body is not None and call.model != upstream.model:
            call.set_field("model", upstream.model)
        if upstream.api_key is not None:
            call.headers["Authorization"] = f"Bearer {upstream.api_key}"
        url = URL(upstream.base_url + call.path_qs, encoded=True)
        try:
            answer = await self._session.request(call.method, url, data=call.payload(), headers=call.headers)
        except TimeoutError as exc:  # aiohttp's connect/read timeouts are TimeoutErrors
            raise UpstreamTimeout("The upstream did not answer in time.") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamUnreachable(f"The upstream could not be reached: {type(exc).__name__}.") from exc
        finished = False
        response: web.StreamResponse
        outcome = call.outcome
        if outcome is not None:
            outcome.status = answer.status
        try:
            if answer.content_type == "application/json":
                response = await _buffered(request, answer, call.response_headers, outcome)
            else:
                response = await _streamed(request, answer, call.response_headers, outcome)
            finished = True
            return response
        finally:
            # An answer not read to its end (client gone, upstream cut off, error)
            # closes its connection, so the upstream sees the call cancelled — unless
            # the app had the whole answer and only the provider's last bytes are due.
            if finished and answer.content.is_eof():
                answer.release()
            elif outcome is not None and outcome.delivered:
                task = asyncio.get_running_loop().create_task(_read_rest(answer))
                self._reading.add(task)
                task.add_done_callback(self._reading.discard)
            else:
                answer.close()


async def _read_rest(answer: aiohttp.ClientResponse) -> None:
    """The app went away after the answer's end ([DONE]) had reached it — openai-python
    closes there without reading on — while the provider's last bytes were still due:
    read them, so the connection goes back to the pool rather than costing the next call
    a new TCP and TLS handshake. Bounded: an upstream that goes on sending is cut off."""
    try:
        async with asyncio.timeout(_REST_SECONDS):
            size = 0
            while size <= _REST_BYTES and (chunk := await answer.content.readany()):
                size += len(chunk)
    except (TimeoutError, aiohttp.ClientError):
        pass
    finally:
        if answer.content.is_eof():
            answer.release()
        else:
            answer.close()


_REST_SECONDS = 2.0
_REST_BYTES = 64 * 1024


async def _buffered(
    request: web.Request, answer: aiohttp.ClientResponse, ours: Mapping[str, str], outcome: Outcome | None
) -> web.Response:
    try:
        body = await answer.read()
    except TimeoutError as exc:
        raise UpstreamTimeout("The upstream stopped sending its answer.") from exc
    except aiohttp.ClientError as exc:
        raise UpstreamUnreachable(f"The upstream's answer was cut off: {type(exc).__name__}.") from exc
    response = web.Response(status=answer.status, body=body, headers=client_headers(answer.headers, ours))
    if outcome is None:
        return response
    try:
        # Sent here rather than by returning, so that reading the answer for telemetry
        # and checking it against the schema happen after the app has it.
        await response.prepare(request)
        await response.write_eof()
    except ConnectionResetError:
        outcome.error_type = "cancelled"
        return response
    outcome.first_chunk_at = time.perf_counter()
    outcome.read_body(body)
    return response


async def _streamed(
    request: web.Request, answer: aiohttp.ClientResponse, ours: Mapping[str, str], outcome: Outcome | None
) -> web.StreamResponse:
    response = web.StreamResponse(status=answer.status, headers=client_headers(answer.headers, ours))
    observe = answer.content_type == "text/event-stream" and outcome is not None
    scanner = EventScanner(outcome, outcome.hide_usage) if observe and outcome is not None else None
    try:
        await response.prepare(request)
        await _pump(request, answer.content, response, scanner, outcome)
    except ConnectionResetError:
        log.debug("client went away mid-stream")
        if outcome is not None and not outcome.delivered:
            outcome.error_type = "cancelled"
    return response


async def _pump(
    request: web.Request,
    content: aiohttp.StreamReader,
    response: web.StreamResponse,
    scanner: EventScanner | None,
    outcome: Outcome | None,
) -> None:
    while True:
        try:
            chunk = await content.readany()
        except (TimeoutError, aiohttp.ClientError) as exc:
            # Cut the app off too: a clean end would pass a truncated answer as complete.
            log.warning("upstream stream broke off (%s); closing the client stream", type(exc).__name__)
            if outcome is not None:
                outcome.error_type = "upstream_cut_off"
            _cut_off(request)
            return
        if not chunk:
            break
        if scanner is not None:
            chunk = scanner.feed(chunk)
        if chunk:
            await response.write(chunk)
            if outcome is not None:
                if outcome.first_chunk_at is None:
                    outcome.first_chunk_at = time.perf_counter()
                outcome.delivered = outcome.completed
    rest = scanner.close() if scanner is not None else b""
    if outcome is not None:
        outcome.stream_ended()
    if rest:
        await response.write(rest)
    if outcome is not None:
        outcome.delivered = outcome.completed
    await response.write_eof()


def _cut_off(request: web.Request) -> None:
    """End the app's response without the final chunk, so its HTTP client reports an error."""
    transport = request.transport
    if transport is not None:
        transport.close()  # flushes what was written, then closes: no terminating chunk
