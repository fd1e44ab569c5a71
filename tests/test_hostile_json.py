"""Hostile and odd JSON bodies: a clear OpenAI-shape 400, or an exact pass-through — never a
crash, a hang or a request that goes somewhere else. The proxy keeps serving afterwards."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator

import aiohttp
import orjson
import pytest
from multidict import CIMultiDict

from proxy.config import ProxyConfig
from proxy.server import RunningProxy, running
from proxy.upstreams import LiteLLMUpstream, OpenAIUpstream, Upstreams
from proxy.wire import Call
from tests.conftest import proxy_for
from tests.fake_upstream import FakeUpstream
from tests.processes import serving

CHAT = "/v1/chat/completions"
MESSAGES = '[{"role": "user", "content": "hi"}]'


async def _post(url: str, data: bytes) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as session:
        async with session.post(url + CHAT, data=data, headers={"Content-Type": "application/json"}) as r:
            return r.status, await r.read()


async def _still_serving(proxy: RunningProxy) -> None:
    status, _ = await _post(proxy.url, b'{"model": "m", "messages": ' + MESSAGES.encode() + b"}")
    assert status == 200


@pytest.mark.parametrize(
    "body",
    [
        b'{"model": "m", "messages": [{"role": "user", "content": "\\ud800"}]}',
        b'\xef\xbb\xbf{"model": "m"}',
        b'{"model": "m", "seed": ' + b"9" * 400 + b"}",
        b'{"model": "m", "content": "\xc3\x28"}',
    ],
    ids=["lone-surrogate", "bom", "huge-integer", "invalid-utf8"],
)
async def test_refused_with_a_clear_400(body: bytes, upstream: FakeUpstream, proxy: RunningProxy) -> None:
    status, answer = await _post(proxy.url, body)
    assert status == 400
    error = orjson.loads(answer)["error"]
    assert error["code"] == "invalid_json" and error["message"] and set(error) == {"message", "type", "param", "code"}
    assert upstream.seen == []
    await _still_serving(proxy)


@pytest.mark.parametrize(
    "body",
    [
        b'{"model": "m", "x": ' + b"[" * 1000 + b"]" * 1000 + b', "messages": ' + MESSAGES.encode() + b"}",
        b'{"model": "a", "model": "m", "messages": ' + MESSAGES.encode() + b"}",
        b'{"model": "m", "stream": "true", "messages": ' + MESSAGES.encode() + b"}",
        b'{"model": "m", "messages": ' + MESSAGES.encode() + b', "note": "' + b"x" * (10 * 1024 * 1024) + b'"}',
    ],
    ids=["nesting-1000", "duplicate-keys", "stream-as-string", "10MB-string"],
)
async def test_odd_but_valid_bodies_pass_through_byte_for_byte(
    body: bytes, upstream: FakeUpstream, proxy: RunningProxy
) -> None:
    status, _ = await _post(proxy.url, body)
    assert status == 200
    assert upstream.seen[-1].body == body
    await _still_serving(proxy)


@pytest.mark.parametrize("rewritten", [False, True], ids=["usage-asked-for", "model-renamed"])
@pytest.mark.parametrize(
    "number", ["-9223372036854775809", "18446744073709551616", "123456789012345678901234567890", "1e20"]
)
async def test_numbers_orjson_cannot_hold_survive_a_rewrite(
    number: str, rewritten: bool, upstream: FakeUpstream
) -> None:
    # A stream gets stream_options added (into the app's bytes); an upstream that renames the
    # model has the body written again, and orjson reads integers beyond 64 bits as floats,
    # which must not reach the provider changed. 1e20 is a real float that takes the same
    # exact path and must stay a float.
    body = f'{{"model": "m", "stream": true, "seed": {number}, "x": [{{"y": {number}}}], "messages": {MESSAGES}}}'
    renamed = Upstreams(default=OpenAIUpstream(upstream.url + "/v1", model="renamed")) if rewritten else None
    async with proxy_for(upstream, **({"upstreams": renamed} if renamed else {})) as proxy:
        status, _ = await _post(proxy.url, body.encode())
        assert status == 200
        sent = json.loads(upstream.seen[-1].body)
        exact = json.dumps(json.loads(number))  # as written, type included (2**64 == float(2**64))
        assert json.dumps(sent["seed"]) == exact and json.dumps(sent["x"]) == f'[{{"y": {exact}}}]'
        assert sent["stream_options"] == {"include_usage": True} and sent["messages"] == json.loads(MESSAGES)
        assert sent["model"] == ("renamed" if rewritten else "m")
        await _still_serving(proxy)


async def test_the_usage_request_goes_into_the_apps_own_bytes(upstream: FakeUpstream, proxy: RunningProxy) -> None:
    """No JSON round-trip for a stream flywheel only asks usage for: the app's spacing,
    key order, escapes and numbers reach the provider as written."""
    body = (
        b' \n{ "model" : "m",\t"stream":true, "temperature": 0.50, "e": "caf\\u00e9", "messages": '
        + MESSAGES.encode()
        + b" }"
    )
    status, _ = await _post(proxy.url, body)
    assert status == 200
    brace = body.index(b"{") + 1
    assert upstream.seen[-1].body == body[:brace] + b'"stream_options":{"include_usage":true},' + body[brace:]
    await _still_serving(proxy)


def test_an_added_field_is_kept_when_the_body_is_written_again() -> None:
    call = Call("r", "POST", "chat/completions", "/chat/completions", CIMultiDict(), b"{}", {}, None, False)
    call.set_field("a", 1)
    assert call.payload() == b'{"a":1}'  # the only member: no comma
    raw = b'{"model": "m", "stream": true}'
    call = Call("r", "POST", "chat/completions", "/chat/completions", CIMultiDict(), raw, orjson.loads(raw), "m", True)
    call.set_field("stream_options", {"include_usage": True})
    assert call.payload() == b'{"stream_options":{"include_usage":true},"model": "m", "stream": true}'
    call.set_field("model", "other")  # now written again from the parsed body, the added field in it
    assert orjson.loads(call.payload()) == {"model": "other", "stream": True, "stream_options": {"include_usage": True}}


async def test_nesting_100000_deep_is_refused_or_passed_whole(upstream: FakeUpstream, proxy: RunningProxy) -> None:
    # orjson releases differ: some parse any depth, some stop at 1,024. Either answer is fine; a crash is not.
    body = b'{"model": "m", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b', "messages": ' + MESSAGES.encode() + b"}"
    status, answer = await _post(proxy.url, body)
    if status == 400:
        assert orjson.loads(answer)["error"]["code"] == "invalid_json" and upstream.seen == []
    else:
        assert status == 200 and upstream.seen[-1].body == body
    await _still_serving(proxy)


async def test_too_deep_to_rewrite_is_a_clear_400(upstream: FakeUpstream) -> None:
    # orjson writes at most 255 levels: a body that must be written again (the upstream
    # renames the model) is refused clearly; asking for usage alone goes into its bytes.
    body = (
        b'{"model": "m", "stream": true, "x": '
        + b"[" * 1000
        + b"]" * 1000
        + b', "messages": '
        + MESSAGES.encode()
        + b"}"
    )
    async with proxy_for(upstream) as proxy:
        status, _ = await _post(proxy.url, body)
        assert status == 200 and upstream.seen[-1].body == b'{"stream_options":{"include_usage":true},' + body[1:]
    renamed = Upstreams(default=OpenAIUpstream(upstream.url + "/v1", model="renamed"))
    async with proxy_for(upstream, upstreams=renamed) as proxy:
        status, answer = await _post(proxy.url, body)
        assert status == 400 and "cannot be rewritten" in orjson.loads(answer)["error"]["message"]
        assert len(upstream.seen) == 1
        await _still_serving(proxy)


@contextlib.asynccontextmanager
async def elsewhere() -> AsyncIterator[tuple[str, list[str]]]:
    """A server the request asks to be sent to; it must never be contacted."""
    hits: list[str] = []

    async def record(request: aiohttp.web.Request) -> aiohttp.web.Response:
        hits.append(request.path)
        return aiohttp.web.json_response({})

    app = aiohttp.web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    async with serving(app) as url:
        yield url, hits


async def test_api_base_in_the_body_is_never_followed(upstream: FakeUpstream, proxy: RunningProxy) -> None:
    async with elsewhere() as (url, hits):
        body = {"model": "m", "messages": orjson.loads(MESSAGES), "api_base": url, "base_url": url + "/v1"}
        status, _ = await _post(proxy.url, orjson.dumps(body))
    assert status == 200 and hits == [] and upstream.seen[-1].path == CHAT


def _litellm_proxy(upstream: FakeUpstream) -> contextlib.AbstractAsyncContextManager[RunningProxy]:
    upstreams = Upstreams(
        by_model={"claude": LiteLLMUpstream("anthropic/claude-x", {"api_key": "sk-ant-test", "api_base": upstream.url})}
    )
    return running(ProxyConfig(upstreams=upstreams, port=0))


@pytest.mark.litellm
@pytest.mark.parametrize(
    "extra",
    [
        {"api_base": "{url}", "base_url": "{url}", "api_key": "sk-attacker", "custom_llm_provider": "openai"},
        {"use_litellm_proxy": True, "litellm_proxy_api_base": "{url}"},
        {"success_callback": ["langfuse"], "langfuse_host": "{url}", "langfuse_public_key": "pk-attacker-0000"},
        {"_skip_mcp_handler": False, "ssl_verify": False},
    ],
)
async def test_litellm_arguments_in_the_body_are_refused_as_openai_refuses_them(
    upstream: FakeUpstream, extra: dict[str, object]
) -> None:
    """litellm takes routing, credentials and callbacks (with their hosts) as keyword
    arguments: from a body they could send the call, its content or a key anywhere. Only the
    OpenAI API's arguments pass; the rest is OpenAI's 400, and nothing leaves the proxy."""
    async with elsewhere() as (url, hits), _litellm_proxy(upstream) as proxy:
        body = {"model": "claude", "max_tokens": 20, "messages": orjson.loads(MESSAGES)}
        body |= {k: v.replace("{url}", url) if isinstance(v, str) else v for k, v in extra.items()}
        status, answer = await _post(proxy.url, orjson.dumps(body))
    error = orjson.loads(answer)["error"]
    assert status == 400 and error["type"] == "invalid_request_error"
    assert error["message"] == "Unrecognized request argument supplied: " + ", ".join(sorted(extra))
    assert error["param"] == sorted(extra)[0]
    assert hits == [] and upstream.seen == []


@pytest.mark.litellm
async def test_many_or_long_unknown_arguments_make_a_short_error(upstream: FakeUpstream) -> None:
    async with _litellm_proxy(upstream) as proxy:
        body = {"model": "claude", "messages": orjson.loads(MESSAGES)} | {
            f"x{i:04d}" + "y" * 500: 1 for i in range(2000)
        }
        status, answer = await _post(proxy.url, orjson.dumps(body))
    error = orjson.loads(answer)["error"]
    assert status == 400 and len(error["message"]) < 500 and error["message"].endswith("and 1995 more")
    assert error["param"] == "x0000" + "y" * 59 and upstream.seen == []


@pytest.mark.litellm
async def test_tools_go_to_the_provider_through_litellm(upstream: FakeUpstream) -> None:
    """litellm 1.106 sends a call with tools to its MCP gateway first, which needs the `mcp`
    package (not shipped: every tool call failed) and connects to servers a tool names; the
    bridge skips it, so tools reach the provider as its tools."""
    weather = {"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}
    async with _litellm_proxy(upstream) as proxy:
        body = {"model": "claude", "max_tokens": 20, "messages": orjson.loads(MESSAGES), "tools": [weather]}
        status, answer = await _post(proxy.url, orjson.dumps(body))
    assert status == 200, answer
    assert [t["name"] for t in upstream.seen[-1].json()["tools"]] == ["weather"]  # in Anthropic's shape
