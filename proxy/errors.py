"""Errors the proxy answers with itself, and their one rendering in the OpenAI shape.

Errors from the upstream provider are not in this tree: their status, body and
headers (``Retry-After`` included) pass through unchanged.

    ProxyError                      {"error": {"message", "type", "param", "code"}}
    ├── InvalidRequest              400 invalid_request_error
    │   ├── InvalidJSON             400 invalid_request_error / invalid_json
    │   └── UnreadableBody          400 invalid_request_error / unreadable_body
    ├── NotFound                    404 invalid_request_error / not_found
    │   └── ModelNotFound           404 invalid_request_error / model_not_found
    ├── MethodNotAllowed            405 invalid_request_error / method_not_allowed
    ├── RequestTimeout              408 invalid_request_error / request_timeout
    ├── PayloadTooLarge             413 invalid_request_error / payload_too_large
    ├── InternalError               500 server_error
    └── UpstreamFailure             the provider could not be used
        ├── UpstreamUnreachable     502 upstream_error / upstream_unreachable
        └── UpstreamTimeout         504 upstream_error / upstream_timeout
"""

from __future__ import annotations

from collections.abc import Mapping

import orjson
from aiohttp import web


class ProxyError(Exception):
    """An error the proxy answers itself, in the OpenAI error shape."""

    status = 500
    type = "server_error"
    code: str | None = None
    close_connection = False  # the rest of the request cannot be trusted on this connection

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    def body(self) -> bytes:
        return orjson.dumps(
            {
                "error": {
                    "message": self.message,
                    "type": self.type,
                    "param": self.param,
                    "code": self.code,
                }
            }
        )


class InvalidRequest(ProxyError):
    status = 400
    type = "invalid_request_error"


class InvalidJSON(InvalidRequest):
    code = "invalid_json"


class UnreadableBody(InvalidRequest):
    code = "unreadable_body"
    close_connection = True


class NotFound(ProxyError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class MethodNotAllowed(ProxyError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class RequestTimeout(ProxyError):
    status = 408
    type = "invalid_request_error"
    code = "request_timeout"
    close_connection = True


class PayloadTooLarge(ProxyError):
    status = 413
    type = "invalid_request_error"
    code = "payload_too_large"


class InternalError(ProxyError):
    status = 500
    type = "server_error"
    code = "internal_error"


class UpstreamFailure(ProxyError):
    status = 502
    type = "upstream_error"


class UpstreamUnreachable(UpstreamFailure):
    status = 502
    code = "upstream_unreachable"


class UpstreamTimeout(UpstreamFailure):
    status = 504
    code = "upstream_timeout"


def render(error: ProxyError, headers: Mapping[str, str] | None = None) -> web.Response:
    """The one place an error becomes an HTTP response."""
    response = web.Response(
        status=error.status,
        body=error.body(),
        content_type="application/json",
        headers=headers,
    )
    if error.close_connection:
        response.force_close()
    return response


def from_http_exception(exc: web.HTTPException) -> ProxyError:
    """Translate aiohttp's own routing/body errors (404, 405, 413, …) into our tree."""
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return PayloadTooLarge(exc.text or "Request body too large.")
    if isinstance(exc, web.HTTPMethodNotAllowed):
        return MethodNotAllowed(f"Method {exc.method} is not allowed on this path.")
    if isinstance(exc, web.HTTPNotFound):
        return NotFound("Unknown path. flywheel serves the OpenAI API under /v1/.")
    error = ProxyError(exc.reason or "HTTP error")
    error.status = exc.status
    error.type = "invalid_request_error" if 400 <= exc.status < 500 else "server_error"
    return error
