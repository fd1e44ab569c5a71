"""Several upstreams from a model list; Anthropic through litellm; litellm kept off the OpenAI path."""

from __future__ import annotations

import contextlib
import dataclasses
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import openai
import orjson
import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from proxy.config import ProxyConfig
from proxy.errors import ModelNotFound
from proxy.server import RunningProxy, running
from proxy.tracing import Tracing
from proxy.upstreams import LiteLLMUpstream, OpenAIUpstream, Upstreams, load_upstreams
from tests.conftest import API_KEY
from tests.fake_upstream import FakeUpstream, Reply
from tests.spans import SpanCollector

MESSAGES = [{"role": "user", "content": "hello claude"}]
ROOT = Path(__file__).resolve().parent.parent


def test_model_list_file(tmp_path: Path) -> None:
    path = tmp_path / "upstreams.toml"
    path.write_text(
        textwrap.dedent(
            """
            [[model_list]]
            model_name = "claude"
            litellm_params = { model = "anthropic/claude-sonnet-4-5", api_key = "os.environ/ANTHROPIC_API_KEY" }

            [[model_list]]
            model_name = "local"
            litellm_params = { model = "openai/llama3", api_base = "http://127.0.0.1:8000/v1/" }

            [[model_list]]
            model_name = "claude-*"
            litellm_params = { model = "anthropic/*" }

            [[model_list]]
            model_name = "*"
            litellm_params = { model = "openai/*", api_key = "sk-any" }
            """
        )
    )
    upstreams = load_upstreams(path, default=None, api_key=None, environ={"ANTHROPIC_API_KEY": "sk-ant-1"})
    assert upstreams.for_model("claude") == LiteLLMUpstream("anthropic/claude-sonnet-4-5", {"api_key": "sk-ant-1"})
    assert upstreams.for_model("local") == OpenAIUpstream("http://127.0.0.1:8000/v1", None, "llama3")
    assert upstreams.for_model("gpt-4o") == OpenAIUpstream("https://api.openai.com/v1", "sk-any", None)
    assert LiteLLMUpstream("anthropic/*").model_for("claude-opus-4") == "anthropic/claude-opus-4"
    assert "sk-ant-1" not in repr(upstreams) and "sk-any" not in repr(upstreams)
    assert upstreams.for_model("claude-opus-4") == LiteLLMUpstream("anthropic/*")
    only_listed = dataclasses.replace(upstreams, by_model={k: v for k, v in upstreams.by_model.items() if k != "*"})
    with pytest.raises(ModelNotFound, match="not configured"):
        only_listed.for_model("gpt-4o")
    with pytest.raises(ValueError, match="ANTHROPIC_API_KEY is not set"):
        load_upstreams(path, default=None, api_key=None, environ={})


@contextlib.asynccontextmanager
async def model_list_proxy(upstream: FakeUpstream, spans: SpanCollector | None = None) -> AsyncIterator[RunningProxy]:
    upstreams = Upstreams(
        by_model={
            "claude": LiteLLMUpstream("anthropic/claude-x", {"api_key": "sk-ant-test", "api_base": upstream.url}),
            "renamed": OpenAIUpstream(upstream.url + "/v1", "sk-openai-entry", "gpt-real-name"),
        }
    )
    tracing = Tracing.around(SimpleSpanProcessor(spans)) if spans is not None else None
    async with running(ProxyConfig(upstreams=upstreams, port=0), tracing) as proxy:
        yield proxy


def _client(proxy: RunningProxy) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key=API_KEY, max_retries=0)


async def test_openai_entries_route_and_rename_the_model(upstream: FakeUpstream) -> None:
    async with model_list_proxy(upstream) as proxy, _client(proxy) as client:
        answer = await client.chat.completions.create(model="renamed", messages=MESSAGES)
        with pytest.raises(openai.NotFoundError) as info:
            await client.chat.completions.create(model="unlisted", messages=MESSAGES)
        listed = [m.id async for m in client.models.list()]
    assert sorted(listed) == ["claude", "renamed"]
    assert answer.model == "gpt-real-name"
    sent = upstream.seen[-1]
    assert sent.json()["model"] == "gpt-real-name" and sent.headers["Authorization"] == "Bearer sk-openai-entry"
    assert info.value.code == "model_not_found"
    assert len(upstream.seen) == 1  # the unlisted model never left the proxy


@pytest.mark.litellm
async def test_anthropic_through_litellm(upstream: FakeUpstream) -> None:
    spans = SpanCollector()
    async with model_list_proxy(upstream, spans) as proxy, _client(proxy) as client:
        answer = await client.chat.completions.create(model="claude", messages=MESSAGES, max_tokens=50)
        sent = upstream.seen[-1]
        stream = await client.chat.completions.create(
            model="claude", messages=MESSAGES, max_tokens=50, stream=True, stream_options={"include_usage": True}
        )
        chunks = [chunk async for chunk in stream]
        quiet = await client.chat.completions.create(model="claude", messages=MESSAGES, max_tokens=50, stream=True)
        quiet_chunks = [chunk async for chunk in quiet]
        json_span, stream_span, quiet_span = await spans.wait_for(3, "chat")
    assert json_span.name == "chat claude" and json_span.attributes["gen_ai.provider.name"] == "anthropic"
    assert (json_span.attributes["gen_ai.usage.input_tokens"], json_span.attributes["gen_ai.usage.output_tokens"]) == (
        9,
        4,
    )
    assert json_span.attributes["gen_ai.response.finish_reasons"] == ("stop",)
    assert (
        stream_span.attributes["gen_ai.usage.output_tokens"] == 4
        and stream_span.attributes["flywheel.time_to_first_chunk"] > 0
    )
    assert quiet_span.attributes["gen_ai.usage.output_tokens"] == 4  # asked for on the app's behalf …
    assert all(chunk.usage is None for chunk in quiet_chunks)  # … and not shown to it
    assert sent.path == "/v1/messages" and sent.headers["x-api-key"] == "sk-ant-test"
    assert sent.json()["messages"][0]["role"] == "user"
    assert answer.object == "chat.completion"
    assert answer.choices[0].message.content == "echo: hello claude"
    assert answer.choices[0].finish_reason == "stop"
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (9, 4)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).strip() == "echo: hello claude"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4


