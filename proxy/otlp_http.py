"""OTLP/HTTP: serialized export requests POSTed as ``application/x-protobuf``."""

from __future__ import annotations

import contextlib
import gzip
import http.client
import socket
import ssl
import zlib
from urllib.parse import urlsplit

from proxy.otlp import USER_AGENT, Attempt, OtlpSettings, RetryingSender

RETRYABLE = frozenset((429, 502, 503, 504))


class OtlpHttpSender(RetryingSender):
    def __init__(self, settings: OtlpSettings) -> None:
        url = urlsplit(settings.endpoint)
        secure = url.scheme == "https"
        self._host = url.hostname or "localhost"
        self._port = url.port or (443 if secure else 80)
        self._path = (url.path or "/") + (f"?{url.query}" if url.query else "")
        super().__init__(settings, f"{url.scheme}://{self._host}:{self._port}{url.path}")
        self._headers = {"Content-Type": "application/x-protobuf", "User-Agent": USER_AGENT, **dict(settings.headers)}
        if settings.compression != "none":
            self._headers["Content-Encoding"] = settings.compression
        self._tls = _tls_context(settings) if secure else None
        self._connection: http.client.HTTPConnection | None = None

    def _attempt(self, payload: bytes, timeout: float) -> Attempt:
        body = _compress(payload, self.settings.compression)
        try:
            connection = self._connection or self._connect(timeout)
            if connection.sock is not None:
                connection.sock.settimeout(timeout)
            connection.request("POST", self._path, body, self._headers)
            response = connection.getresponse()
            response.read()
        except (OSError, http.client.HTTPException) as exc:
            self._close()
            return Attempt(ok=False, retryable=True, reason=f"{type(exc).__name__}: {exc}".rstrip(": "))
        if response.will_close:
            self._close()
        retry_after = (response.getheader("Retry-After") or "").strip()
        return Attempt(
            ok=200 <= response.status < 300,
            retryable=response.status in RETRYABLE,
            retry_after=float(retry_after) if retry_after.isdigit() else None,
            reason=f"HTTP {response.status}",
        )

    def _connect(self, timeout: float) -> http.client.HTTPConnection:
        if self._tls is not None:
            self._connection = http.client.HTTPSConnection(self._host, self._port, timeout=timeout, context=self._tls)
        else:
            self._connection = http.client.HTTPConnection(self._host, self._port, timeout=timeout)
        return self._connection

    def _close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            if connection.sock is not None:
                with contextlib.suppress(OSError):  # wakes a send or receive blocked in the I/O thread
                    connection.sock.shutdown(socket.SHUT_RDWR)
            connection.close()


def _tls_context(settings: OtlpSettings) -> ssl.SSLContext:
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
