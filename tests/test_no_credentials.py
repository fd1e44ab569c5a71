"""The app's API key and the sidecar's own key never reach a span, a log line or a metric,
whatever the content-capture mode — even when a user pastes the key into a message."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import aiohttp
import openai
import orjson
import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from proxy.content import CaptureContent
from proxy.server import running
from proxy.tracing import Export, Tracing
from proxy.upstreams import OpenAIUpstream, Upstreams
from tests.conftest import API_KEY, config_for
from tests.fake_upstream import FakeUpstream, Reply
from tests.spans import SpanCollector

SIDECAR_KEY = "sk-sidecar-9876543210fedcbaSECRET"


@pytest.mark.parametrize("mode", list(CaptureContent))
@pytest.mark.parametrize("key_source", ["app", "sidecar"])
async def test_no_key_in_spans_logs_or_metrics(
    upstream: FakeUpstream, tmp_path: Path, caplog: pytest.LogCaptureFixture, mode: CaptureContent, key_source: str
) -> None:
    spans_file = tmp_path / "spans.jsonl"
    config = config_for(upstream.url, capture_content=mode, export=Export(spans_file=spans_file))
    if key_source == "sidecar":
        config = dataclasses.replace(
            config, upstreams=Upstreams(default=OpenAIUpstream(upstream.url + "/v1", SIDECAR_KEY))
        )
    pasted = f"my keys are {API_KEY} and {SIDECAR_KEY}, Bearer {API_KEY}"
    error = b'{"error":{"message":"Incorrect API key provided","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}'
    upstream.script("/v1/embeddings", Reply(status=401, body=[error]))
    caplog.set_level(logging.DEBUG)
    async with running(config) as proxy:
        async with openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key=API_KEY, max_retries=0) as c:
            call = {
                "id": "call_0",
                "type": "function",
                "function": {"name": "f", "arguments": orjson.dumps({"q": pasted}).decode()},
            }
            messages = [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": pasted},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [call],
                },  # an agent's turn: the call and its answer
                {"role": "tool", "tool_call_id": "call_0", "content": pasted},
            ]
            raw = await c.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=messages)
            stream = await c.chat.completions.create(model="gpt-4o-mini", messages=messages, stream=True)
            _ = [chunk async for chunk in stream]
            await c.responses.create(model="gpt-4o-mini", input=pasted, instructions=pasted)
            with pytest.raises(openai.AuthenticationError):
                await c.embeddings.create(model="emb", input=pasted)
        async with aiohttp.ClientSession() as session:
            feedback = {
                "request_id": raw.headers["X-Request-Id"],
                "thumbs": "down",
                "comment": pasted,
                "correction": pasted,
            }
            async with session.post(proxy.url + "/v1/feedback", json=feedback) as r:
                assert r.status == 202
            async with session.get(proxy.url + "/metrics") as r:
                metrics = await r.text()
    spans = spans_file.read_text()
    assert spans.count('"flywheel.request_id"') == 5  # chat, stream, responses, embeddings, feedback
    ours = [r for r in caplog.records if r.name.split(".")[0] in ("flywheel", "aiohttp", "opentelemetry", "asyncio")]
    logs = "\n".join(f"{r.getMessage()} {r.exc_text or ''}" for r in ours)  # the SDK's own debug log is the app's
    for secret in (API_KEY, SIDECAR_KEY):
        assert secret not in spans and secret not in logs and secret not in metrics
    if mode is not CaptureContent.NONE:
        assert "my keys are [REDACTED]" in spans  # content was captured, with the keys masked


async def test_a_key_sent_as_the_model_is_in_no_span_name_attribute_or_label(upstream: FakeUpstream) -> None:
    """Arguments swapped: the app sends its key as ``model``. It is forwarded as sent (the
    provider says what is wrong), and recorded as [REDACTED]: /metrics is unauthenticated."""
    collector = SpanCollector()
    tracing = Tracing.around(SimpleSpanProcessor(collector))
    async with running(config_for(upstream.url), tracing) as proxy:
        async with openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key=API_KEY, max_retries=0) as c:
            await c.chat.completions.create(model=API_KEY, messages=[{"role": "user", "content": "hi"}])
            stream = await c.chat.completions.create(
                model=API_KEY, messages=[{"role": "user", "content": "hi"}], stream=True
            )
            _ = [chunk async for chunk in stream]
        spans = await collector.wait_for(2, "chat")
        async with aiohttp.ClientSession() as session, session.get(proxy.url + "/metrics") as r:
            metrics = await r.text()
    assert upstream.seen[-1].json()["model"] == API_KEY
    for span in spans:
        assert span.name == "chat [REDACTED]" and span.attributes["gen_ai.request.model"] == "[REDACTED]"
        assert API_KEY not in str(dict(span.attributes))
    assert API_KEY not in metrics
