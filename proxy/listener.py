"""The proxy's HTTP/1.1 listener: aiohttp's connection handler with flywheel's client limits.

aiohttp parses requests strictly (llhttp): a lying or doubled ``Content-Length``,
``Transfer-Encoding`` with ``Content-Length``, CR/LF/NUL inside a header value,
more than ``MAX_HEADERS`` headers or a header line over ``MAX_HEADER_LINE`` bytes
never reach a route. Its own rendering of those refusals echoes the offending
bytes (an ``Authorization`` header among them) into the response and logs a
traceback with them; :class:`Connection` answers them in the OpenAI error shape
instead and logs one line without the request's bytes.

A connection must deliver a complete request head within ``idle_timeout`` of
opening or of its previous answer, else it is closed (aiohttp's keep-alive timer,
which incoming bytes do not reset): that bounds idle keep-alive connections and
slowloris headers alike, as nginx's ``client_header_timeout`` does (nginx also
just closes). Slow bodies are answered 408 by the route (``--body-timeout``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong

from proxy.errors import InvalidRequest, ProxyError

log = logging.getLogger("flywheel.proxy")

MAX_HEADERS = 128  # aiohttp's default; OpenAI SDK calls send ~15
MAX_HEADER_LINE = 8190  # bytes per header line and for the request line, as nginx's default buffer


class MalformedRequest(InvalidRequest):
    code = "malformed_http_request"


class HeaderTooLarge(ProxyError):
    status = 431
    type = "invalid_request_error"
    code = "request_header_too_large"


class Connection(web.RequestHandler):
    """aiohttp's per-connection handler, refusing unparsable requests in the OpenAI shape."""

    def handle_error(
        self,
        request: Any,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:  # the answer has started: nothing to render
            raise ConnectionError("the response had started; closing the connection")
        error = _refusal(status, exc)
        log.warning("refused a malformed HTTP request: %s (%s)", error.code, type(exc).__name__ if exc else status)
        response = web.Response(status=error.status, body=error.body(), content_type="application/json")
        response.force_close()
        return response


def _refusal(status: int, exc: BaseException | None) -> ProxyError:
    # The parser's message quotes the request's bytes: never repeat it.
    if isinstance(exc, LineTooLong) or (isinstance(exc, HttpProcessingError) and "Too many headers" in str(exc)):
        return HeaderTooLarge(
            f"A request header line is over {MAX_HEADER_LINE} bytes or there are more than {MAX_HEADERS} headers."
        )
    if status >= 500:
        error = ProxyError("The proxy failed to handle the request.")
        error.code = "internal_error"
        return error
    return MalformedRequest(
        "The request is not valid HTTP/1.1 (conflicting or malformed framing headers, "
        "or a control character in a header)."
    )


async def listen(
    runner: web.AppRunner, host: str, port: int, idle_timeout: float, backlog: int = 1024
) -> asyncio.Server:
    """Accept connections for ``runner``'s app with :class:`Connection` handlers."""
    server = runner.server
    assert server is not None, "runner.setup() first"
    loop = asyncio.get_running_loop()

    def connection() -> Connection:
        return Connection(
            server,
            loop=loop,
            keepalive_timeout=idle_timeout,
            access_log=None,  # type: ignore[arg-type]  # aiohttp accepts None: no access log
            max_headers=MAX_HEADERS,
            max_line_size=MAX_HEADER_LINE,
            max_field_size=MAX_HEADER_LINE,
        )

    return await loop.create_server(connection, host, port, backlog=backlog, reuse_address=True)
