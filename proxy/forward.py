"""Relaying a call to an OpenAI-compatible upstream and its answer back to the app.

JSON answers are read whole (flywheel needs them for usage and evaluation) and
sent on with their status and headers; everything else — SSE streams, audio,
file downloads — is written to the app chunk by chunk as it arrives.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import aiohttp
from aiohttp import web
from yarl import URL

from proxy.errors import UpstreamTimeout, UpstreamUnreachable
from proxy.upstreams import OpenAIUpstream
from proxy.wire import Call, client_headers

log = logging.getLogger("flywheel.proxy")


class Forwarder:
    """Sends calls to OpenAI-compatible upstreams over one pooled client session."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self._session = session

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
        try:
            if answer.content_type == "application/json":
                response = await _buffered(answer, call.response_headers)
            else:
                response = await _streamed(request, answer, call.response_headers)
            finished = True
            return response
        finally:
            # An answer not read to its end (client gone, upstream cut off, error)
            # closes its connection, so the upstream sees the call cancelled.
            if finished and answer.content.is_eof():
                answer.release()
            else:
                answer.close()


async def _buffered(answer: aiohttp.ClientResponse, ours: Mapping[str, str]) -> web.Response:
    try:
        body = await answer.read()
    except TimeoutError as exc:
        raise UpstreamTimeout("The upstream stopped sending its answer.") from exc
    except aiohttp.ClientError as exc:
        raise UpstreamUnreachable(f"The upstream's answer was cut off: {type(exc).__name__}.") from exc
    return web.Response(status=answer.status, body=body, headers=client_headers(answer.headers, ours))


async def _streamed(
    request: web.Request, answer: aiohttp.ClientResponse, ours: Mapping[str, str]
) -> web.StreamResponse:
    response = web.StreamResponse(status=answer.status, headers=client_headers(answer.headers, ours))
    try:
        await response.prepare(request)
        await _pump(request, answer.content, response)
    except ConnectionResetError:
        log.debug("client went away mid-stream")
    return response


async def _pump(request: web.Request, content: aiohttp.StreamReader, response: web.StreamResponse) -> None:
    while True:
        try:
            chunk = await content.readany()
        except (TimeoutError, aiohttp.ClientError) as exc:
            # Cut the app off too: a clean end would pass a truncated answer as complete.
            log.warning("upstream stream broke off (%s); closing the client stream", type(exc).__name__)
            _cut_off(request)
            return
        if not chunk:
            break
        await response.write(chunk)
    await response.write_eof()


def _cut_off(request: web.Request) -> None:
    """End the app's response without the final chunk, so its HTTP client reports an error."""
    transport = request.transport
    if transport is not None:
        transport.close()  # flushes what was written, then closes: no terminating chunk
