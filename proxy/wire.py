"""The HTTP wire on both sides: reading the app's request, and which headers cross the proxy.

Bodies stay bytes unless flywheel has to change them: a request that is passed
through unchanged is sent upstream exactly as the app sent it (no JSON round-trip).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import orjson
from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.errors import InvalidJSON, InvalidRequest, PayloadTooLarge, RequestTimeout, UnreadableBody
from proxy.observation import Outcome

# Endpoints whose request body is a JSON object with `model` (and maybe `stream`).
JSON_ENDPOINTS = frozenset(("chat/completions", "completions", "embeddings", "responses"))

# Hop-by-hop (RFC 9110 §7.6.1) plus what aiohttp recomputes for each leg.
_REQUEST_DROP = frozenset(
    (
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "accept-encoding",  # the proxy decompresses and sends plain bodies on loopback
        "content-encoding",  # aiohttp has already decompressed the app's gzip/deflate body
        "expect",
        "x-request-id",  # ours; the provider gets no say in it
    )
)
_RESPONSE_DROP = frozenset(
    (
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "content-encoding",
        "x-request-id",
    )
)
# flywheel's own request headers (X-Prompt-Name, X-Prompt-Vars, …) stay in the proxy.
_OWN_PREFIX = "x-prompt-"
# A float of 1e18 or more as orjson writes it (3.8 writes "e18", 3.13 "e+18"): maybe an
# integer orjson could not hold.
_HUGE_FLOAT = re.compile(rb"[0-9]e\+?(?:1[89]|[2-9][0-9]|[1-3][0-9][0-9])")
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")


@dataclass(slots=True)
class Call:
    """One app request on its way to the provider."""

    request_id: str
    method: str
    endpoint: str  # path after /v1/, without the query: "chat/completions"
    path_qs: str  # raw path after /v1 with the query, as the app sent it: "/chat/completions?x=1"
    headers: CIMultiDict[str]  # what goes upstream
    raw: bytes
    body: dict[str, Any] | None  # the parsed object, for the JSON endpoints
    model: str | None
    stream: bool
    changed: dict[str, Any] = field(default_factory=dict)  # top-level fields flywheel set in `body`
    response_headers: dict[str, str] = field(default_factory=dict)  # X-Request-Id, X-Prompt-*
    outcome: Outcome | None = None  # filled while relaying, when the call is traced

    def set_field(self, key: str, value: Any) -> None:
        """Change one top-level body field; the body is serialized again only then. A field
        the body lacks, while nothing else has changed, is written into the app's bytes
        right after the opening brace instead: no JSON round-trip (orjson writing a 50 KB
        conversation back costs more than the call's telemetry), and the rest goes
        upstream exactly as the app sent it."""
        assert self.body is not None
        added = key not in self.body
        self.body[key] = value
        if not added or self.changed:
            self.changed[key] = value
            return
        brace = self.raw.index(b"{")  # the body parsed as an object: only whitespace before it
        member = orjson.dumps(key) + b":" + orjson.dumps(value) + (b"," if len(self.body) > 1 else b"")
        self.raw = self.raw[: brace + 1] + member + self.raw[brace + 1 :]

    def payload(self) -> bytes:
        if not self.changed or self.body is None:
            return self.raw
        try:
            out = orjson.dumps(self.body)
        except orjson.JSONEncodeError as exc:  # nested deeper than orjson writes (255 levels)
            raise InvalidRequest(f"The request body cannot be rewritten: {exc}.") from exc
        if (b"e+" in out or b"e1" in out or b"e2" in out or b"e3" in out) and _HUGE_FLOAT.search(out):
            return self._exact_payload()
        return out

    def _exact_payload(self) -> bytes:
        """orjson reads integers beyond 64 bits as floats (-9223372036854775809 comes back
        as -9.223372036854776e18): the app's fields are then rewritten from the stdlib's
        exact reading of the body instead — rare, and slower."""
        body = json.loads(self.raw)
        body.update(self.changed)
        return json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


def request_id(request: web.Request) -> str:
    """The app's ``X-Request-Id`` when it is a sane token, else a fresh one."""
    given = request.headers.get("X-Request-Id")
    if given is not None and _REQUEST_ID.fullmatch(given):
        return given
    return "req_" + os.urandom(12).hex()


@dataclass(frozen=True, slots=True)
class BodyLimits:
    """How big a request body may be, and how long the app may take to send it."""

    max_size: int
    timeout: float


async def read_call(request: web.Request, request_id: str, limits: BodyLimits) -> Call:
    """Parse the app's request; raises :class:`InvalidRequest` / :class:`PayloadTooLarge`."""
    raw_path = request.raw_path
    path_qs = raw_path[3:]  # route guarantees the "/v1/" prefix
    endpoint = request.match_info["tail"].strip("/")
    _refuse_dot_segments(path_qs.partition("?")[0])
    raw = await read_body(request, limits)
    body: dict[str, Any] | None = None
    model: str | None = None
    stream = False
    if endpoint in JSON_ENDPOINTS and request.method == "POST":
        body = parse_object(raw)
        found = body.get("model")
        model = found if isinstance(found, str) else None
        stream = body.get("stream") is True
    headers = upstream_headers(request.headers)
    if body is not None:  # known to be a JSON object whatever the app labelled it (curl -d says form)
        headers["Content-Type"] = "application/json"
    return Call(
        request_id=request_id,
        method=request.method,
        endpoint=endpoint,
        path_qs=path_qs,
        headers=headers,
        raw=raw,
        body=body,
        model=model,
        stream=stream,
        response_headers={"X-Request-Id": request_id},
    )


def _refuse_dot_segments(path: str) -> None:
    # The upstream host is fixed by config; this only keeps "/v1/../x" from
    # leaving the upstream's API prefix.
    if "." not in path and "%" not in path:
        return
    if any(seg in (".", "..") for seg in unquote(path).split("/")):
        raise InvalidRequest("Dot segments are not allowed in the path.")


def parse_object(raw: bytes) -> dict[str, Any]:
    if not raw:
        raise InvalidJSON("The request body is empty; expected a JSON object.")
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidJSON(f"The request body is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise InvalidJSON(f"The request body must be a JSON object, not {type(value).__name__}.")
    return value


async def read_body(request: web.Request, limits: BodyLimits) -> bytes:
    """The whole body; :class:`PayloadTooLarge` over the limit, :class:`RequestTimeout` if too slow."""
    if not request.body_exists:
        return b""
    length = request.content_length
    if length is not None and length > limits.max_size:
        raise PayloadTooLarge(f"Request body of {length} bytes exceeds the limit of {limits.max_size} bytes.")
    try:
        # aiohttp enforces client_max_size (= max_size) while reading, decompressed
        # size included, so a chunked or gzip body that grows past the limit is
        # refused without being buffered whole.
        async with asyncio.timeout(limits.timeout):
            return await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise PayloadTooLarge(f"Request body exceeds the limit of {limits.max_size} bytes.") from exc
    except RequestPayloadError as exc:  # e.g. "Content-Encoding: gzip" on a body that is not
        request.content.feed_eof()  # unreadable: keep aiohttp from reading it again after the answer
        raise UnreadableBody("The request body could not be decoded (check Content-Encoding).") from exc
    except TimeoutError as exc:
        # aiohttp sends the 408, then reads what is left for up to 10 s and closes.
        raise RequestTimeout(f"The request body was not received within {limits.timeout:g} seconds.") from exc


def upstream_headers(incoming: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    """The app's headers minus hop-by-hop and flywheel's own; ``Authorization`` passes."""
    extra = _connection_tokens(incoming)
    out: CIMultiDict[str] = CIMultiDict()
    for key, value in incoming.items():
        lower = key.lower()
        if lower in _REQUEST_DROP or lower.startswith(_OWN_PREFIX) or lower in extra:
            continue
        out.add(key, value)
    return out


def client_headers(upstream: CIMultiDictProxy[str], ours: Mapping[str, str]) -> CIMultiDict[str]:
    """The provider's response headers for the app; its request id is kept under another name."""
    out: CIMultiDict[str] = CIMultiDict()
    for key, value in upstream.items():
        lower = key.lower()
        if lower not in _RESPONSE_DROP:
            out.add(key, value)
    provider_id = upstream.get("x-request-id")
    if provider_id is not None:
        out["X-Upstream-Request-Id"] = provider_id
    out.update(ours)
    return out


def _connection_tokens(headers: CIMultiDictProxy[str]) -> frozenset[str]:
    value = headers.get("Connection")
    if not value:
        return frozenset()
    return frozenset(token.strip().lower() for token in value.split(","))
