"""OTLP export of the proxy's spans: settings from the standard ``OTEL_EXPORTER_OTLP_*``
variables, read as the Python SDK reads them, and the retry policy both senders share.

Why not the SDK's ``OTLPSpanExporter``s: they take spans, not bytes, so they would encode
in their own thread with the SDK's slow encoder (see ``proxy.otlp_protobuf`` and
``proxy.span_batches``); their byte-level clients are private. The senders here do what
the SDK's do with a serialized request: one kept-alive connection (channel), gzip if
asked, retries with exponential backoff on the transient failures (HTTP 429/502/503/504,
gRPC UNAVAILABLE and friends, connection errors; a server's Retry-After honoured) within
the export timeout, and a warning once per outage rather than once per batch.
"""

from __future__ import annotations

import logging
import os
import random
import ssl
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple
from urllib.parse import urlsplit

from opentelemetry.util.re import parse_env_headers

log = logging.getLogger("flywheel.proxy.otlp")

PROTOCOLS = ("http/protobuf", "grpc")
_MAX_RETRIES = 6
USER_AGENT = "flywheel-proxy"


@dataclass(frozen=True, slots=True)
class OtlpSettings:
    """Where and how to send spans, read once from ``OTEL_EXPORTER_OTLP_[TRACES_]*``."""

    protocol: str = "http/protobuf"
    endpoint: str = "http://localhost:4318/v1/traces"  # http: the full URL; grpc: scheme://host:port
    headers: tuple[tuple[str, str], ...] = ()
    timeout: float = 10.0  # seconds, as the Python SDK reads OTEL_EXPORTER_OTLP_TIMEOUT
    compression: str = "none"  # none | gzip | deflate (deflate: HTTP only)
    insecure: bool = True  # grpc: plaintext (http:// endpoints, or OTEL_EXPORTER_OTLP_INSECURE=true)
    certificate: str | None = None
    client_key: str | None = None
    client_certificate: str | None = None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str], protocol: str) -> OtlpSettings:
        def setting(name: str) -> str | None:
            return environ.get(f"OTEL_EXPORTER_OTLP_TRACES_{name}") or environ.get(f"OTEL_EXPORTER_OTLP_{name}")

        if protocol not in PROTOCOLS:
            raise ValueError(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r}: use one of {', '.join(PROTOCOLS)}")
        compression = (setting("COMPRESSION") or "none").strip().lower()
        if compression not in ("none", "gzip", "deflate") or (protocol == "grpc" and compression == "deflate"):
            raise ValueError(f"OTEL_EXPORTER_OTLP_COMPRESSION={compression!r}: use none or gzip (or deflate over HTTP)")
        timeout = setting("TIMEOUT") or "10"
        try:
            seconds = float(timeout)
        except ValueError:
            raise ValueError(f"OTEL_EXPORTER_OTLP_TIMEOUT={timeout!r}: give seconds") from None
        endpoint, insecure = _endpoint(environ, protocol)
        tls_files = {}
        for name in ("CERTIFICATE", "CLIENT_KEY", "CLIENT_CERTIFICATE"):
            variable = next(
                (v for v in (f"OTEL_EXPORTER_OTLP_TRACES_{name}", f"OTEL_EXPORTER_OTLP_{name}") if environ.get(v)), ""
            )
            if variable and not os.access(environ[variable], os.R_OK):
                raise ValueError(f"{variable}={environ[variable]!r}: no readable file there")
            if variable:
                tls_files[name] = (variable, environ[variable])
        secure = urlsplit(endpoint).scheme == "https" if protocol == "http/protobuf" else not insecure
        if secure:
            _check_tls_files(tls_files)
        return cls(
            protocol=protocol,
            endpoint=endpoint,
            headers=tuple(parse_env_headers(setting("HEADERS") or "", liberal=True).items()),
            timeout=seconds,
            compression=compression,
            insecure=insecure,
            certificate=setting("CERTIFICATE"),
            client_key=setting("CLIENT_KEY"),
            client_certificate=setting("CLIENT_CERTIFICATE"),
        )


