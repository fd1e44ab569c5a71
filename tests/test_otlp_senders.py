"""OTLP export: settings read as the SDK reads them, and the HTTP and gRPC senders against
real receivers on loopback that answer as told (gzip, retries, refusals, hangs, outages)."""

from __future__ import annotations

import asyncio
import datetime
import logging
import socket
import time
from collections.abc import AsyncIterator

import aiohttp
import grpc
import openai
import pytest
from aiohttp import web
from google.rpc import error_details_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanContext, TraceFlags
from prometheus_client import CollectorRegistry, Counter

from proxy.otlp import OtlpSettings
from proxy.otlp_grpc import OtlpGrpcSender
from proxy.otlp_http import OtlpHttpSender
from proxy.otlp_protobuf import ProtobufEncoder
from proxy.span_batches import BatchedSpansProcessor
from proxy.tracing import Export
from tests.conftest import API_KEY, proxy_for
from tests.fake_upstream import FakeUpstream
from tests.processes import serving

MESSAGES = [{"role": "user", "content": "hi"}]
SECRET_HEADER = "honeycomb-key-0123456789"


def test_settings_follow_the_otlp_variables() -> None:
    base = OtlpSettings.from_environ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/"}, "http/protobuf")
    assert base.endpoint == "http://collector:4318/v1/traces" and base.timeout == 10 and base.compression == "none"
    own = OtlpSettings.from_environ(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://ignored:4318",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://api.vendor.io/traces",
            "OTEL_EXPORTER_OTLP_HEADERS": "x-api-key=abc%3D%3D,x-team=core",
            "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": "2.5",
            "OTEL_EXPORTER_OTLP_COMPRESSION": "GZIP",
        },
        "http/protobuf",
    )
    assert own.endpoint == "https://api.vendor.io/traces"
    assert dict(own.headers) == {"x-api-key": "abc==", "x-team": "core"}
    assert own.timeout == 2.5 and own.compression == "gzip"


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("OTEL_EXPORTER_OTLP_COMPRESSION", "brotli", "none or gzip"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json", "http/protobuf, grpc"),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "soon", "give seconds"),
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "collector:4318", "http:// or https://"),
        ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/no/such/ca.pem", "no readable file"),
        ("OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY", "/no/such/key.pem", "no readable file"),
        ("OTEL_BSP_MAX_QUEUE_SIZE", "-5", "positive whole number"),
        ("OTEL_BSP_SCHEDULE_DELAY", "0", "positive whole number"),
        ("OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT", "-1", "whole number of characters"),
        ("OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT", "2k", "whole number of characters"),
    ],
)
def test_bad_settings_are_refused_with_the_variable_named(name: str, value: str, message: str) -> None:
    environ = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", name: value}
    with pytest.raises(ValueError, match=message) as raised:
        Export.from_environ(environ, None, 1)
    assert name in str(raised.value) or name.replace("OTEL_EXPORTER_OTLP_TRACES_", "OTEL_EXPORTER_OTLP_") in str(
        raised.value
    )


@pytest.mark.parametrize(
    ("environ", "otlp", "console"),
    [
        ({}, None, False),  # unset: OTLP only when an endpoint is set (no collector beside a sidecar)
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, "http://collector:4318/v1/traces", False),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, "http://localhost:4318/v1/traces", False),  # the SDK's default endpoint
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "http://localhost:4317", False),
        ({"OTEL_TRACES_EXPORTER": " Console "}, None, True),
        ({"OTEL_TRACES_EXPORTER": "otlp,console"}, "http://localhost:4318/v1/traces", True),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, None, False),
        ({"OTEL_TRACES_EXPORTER": "otlp,console", "OTEL_SDK_DISABLED": "true"}, None, False),
    ],
)
def test_traces_exporter_picks_the_exporters(environ: dict[str, str], otlp: str | None, console: bool) -> None:
    export = Export.from_environ(environ, None, 1)
    assert (export.otlp.endpoint if export.otlp else None, export.console) == (otlp, console)


