"""Where spans go: the spans file (round trip through the optimizer's reader, rotation),
real OTLP receivers on loopback (HTTP and gRPC, the standard OTEL_* variables), and
the count of spans dropped when export falls behind."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import grpc
import openai
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SpanExportResult

from flywheel.spans import SpansFileExporter, open_span_source
from proxy.content import CaptureContent
from proxy.server import running
from proxy.tracing import Export, Stdout
from tests.conftest import API_KEY, config_for
from tests.fake_upstream import FakeUpstream, Reply
from tests.processes import flywheel_proxy, serving

MESSAGES = [{"role": "user", "content": "Hello"}]


async def test_spans_file_round_trips_through_the_span_source(upstream: FakeUpstream, tmp_path: Path) -> None:
    path = tmp_path / "spans" / "flywheel.jsonl"
    config = config_for(upstream.url, export=Export(spans_file=path))
    async with running(config) as proxy:
        async with openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key=API_KEY, max_retries=0) as c:
            raw = await c.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)
            stream = await c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
            _ = [chunk async for chunk in stream]
    # leaving `running` shut the provider down, which flushed the batch processor
    spans = list(open_span_source(path).spans())
    assert [s.name for s in spans] == ["chat gpt-4o-mini", "chat gpt-4o-mini"]
    first = spans[0]
    assert first.attributes["flywheel.request_id"] == raw.headers["X-Request-Id"]
    assert first.attributes["gen_ai.response.finish_reasons"] == ["stop"]
    assert first.attributes["gen_ai.usage.input_tokens"] == 7 and first.kind == 3  # SPAN_KIND_CLIENT
    assert len(first.trace_id) == 32 and len(first.span_id) == 16 and first.end_ns > first.start_ns
    assert first.resource["service.name"] == "flywheel-proxy"
    assert spans[1].attributes["gen_ai.request.stream"] is True


async def test_long_attributes_are_cut_as_the_sdk_cuts_them(upstream: FakeUpstream, tmp_path: Path) -> None:
    """OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT (the SPAN_ one first) cuts strings, and strings in
    lists, on call spans and feedback spans alike: captured content is what outgrows a
    collector's or a backend's limits."""
    path = tmp_path / "spans.jsonl"
    environ = {"OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT": "99", "OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT": "40"}
    export = Export.from_environ(environ, path, 1 << 20)
    config = config_for(upstream.url, export=export, capture_content=CaptureContent.FULL)
    async with running(config) as proxy:
        async with openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key=API_KEY, max_retries=0) as c:
            long = [{"role": "user", "content": "x" * 500}]
            raw = await c.chat.completions.with_raw_response.create(model="m", messages=long, stop=["a" * 60, "b"])
        async with aiohttp.ClientSession() as session:
            feedback = {"request_id": raw.headers["X-Request-Id"], "thumbs": "down", "comment": "y" * 80}
            async with session.post(proxy.url + "/v1/feedback", json=feedback) as answer:
                assert answer.status == 202
    call, rated = list(open_span_source(path).spans())
    assert len(call.attributes["gen_ai.input.messages"]) == 40
    assert call.attributes["gen_ai.request.stop_sequences"] == ["a" * 40, "b"]
    assert call.attributes["gen_ai.usage.input_tokens"] == 7  # numbers as they are
    assert rated.attributes["gen_ai.evaluation.explanation"] == "y" * 40
    assert rated.attributes["flywheel.request_id"] == raw.headers["X-Request-Id"]  # ids are shorter


def _span_batch(provider: TracerProvider, count: int) -> list[object]:
    tracer = provider.get_tracer("t")
    spans = []
    for i in range(count):
        span = tracer.start_span(f"s{i}", attributes={"i": i, "pad": "x" * 200})
        span.end()
        spans.append(span)
    return spans


def test_spans_file_rotates_by_size_and_the_source_reads_oldest_first(tmp_path: Path) -> None:
    path = tmp_path / "spans.jsonl"
    exporter = SpansFileExporter(path, max_bytes=2000, backups=3)
    provider = TracerProvider()
    for span in _span_batch(provider, 12):
        assert exporter.export([span]) is SpanExportResult.SUCCESS  # type: ignore[list-item]
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["spans.jsonl", "spans.jsonl.1", "spans.jsonl.2", "spans.jsonl.3"]
    assert all(p.stat().st_size <= 2000 for p in tmp_path.iterdir())
    names = [s.name for s in open_span_source(path).spans()]
    assert names == sorted(names, key=lambda n: int(n[1:])) and names[-1] == "s11"  # oldest dropped, order kept
    assert [s.name for s in open_span_source(str(tmp_path / "spans.jsonl*")).spans()]  # a glob works too
    assert len(list(open_span_source(tmp_path).spans())) == len(names)  # and a directory


def test_bad_lines_are_skipped_and_counted(tmp_path: Path) -> None:
    path = tmp_path / "spans.jsonl"
    exporter = SpansFileExporter(path)
    exporter.export(_span_batch(TracerProvider(), 2))  # type: ignore[arg-type]
    with open(path, "ab") as handle:
        handle.write(b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"name": "half\n')
    source = open_span_source(path)
    assert [s.name for s in source.spans()] == ["s0", "s1"] and source.bad_lines == 1


# --- real OTLP receivers ---------------------------------------------------------------


class Received:
    def __init__(self) -> None:
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []
        self.headers: list[dict[str, str]] = []
        self.arrived = asyncio.Event()

    def take(self, payload: trace_service_pb2.ExportTraceServiceRequest, headers: dict[str, str]) -> None:
        self.requests.append(payload)
        self.headers.append(headers)
        self.arrived.set()

    def spans(self) -> list[tuple[str, dict[str, object], dict[str, object]]]:
        out = []
        for request in self.requests:
            for rs in request.resource_spans:
                resource = {kv.key: kv.value.string_value for kv in rs.resource.attributes}
                for ss in rs.scope_spans:
                    for span in ss.spans:
                        attributes = {kv.key: _any(kv.value) for kv in span.attributes}
                        out.append((span.name, attributes, resource))
        return out


def _any(value: object) -> object:
    kind = value.WhichOneof("value")  # type: ignore[attr-defined]
    if kind == "array_value":
        return [_any(v) for v in value.array_value.values]  # type: ignore[attr-defined]
    return getattr(value, kind) if kind else None


async def otlp_http_receiver() -> AsyncIterator[tuple[str, Received]]:
    received = Received()

    async def traces(request: aiohttp.web.Request) -> aiohttp.web.Response:
        payload = trace_service_pb2.ExportTraceServiceRequest.FromString(await request.read())
        received.take(payload, dict(request.headers))
        body = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
        return aiohttp.web.Response(body=body, content_type="application/x-protobuf")

    app = aiohttp.web.Application()
    app.router.add_post("/v1/traces", traces)
    async with serving(app) as url:
        yield url, received


async def otlp_grpc_receiver() -> AsyncIterator[tuple[str, Received]]:
    received = Received()

    class Service(trace_service_pb2_grpc.TraceServiceServicer):
        async def Export(self, request, context):  # type: ignore[no-untyped-def]  # noqa: N802 - gRPC's name
            received.take(request, dict(context.invocation_metadata()))
            return trace_service_pb2.ExportTraceServiceResponse()

    server = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Service(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"http://127.0.0.1:{port}", received
    finally:
        await server.stop(None)


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
async def test_otlp_export_to_a_real_receiver(upstream: FakeUpstream, protocol: str) -> None:
    receiver = otlp_http_receiver if protocol == "http/protobuf" else otlp_grpc_receiver
    async for endpoint, received in receiver():
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
            "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
            "OTEL_EXPORTER_OTLP_HEADERS": "x-tenant=acme",
            "OTEL_SERVICE_NAME": "checkout-sidecar",
            "OTEL_BSP_SCHEDULE_DELAY": "50",
        }
        error = b'{"error":{"message":"slow down","type":"requests","param":null,"code":"rate_limit_exceeded"}}'
        upstream.script("/v1/embeddings", Reply(status=429, body=[error]))
        async with flywheel_proxy("--upstream", upstream.url + "/v1", env=env) as proxy:
            async with openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key=API_KEY, max_retries=0) as c:
                await c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, temperature=0.5)
                stream = await c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
                _ = [chunk async for chunk in stream]
                with pytest.raises(openai.RateLimitError):
                    await c.embeddings.create(model="text-embedding-3-small", input="x")
                await c.embeddings.create(model="text-embedding-3-small", input="x")
            while len(received.spans()) < 4:
                received.arrived.clear()
                await asyncio.wait_for(received.arrived.wait(), 20)
    spans = {
        (name, a.get("gen_ai.request.stream"), a.get("error.type")): (a, resource)
        for name, a, resource in received.spans()
    }
    chat, resource = spans[("chat gpt-4o-mini", False, None)]
    assert resource["service.name"] == "checkout-sidecar"
    assert {k: chat[k] for k in chat if k not in ("flywheel.request_id", "server.port", "flywheel.cost.usd")} == {
        "gen_ai.operation.name": "chat",
        "gen_ai.request.stream": False,
        "gen_ai.provider.name": "openai",
        "server.address": "127.0.0.1",
        "gen_ai.request.model": "gpt-4o-mini",
        "gen_ai.request.temperature": 0.5,
        "gen_ai.response.model": "gpt-4o-mini",
        "gen_ai.response.id": "chatcmpl-fake",
        "gen_ai.response.finish_reasons": ["stop"],
        "gen_ai.usage.input_tokens": 7,
        "gen_ai.usage.output_tokens": 5,
        "openai.response.system_fingerprint": "fp_fake",
        "http.response.status_code": 200,
    }
    streamed, _ = spans[("chat gpt-4o-mini", True, None)]
    assert streamed["gen_ai.usage.output_tokens"] == 2 and streamed["flywheel.time_to_first_chunk"] > 0
    failed, _ = spans[("embeddings text-embedding-3-small", False, "429")]
    assert failed["http.response.status_code"] == 429 and failed["gen_ai.operation.name"] == "embeddings"
    embedded, _ = spans[("embeddings text-embedding-3-small", False, None)]
    assert embedded["gen_ai.usage.input_tokens"] == 3
    assert received.headers[0].get("x-tenant") == "acme"
    assert API_KEY not in str(received.requests) and API_KEY not in str(received.headers)


async def test_console_exporter_writes_otlp_json_lines_to_stdout(upstream: FakeUpstream, tmp_path: Path) -> None:
    env = {"OTEL_TRACES_EXPORTER": "console", "OTEL_BSP_SCHEDULE_DELAY": "50"}
    async with flywheel_proxy("--upstream", upstream.url + "/v1", env=env, stdout=asyncio.subprocess.PIPE) as proxy:
        async with openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key=API_KEY, max_retries=0) as c:
            raw = await c.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)
        assert proxy.process.stdout is not None
        line = await asyncio.wait_for(proxy.process.stdout.readline(), 20)
    (tmp_path / "stdout.jsonl").write_bytes(line)  # read back as the optimizer reads a spans file
    [span] = open_span_source(tmp_path / "stdout.jsonl").spans()
    assert span.name == "chat gpt-4o-mini"
    assert span.attributes["flywheel.request_id"] == raw.headers["X-Request-Id"]
    assert API_KEY.encode() not in line and "listening on" not in line.decode()  # the log stays on stderr


def test_a_closed_stdout_loses_the_batch_without_raising() -> None:
    stream = io.BytesIO()
    stream.close()
    sink = Stdout(stream)
    assert sink.write(b"{}\n") is False  # the processor counts the batch's spans as dropped
    sink.shutdown()
