"""OTLP/gRPC: serialized export requests sent as the ``TraceService/Export`` call's bytes."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import grpc
from google.rpc import error_details_pb2

from proxy.otlp import USER_AGENT, Attempt, OtlpSettings, RetryingSender

EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
RETRYABLE = frozenset(
    (
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    )
)


class OtlpGrpcSender(RetryingSender):
    def __init__(self, settings: OtlpSettings) -> None:
        target = urlsplit(settings.endpoint).netloc or settings.endpoint
        super().__init__(settings, target)
        options = [("grpc.primary_user_agent", USER_AGENT)]
        compression = grpc.Compression.Gzip if settings.compression == "gzip" else grpc.Compression.NoCompression
        if settings.insecure:
            self._channel = grpc.insecure_channel(target, options, compression)
        else:
            credentials = grpc.ssl_channel_credentials(
                _read(settings.certificate), _read(settings.client_key), _read(settings.client_certificate)
            )
            self._channel = grpc.secure_channel(target, credentials, options, compression)
        # No serializers: the request is already the serialized ExportTraceServiceRequest.
        self._export: grpc.UnaryUnaryMultiCallable[bytes, bytes] = self._channel.unary_unary(EXPORT)
        self._metadata = tuple((key.lower(), value) for key, value in settings.headers)

    def _attempt(self, payload: bytes, timeout: float) -> Attempt:
        try:
            self._export(payload, timeout=timeout, metadata=self._metadata)
        except grpc.RpcError as exc:
            code = exc.code()  # a grpc.Call as well
            return Attempt(ok=False, retryable=code in RETRYABLE, retry_after=_retry_delay(exc), reason=code.name)
        return Attempt(ok=True)

    def _close(self) -> None:
        self._channel.close()


def _retry_delay(error: grpc.RpcError) -> float | None:
    """The server's RetryInfo, as the OTLP specification asks a client to honour."""
    raw = next((m.value for m in error.trailing_metadata() or () if m.key == "google.rpc.retryinfo-bin"), None)
    if raw is None:
        return None
    info = error_details_pb2.RetryInfo.FromString(bytes(raw))
    return float(info.retry_delay.seconds + info.retry_delay.nanos / 1e9)


def _read(path: str | None) -> bytes | None:
    return Path(path).read_bytes() if path else None