def test_an_exporter_flywheel_lacks_stops_start_up() -> None:
    with pytest.raises(ValueError, match="OTEL_TRACES_EXPORTER='otlp,zipkin': flywheel exports spans with otlp"):
        Export.from_environ({"OTEL_TRACES_EXPORTER": "otlp,zipkin"}, None, 1)


def test_batch_processor_settings_apply_to_the_proxy_processors() -> None:
    environ = {"OTEL_BSP_MAX_QUEUE_SIZE": "100", "OTEL_BSP_SCHEDULE_DELAY": "250"}
    export = Export.from_environ(environ, None, 1)
    assert export.queue_size == 100 and export.schedule_delay == 0.25 and export.otlp is None


class Receiver:
    """Answers with the statuses it is given, in order (then 200), and keeps what came."""

    def __init__(self, *statuses: int, retry_after: str | None = None, hang: bool = False) -> None:
        self.statuses = list(statuses)
        self.retry_after = retry_after
        self.hang = hang
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.peers: set[object] = set()
        self.release = asyncio.Event()
        self.arrived = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()  # aiohttp inflates a gzip body
        self.requests.append((dict(request.headers), body))
        self.arrived.set()
        assert request.transport is not None
        self.peers.add(request.transport.get_extra_info("peername"))
        if self.hang:
            await self.release.wait()
        status = self.statuses.pop(0) if self.statuses else 200
        headers = {"Retry-After": self.retry_after} if self.retry_after and status != 200 else {}
        return web.Response(status=status, body=b"", headers=headers, content_type="application/x-protobuf")

    def spans(self) -> list[str]:
        names = []
        for _, body in self.requests:
            request = ExportTraceServiceRequest.FromString(body)
            names += [s.name for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans]
        return names


async def receiving(receiver: Receiver) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post("/v1/traces", receiver.handle)
    async with serving(app) as url:
        yield url


def _payload(*names: str) -> bytes:
    spans = [ReadableSpan(n, SpanContext(i + 1, i + 1, False, TraceFlags(1))) for i, n in enumerate(names)]
    return ProtobufEncoder().encode(spans)


def _sender(url: str, **settings: object) -> OtlpHttpSender:
    return OtlpHttpSender(OtlpSettings(endpoint=url + "/v1/traces", **settings))  # type: ignore[arg-type]


async def test_posts_protobuf_with_headers_and_gzip_on_one_connection() -> None:
    receiver = Receiver()
    async for url in receiving(receiver):
        sender = _sender(url, headers=(("x-api-key", SECRET_HEADER),), compression="gzip")
        assert await asyncio.to_thread(sender.write, _payload("a", "b"))
        assert await asyncio.to_thread(sender.write, _payload("c"))
        sender.shutdown()
    assert receiver.spans() == ["a", "b", "c"]
    headers = receiver.requests[0][0]
    assert headers["Content-Type"] == "application/x-protobuf" and headers["x-api-key"] == SECRET_HEADER
    assert headers["Content-Encoding"] == "gzip" and int(headers["Content-Length"]) < len(_payload("a", "b"))
    assert len(receiver.peers) == 1  # kept alive


async def test_retryable_answers_are_retried_after_retry_after() -> None:
    receiver = Receiver(503, 429, retry_after="0")
    async for url in receiving(receiver):
        sender = _sender(url, timeout=5.0)
        assert await asyncio.to_thread(sender.write, _payload("a"))
        sender.shutdown()
    assert len(receiver.requests) == 3 and receiver.spans() == ["a", "a", "a"]


