"""OTLP/HTTP (protobuf) export of the proxy's spans: settings from the standard
``OTEL_EXPORTER_OTLP_*`` variables, and the sender the span batches' I/O thread calls.

Why not the SDK's ``OTLPSpanExporter``: it takes spans, not bytes, so it would encode
in its own thread with its slow encoder (see ``proxy.otlp_protobuf``); its byte-level
client is private. This sender is what the SDK's does with a serialized request: one
kept-alive connection, gzip if asked, retries with exponential backoff on 429, 502,
503, 504 and connection errors (``Retry-After`` honoured) within the export timeout.
"""

from __future__ import annotations

import gzip
import http.client
import logging
import random
import ssl
import threading
import time
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from opentelemetry.util.re import parse_env_headers

log = logging.getLogger("flywheel.proxy.otlp")

RETRYABLE = frozenset((429, 502, 503, 504))
_MAX_RETRIES = 6
_USER_AGENT = "flywheel-proxy (OTLP/HTTP protobuf)"


@dataclass(frozen=True, slots=True)
class OtlpHttpSettings:
    """Where and how to send, read once from the ``OTEL_EXPORTER_OTLP_[TRACES_]*`` variables."""

    endpoint: str = "http://localhost:4318/v1/traces"
    headers: tuple[tuple[str, str], ...] = ()
    timeout: float = 10.0  # seconds, as the Python SDK reads OTEL_EXPORTER_OTLP_TIMEOUT
    compression: str = "none"  # none | gzip | deflate
    certificate: str | None = None
    client_key: str | None = None
    client_certificate: str | None = None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> OtlpHttpSettings:
        def setting(name: str) -> str | None:
            return environ.get(f"OTEL_EXPORTER_OTLP_TRACES_{name}") or environ.get(f"OTEL_EXPORTER_OTLP_{name}")

        name, endpoint = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        if not endpoint:
            name, base = "OTEL_EXPORTER_OTLP_ENDPOINT", environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
            endpoint = (base or "http://localhost:4318").removesuffix("/") + "/v1/traces"
        if urlsplit(endpoint).scheme not in ("http", "https"):
            raise ValueError(f"{name}={endpoint!r}: use an http:// or https:// URL")
        compression = (setting("COMPRESSION") or "none").strip().lower()
        if compression not in ("none", "gzip", "deflate"):
            raise ValueError(f"OTEL_EXPORTER_OTLP_COMPRESSION={compression!r}: use none, gzip or deflate")
        timeout = setting("TIMEOUT") or "10"
        try:
            seconds = float(timeout)
        except ValueError:
            raise ValueError(f"OTEL_EXPORTER_OTLP_TIMEOUT={timeout!r}: give seconds") from None
        return cls(
            endpoint=endpoint,
            headers=tuple(parse_env_headers(setting("HEADERS") or "", liberal=True).items()),
            timeout=seconds,
            compression=compression,
            certificate=setting("CERTIFICATE"),
            client_key=setting("CLIENT_KEY"),
            client_certificate=setting("CLIENT_CERTIFICATE"),
        )


class OtlpHttpSender:
    """A :class:`proxy.span_batches.SpanSink` posting serialized export requests.

    Called from one thread only (the span batches' I/O thread); ``shutdown`` cuts a
    backoff short.
    """

    def __init__(self, settings: OtlpHttpSettings) -> None:
        url = urlsplit(settings.endpoint)
        self._settings = settings
        self._secure = url.scheme == "https"
        self._host = url.hostname or "localhost"
        self._port = url.port or (443 if self._secure else 80)
        self._path = (url.path or "/") + (f"?{url.query}" if url.query else "")
        self._where = f"{url.scheme}://{self._host}:{self._port}{url.path}"  # for logs: no userinfo, no query
        self._headers = {"Content-Type": "application/x-protobuf", "User-Agent": _USER_AGENT, **dict(settings.headers)}
        if settings.compression != "none":
            self._headers["Content-Encoding"] = settings.compression
        self._tls = self._tls_context(settings) if self._secure else None
        self._connection: http.client.HTTPConnection | None = None
        self._closing = threading.Event()
        self._failing = False

    def write(self, payload: bytes) -> bool:
        body = _compress(payload, self._settings.compression)
        deadline = time.monotonic() + self._settings.timeout
        reason = ""
        for attempt in range(_MAX_RETRIES + 1):
            status, retry_after, reason = self._post(body, max(0.1, deadline - time.monotonic()))
            if status is not None and 200 <= status < 300:
                if self._failing:
                    log.info("sending spans to %s again", self._where)
                    self._failing = False
                return True
            if status is not None and status not in RETRYABLE:
                break
            delay = retry_after if retry_after is not None else 2**attempt * random.uniform(0.8, 1.2)
            if time.monotonic() + delay >= deadline or self._closing.wait(delay):
                break
        if not self._failing:  # once per outage, not once per batch
            log.warning(
                "cannot send spans to %s (%s); dropping them (flywheel_spans_dropped_total)", self._where, reason
            )
            self._failing = True
        return False

    def shutdown(self) -> None:
        self._closing.set()
        self._close()

    def _post(self, body: bytes, timeout: float) -> tuple[int | None, float | None, str]:
        """One POST: the status (None if the connection failed), Retry-After seconds, a reason."""
        try:
            connection = self._connection or self._connect(timeout)
            if connection.sock is not None:
                connection.sock.settimeout(timeout)
            connection.request("POST", self._path, body, self._headers)
            response = connection.getresponse()
            response.read()
        except (OSError, http.client.HTTPException) as exc:
            self._close()
            return None, None, type(exc).__name__ if not str(exc) else f"{type(exc).__name__}: {exc}"
        if response.will_close:
            self._close()
        retry_after = response.getheader("Retry-After")
        seconds = float(retry_after) if retry_after and retry_after.strip().isdigit() else None
        return response.status, seconds, f"HTTP {response.status}"

    def _connect(self, timeout: float) -> http.client.HTTPConnection:
        if self._tls is not None:
            self._connection = http.client.HTTPSConnection(self._host, self._port, timeout=timeout, context=self._tls)
        else:
            self._connection = http.client.HTTPConnection(self._host, self._port, timeout=timeout)
        return self._connection

    def _close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    @staticmethod
    def _tls_context(settings: OtlpHttpSettings) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=settings.certificate)
        if settings.client_certificate:
            context.load_cert_chain(settings.client_certificate, settings.client_key)
        return context


def _compress(payload: bytes, compression: str) -> bytes:
    if compression == "gzip":
        return gzip.compress(payload, compresslevel=6)
    if compression == "deflate":
        return zlib.compress(payload)
    return payload
