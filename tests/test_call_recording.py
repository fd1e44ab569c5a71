"""Calls are recorded (metrics, span, recent calls) together on the event loop's next
pass; a feedback lookup records what is waiting first, and one call that cannot be
recorded does not cost the others theirs."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from multidict import CIMultiDict, CIMultiDictProxy
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from proxy.content import CaptureContent, ContentRecorder
from proxy.metrics import ProxyMetrics
from proxy.pricing import PriceTable
from proxy.telemetry import CallTrace, Telemetry
from proxy.tracing import Tracing
from proxy.upstreams import OpenAIUpstream
from proxy.wire import Call
from tests.spans import SpanCollector

HEADERS = CIMultiDictProxy(CIMultiDict({"Content-Type": "application/json"}))


def _telemetry() -> tuple[Telemetry, SpanCollector, ProxyMetrics]:
    collector = SpanCollector()
    metrics = ProxyMetrics()
    tracing = Tracing.around(SimpleSpanProcessor(collector))
    return Telemetry(tracing, metrics, PriceTable({}), ContentRecorder(CaptureContent.NONE)), collector, metrics


def _answered(telemetry: Telemetry, request_id: str) -> CallTrace:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    call = Call(request_id, "POST", "chat/completions", "/chat/completions", CIMultiDict(), b"{}", body, "m", False)
    traced = telemetry.begin(call, HEADERS, time.perf_counter())
    assert traced is not None and call.outcome is not None
    traced.routed(OpenAIUpstream("http://127.0.0.1:9/v1"))
    call.outcome.status = 200
    call.outcome.read_body(b'{"id":"chatcmpl-1","model":"m","choices":[],"usage":{"prompt_tokens":3}}')
    return traced


def _requests(metrics: ProxyMetrics) -> float:
    value = metrics.registry.get_sample_value(
        "flywheel_requests_total", {"prompt": "", "version": "", "arm": "", "model": "m", "status_class": "2xx"}
    )
    return value or 0.0


async def test_calls_answered_in_one_pass_are_recorded_on_the_next() -> None:
    telemetry, spans, metrics = _telemetry()
    for i in range(3):
        _answered(telemetry, f"req_{i}").finish()
    assert metrics.in_flight == 0  # the gauge is current at once
    assert (list(spans.get_finished_spans()), _requests(metrics)) == ([], 0)
    await asyncio.sleep(0)  # one pass of the loop
    assert [s.attributes["flywheel.request_id"] for s in list(spans.get_finished_spans())] == [
        "req_0",
        "req_1",
        "req_2",
    ]
    assert _requests(metrics) == 3
    ended = spans.get_finished_spans()[0]
    assert ended.end_time is not None and ended.start_time is not None and ended.end_time >= ended.start_time


async def test_feedback_lookup_finds_a_call_answered_a_moment_ago() -> None:
    telemetry, spans, _ = _telemetry()
    _answered(telemetry, "req_now").finish()
    served = telemetry.served("req_now")
    assert served is not None and served.response_id == "chatcmpl-1"
    assert len(list(spans.get_finished_spans())) == 1


async def test_one_call_that_cannot_be_recorded_leaves_the_others(caplog: pytest.LogCaptureFixture) -> None:
    telemetry, spans, metrics = _telemetry()
    broken = _answered(telemetry, "req_broken")
    broken._call.outcome = None  # what recording it asserts against
    broken.finish()
    _answered(telemetry, "req_fine").finish()
    with caplog.at_level(logging.ERROR, logger="flywheel.proxy"):
        await asyncio.sleep(0)
    assert [s.attributes["flywheel.request_id"] for s in list(spans.get_finished_spans())] == ["req_fine"]
    assert _requests(metrics) == 1
    assert "req_broken" in caplog.text


def test_without_an_event_loop_a_call_is_recorded_at_once() -> None:
    telemetry, spans, _ = _telemetry()
    _answered(telemetry, "req_sync").finish()
    assert len(list(spans.get_finished_spans())) == 1


@pytest.mark.parametrize(
    ("params", "recorded"),
    [
        ({}, {}),
        (
            {"temperature": 1, "top_p": 0.9, "n": 2, "seed": 7, "max_tokens": 10},
            {"temperature": 1.0, "top_p": 0.9, "choice.count": 2, "seed": 7, "max_tokens": 10},
        ),
        ({"max_tokens": 10, "max_completion_tokens": 20}, {"max_tokens": 20}),  # the newer name wins
        ({"temperature": "hot", "n": True, "seed": None, "user": "u1"}, {}),  # not numbers: left out
        (
            {"frequency_penalty": 0.5, "presence_penalty": -1, "top_k": 40, "n": 1, "stop": "END"},
            {"frequency_penalty": 0.5, "presence_penalty": -1.0, "top_k": 40, "stop_sequences": ("END",)},
        ),  # a choice count of 1 is left out, as the conventions ask
        ({"max_tokens": 10.0, "top_k": 2.5}, {"max_tokens": 10}),  # counts: whole numbers only
        ({"stop": ["a", "b"]}, {"stop_sequences": ("a", "b")}),
        ({"stop": ["a", 1]}, {}),
        ({"stop": ["sk-live-abcdefghijklmnop1234"]}, {"stop_sequences": ("[REDACTED]",)}),  # in every content mode
    ],
)
def test_request_parameters_become_attributes(params: dict[str, object], recorded: dict[str, object]) -> None:
    telemetry, spans, _ = _telemetry()
    body = {"model": "m", "messages": [], **params}
    call = Call("req_p", "POST", "chat/completions", "/chat/completions", CIMultiDict(), b"{}", body, "m", False)
    traced = telemetry.begin(call, HEADERS, time.perf_counter())
    assert traced is not None and call.outcome is not None
    call.outcome.status = 200
    call.outcome.read_body(b'{"choices":[{"index":1,"finish_reason":"length"},{"index":0,"finish_reason":"stop"}]}')
    traced.record()
    (span,) = spans.get_finished_spans()
    a = span.attributes
    assert {k.removeprefix("gen_ai.request."): v for k, v in a.items() if k.startswith("gen_ai.request.")} == {
        "model": "m",
        "stream": False,
        **recorded,
    }
    assert type(a.get("gen_ai.request.temperature", 0.0)) is float
    assert a["gen_ai.response.finish_reasons"] == ("stop", "length")  # by choice index