async def test_a_refused_batch_is_not_retried_and_failures_are_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    receiver = Receiver(400, 400, 400)
    caplog.set_level(logging.INFO, "flywheel.proxy.otlp")
    async for url in receiving(receiver):
        sender = _sender(url, headers=(("x-api-key", SECRET_HEADER),))
        assert not await asyncio.to_thread(sender.write, _payload("a"))
        assert not await asyncio.to_thread(sender.write, _payload("b"))
        assert len(receiver.requests) == 2
        assert await asyncio.to_thread(sender.write, _payload("c")) is False  # third 400
        assert await asyncio.to_thread(sender.write, _payload("d"))
        sender.shutdown()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "HTTP 400" in warnings[0] and url.removeprefix("http://") in warnings[0]
    assert any("again" in r.getMessage() for r in caplog.records)
    assert SECRET_HEADER not in caplog.text


async def test_a_hanging_receiver_costs_at_most_the_timeout() -> None:
    receiver = Receiver(hang=True)
    async for url in receiving(receiver):
        sender = _sender(url, timeout=0.5)
        started = time.monotonic()
        assert not await asyncio.to_thread(sender.write, _payload("a"))
        assert time.monotonic() - started < 2
        sender.shutdown()
        receiver.release.set()


async def test_shutdown_cuts_a_backoff_short() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
    sender = _sender(closed, timeout=60.0)
    writing = asyncio.create_task(asyncio.to_thread(sender.write, _payload("a")))
    await asyncio.sleep(0.2)  # let the first attempt fail and the backoff begin
    started = time.monotonic()
    sender.shutdown()
    assert await asyncio.wait_for(writing, 5) is False
    assert time.monotonic() - started < 2