def _endpoint(environ: Mapping[str, str], protocol: str) -> tuple[str, bool]:
    name, endpoint = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    if protocol == "grpc":
        if not endpoint:
            name, endpoint = "OTEL_EXPORTER_OTLP_ENDPOINT", environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        endpoint = endpoint or "http://localhost:4317"
        scheme = urlsplit(endpoint).scheme
        insecure_flag = environ.get("OTEL_EXPORTER_OTLP_TRACES_INSECURE") or environ.get("OTEL_EXPORTER_OTLP_INSECURE")
        if scheme == "https":
            return endpoint, False
        if insecure_flag is not None:
            return endpoint, insecure_flag.strip().lower() == "true"
        return endpoint, scheme == "http"
    if not endpoint:
        name, base = "OTEL_EXPORTER_OTLP_ENDPOINT", environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        endpoint = (base or "http://localhost:4318").removesuffix("/") + "/v1/traces"
    if urlsplit(endpoint).scheme not in ("http", "https"):
        raise ValueError(f"{name}={endpoint!r}: use an http:// or https:// URL")
    return endpoint, True  # "insecure" is a gRPC setting; over HTTP the URL's scheme decides


def _check_tls_files(files: Mapping[str, tuple[str, str]]) -> None:
    """Load the PEM files the exporter will use, so a broken one stops start-up with its
    variable named rather than with a traceback (HTTP) or a failing export (gRPC, which
    reads them only when it connects). ``files``: setting → (variable, path)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if "CERTIFICATE" in files:
        variable, path = files["CERTIFICATE"]
        try:
            context.load_verify_locations(cafile=path)
        except ssl.SSLError as exc:
            raise ValueError(f"{variable}={path!r}: no PEM certificate there ({exc.reason or exc})") from exc
    if "CLIENT_CERTIFICATE" in files:
        variable, path = files["CLIENT_CERTIFICATE"]
        named = f"{variable}={path!r}"
        key_path = None
        if "CLIENT_KEY" in files:
            key_variable, key_path = files["CLIENT_KEY"]
            named += f" with {key_variable}={key_path!r}"
        try:
            # An encrypted key would make OpenSSL prompt on the terminal: refused instead.
            context.load_cert_chain(path, key_path, password=lambda: b"")
        except ssl.SSLError as exc:
            raise ValueError(
                f"{named}: not a PEM certificate and its unencrypted private key ({exc.reason or exc})"
            ) from exc


class Attempt(NamedTuple):
    ok: bool
    retryable: bool = False
    retry_after: float | None = None  # seconds the server asked for
    reason: str = ""


class RetryingSender(ABC):
    """A span sink (:class:`proxy.span_batches.SpanSink`) that tries again on transient
    failures. Called from one thread only (the span batches' I/O thread); ``shutdown``
    cuts a backoff short."""

    def __init__(self, settings: OtlpSettings, where: str) -> None:
        self.settings = settings
        self._where = where  # for logs: no credentials, no query
        self._closing = threading.Event()
        self._failing = False

    def write(self, payload: bytes) -> bool:
        deadline = time.monotonic() + self.settings.timeout
        attempt = Attempt(ok=False)
        for retry in range(_MAX_RETRIES + 1):
            attempt = self._attempt(payload, max(0.1, deadline - time.monotonic()))
            if attempt.ok:
                if self._failing:
                    log.info("sending spans to %s again", self._where)
                    self._failing = False
                return True
            if not attempt.retryable:
                break
            delay = attempt.retry_after if attempt.retry_after is not None else 2**retry * random.uniform(0.8, 1.2)
            if time.monotonic() + delay >= deadline or self._closing.wait(delay):
                break
        if not self._failing:
            log.warning(
                "cannot send spans to %s (%s); dropping them (flywheel_spans_dropped_total)",
                self._where,
                attempt.reason,
            )
            self._failing = True
        return False

    def shutdown(self) -> None:
        self._closing.set()
        self._close()

    @abstractmethod
    def _attempt(self, payload: bytes, timeout: float) -> Attempt: ...

    @abstractmethod
    def _close(self) -> None: ...


def sender_for(settings: OtlpSettings) -> RetryingSender:
    if settings.protocol == "grpc":
        from proxy.otlp_grpc import OtlpGrpcSender  # grpc loads only when asked for

        return OtlpGrpcSender(settings)
    from proxy.otlp_http import OtlpHttpSender

    return OtlpHttpSender(settings)