@pytest.mark.litellm
async def test_anthropic_prompt_cache_reads_and_writes_are_counted_and_priced(upstream: FakeUpstream) -> None:
    """Anthropic bills cache writes at 1.25x input and reads at 0.1x; litellm counts both in
    the input tokens, as OpenAI counts its cached tokens. The span carries both, and the
    cost prices each at litellm's table's price for it."""
    usage = {
        "input_tokens": 5,
        "cache_creation_input_tokens": 1000,
        "cache_read_input_tokens": 2000,
        "output_tokens": 4,
    }
    message = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5",
        "content": [{"type": "text", "text": "hi"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": usage,
    }
    upstream.script("/v1/messages", Reply(body=[orjson.dumps(message)]))
    spans = SpanCollector()
    async with model_list_proxy(upstream, spans) as proxy, _client(proxy) as client:
        await client.chat.completions.create(model="claude", messages=MESSAGES, max_tokens=50)
        span = await spans.one("chat")
    a = span.attributes
    assert a["gen_ai.usage.input_tokens"] == 3005 and a["gen_ai.usage.output_tokens"] == 4
    assert a["gen_ai.usage.cache_read.input_tokens"] == 2000
    assert a["gen_ai.usage.cache_creation.input_tokens"] == 1000
    # claude-sonnet-4-5 in litellm's table: input 3e-6, cache write 3.75e-6, cache read 3e-7, output 1.5e-5
    assert a["flywheel.cost.usd"] == pytest.approx(5 * 3e-6 + 1000 * 3.75e-6 + 2000 * 3e-7 + 4 * 1.5e-5)


@pytest.mark.litellm
async def test_anthropic_errors_in_openai_shape(upstream: FakeUpstream) -> None:
    error = b'{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens too large"}}'
    upstream.script("/v1/messages", Reply(status=400, body=[error]))
    async with model_list_proxy(upstream) as proxy, _client(proxy) as client:
        with pytest.raises(openai.BadRequestError) as info:
            await client.chat.completions.create(model="claude", messages=MESSAGES, max_tokens=50)
        with pytest.raises(openai.BadRequestError, match="not available for the provider model"):
            await client.responses.create(model="claude", input="hi")
    assert "max_tokens too large" in info.value.message
    assert info.value.type == "invalid_request_error"


def test_litellm_stays_off_startup_and_openai_path() -> None:
    script = textwrap.dedent(
        """
        import asyncio, sys, aiohttp
        from tests.conftest import config_for
        from tests.fake_upstream import FakeUpstream
        from proxy.server import running
        import flywheel.cli

        async def main():
            async with FakeUpstream().running() as fake, running(config_for(fake.url)) as proxy:
                async with aiohttp.ClientSession() as s:
                    body = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
                    for stream in (False, True):
                        async with s.post(proxy.url + "/v1/chat/completions", json={**body, "stream": stream}) as r:
                            assert r.status == 200, r.status
                            await r.read()
            print("litellm" in sys.modules)

        asyncio.run(main())
        """
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


@pytest.mark.litellm
def test_first_provider_call_imports_litellm_without_blocking_openai_traffic() -> None:
    script = textwrap.dedent(
        """
        import asyncio, sys, aiohttp
        from proxy.config import ProxyConfig
        from proxy.server import running
        from proxy.upstreams import LiteLLMUpstream, OpenAIUpstream, Upstreams
        from tests.fake_upstream import FakeUpstream

        async def main():
            async with FakeUpstream().running() as fake:
                upstreams = Upstreams(
                    default=OpenAIUpstream(fake.url + "/v1"),
                    by_model={"claude": LiteLLMUpstream("anthropic/claude-x", {"api_key": "k", "api_base": fake.url})},
                )
                async with running(ProxyConfig(upstreams=upstreams, port=0)) as proxy, aiohttp.ClientSession() as s:
                    msgs = [{"role": "user", "content": "x"}]
                    claude = asyncio.create_task(
                        s.post(proxy.url + "/v1/chat/completions", json={"model": "claude", "messages": msgs, "max_tokens": 5})
                    )
                    served_meanwhile = 0
                    while not claude.done() and served_meanwhile < 500:
                        async with s.post(proxy.url + "/v1/chat/completions", json={"model": "gpt", "messages": msgs}) as r:
                            assert r.status == 200
                            served_meanwhile += 1
                    assert (await claude).status == 200
            print(served_meanwhile, "litellm" in sys.modules)

        asyncio.run(main())
        """
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    served, imported = result.stdout.split()
    assert imported == "True"
    assert int(served) >= 10  # OpenAI-path requests kept being answered while litellm loaded