async def test_proxy_keeps_serving_when_the_collector_is_down(upstream: FakeUpstream) -> None:
    """Nothing listens at the OTLP endpoint: calls are answered as usual, the spans are
    dropped and counted, and shutdown does not wait out the retries."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
    export = Export(otlp=OtlpSettings(endpoint=closed + "/v1/traces", timeout=0.3), schedule_delay=0.05)
    started = time.monotonic()
    async with proxy_for(upstream, export=export) as proxy:
        async with openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key=API_KEY, max_retries=0) as client:
            for _ in range(5):
                await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        async with aiohttp.ClientSession() as session:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                async with session.get(proxy.url + "/metrics") as r:
                    text = await r.text()
                if "flywheel_spans_dropped_total 5.0" in text:
                    break
                await asyncio.sleep(0.05)  # the I/O thread gives up after the timeout; nothing to await
            assert "flywheel_spans_dropped_total 5.0" in text
    assert time.monotonic() - started < 10


# --- gRPC ------------------------------------------------------------------------------


def test_grpc_settings_follow_the_sdk() -> None:
    plain = OtlpSettings.from_environ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}, "grpc")
    assert plain.endpoint == "http://collector:4317" and plain.insecure
    assert not OtlpSettings.from_environ({"OTEL_EXPORTER_OTLP_ENDPOINT": "https://vendor:443"}, "grpc").insecure
    bare = {"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4317"}
    assert not OtlpSettings.from_environ(bare, "grpc").insecure  # secure unless told
    assert OtlpSettings.from_environ({**bare, "OTEL_EXPORTER_OTLP_INSECURE": "true"}, "grpc").insecure


class GrpcReceiver:
    """A real gRPC TraceService that fails with the codes it is given, then accepts."""

    def __init__(self, *codes: grpc.StatusCode, retry_delay: float | None = None) -> None:
        self.codes = list(codes)
        self.retry_delay = retry_delay
        self.requests: list[tuple[dict[str, str], ExportTraceServiceRequest]] = []

    async def export(self, request: ExportTraceServiceRequest, context: grpc.aio.ServicerContext) -> object:
        self.requests.append((dict(context.invocation_metadata()), request))  # type: ignore[arg-type]
        if self.codes:
            code = self.codes.pop(0)
            trailing: tuple[tuple[str, bytes], ...] = ()
            if self.retry_delay is not None:
                info = error_details_pb2.RetryInfo()
                info.retry_delay.FromTimedelta(datetime.timedelta(seconds=self.retry_delay))
                trailing = (("google.rpc.retryinfo-bin", info.SerializeToString()),)
            await context.abort(code, "told to", trailing_metadata=trailing)
        return ExportTraceServiceResponse()


async def grpc_receiving(receiver: GrpcReceiver) -> AsyncIterator[str]:
    class Service(trace_service_pb2_grpc.TraceServiceServicer):
        Export = staticmethod(receiver.export)  # noqa: N815 - gRPC's name

    server = grpc.aio.server(compression=None)
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Service(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await server.stop(None)


def _grpc_sender(url: str, **settings: object) -> OtlpGrpcSender:
    return OtlpGrpcSender(OtlpSettings(protocol="grpc", endpoint=url, **settings))  # type: ignore[arg-type]


async def test_grpc_sends_the_serialized_request_with_metadata_gzip_on() -> None:
    receiver = GrpcReceiver()
    async for url in grpc_receiving(receiver):
        sender = _grpc_sender(url, headers=(("X-Api-Key", SECRET_HEADER),), compression="gzip")
        assert await asyncio.to_thread(sender.write, _payload("a", "b"))
        sender.shutdown()
    metadata, request = receiver.requests[0]
    assert [s.name for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans] == ["a", "b"]
    assert metadata["x-api-key"] == SECRET_HEADER and "flywheel-proxy" in metadata["user-agent"]


async def test_grpc_retries_unavailable_after_the_servers_retry_info() -> None:
    receiver = GrpcReceiver(grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED, retry_delay=0.01)
    async for url in grpc_receiving(receiver):
        sender = _grpc_sender(url, timeout=5.0)
        started = time.monotonic()
        assert await asyncio.to_thread(sender.write, _payload("a"))
        assert time.monotonic() - started < 1  # the server's 10 ms, not the 1 s + 2 s backoff
        sender.shutdown()
    assert len(receiver.requests) == 3


async def test_grpc_does_not_retry_what_the_server_refused(caplog: pytest.LogCaptureFixture) -> None:
    receiver = GrpcReceiver(grpc.StatusCode.INVALID_ARGUMENT)
    async for url in grpc_receiving(receiver):
        sender = _grpc_sender(url, headers=(("x-api-key", SECRET_HEADER),))
        assert not await asyncio.to_thread(sender.write, _payload("a"))
        sender.shutdown()
    assert len(receiver.requests) == 1
    assert "INVALID_ARGUMENT" in caplog.text and SECRET_HEADER not in caplog.text


def test_shutdown_with_the_collector_down_is_bounded_and_counts_the_loss() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
    dropped = Counter("dropped", "spans dropped", registry=CollectorRegistry())
    sender = OtlpHttpSender(OtlpSettings(endpoint=closed + "/v1/traces", timeout=30.0))  # would retry for 30 s
    processor = BatchedSpansProcessor(ProtobufEncoder().encode, sender, dropped, batch=4, shutdown_timeout=0.3)
    for i in range(10):
        processor.on_end(ReadableSpan(f"s{i}", SpanContext(i + 1, i + 1, False, TraceFlags(1))))
    started = time.monotonic()
    processor.shutdown()
    assert time.monotonic() - started < 2
    assert dropped._value.get() == 10


async def test_shutdown_wakes_a_send_waiting_on_a_hanging_collector() -> None:
    receiver = Receiver(hang=True)
    async for url in receiving(receiver):
        sender = _sender(url, timeout=30.0)
        writing = asyncio.create_task(asyncio.to_thread(sender.write, _payload("a")))
        await asyncio.wait_for(receiver.arrived.wait(), 5)  # the request is in; the answer never comes
        started = time.monotonic()
        sender.shutdown()
        assert await asyncio.wait_for(writing, 5) is False
        assert time.monotonic() - started < 2
        receiver.release.set()
