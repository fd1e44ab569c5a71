"""Managed prompts in the proxy (SPEC §4): selection, sticky arms, injection, precedence,
response headers and the bad-input paths, against a real registry directory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import orjson
import pytest
from multidict import CIMultiDict

from flywheel.registry import Arm, Registry, assign_arm, open_registry
from flywheel.registry.version import content_from_mapping
from proxy.app import PROMPTS
from proxy.server import RunningProxy
from tests.conftest import API_KEY, proxy_for
from tests.fake_upstream import FakeUpstream

CHAT = "/v1/chat/completions"
RESPONSES = "/v1/responses"
SUPPORT = "You are the support agent of {{product}}. Answer in {{language}}."
ADOPTED = "You are a helpful assistant for Acme. Be concise."
SCHEMA = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}


def push(registry: Registry, name: str, **fields: Any) -> str:
    return registry.push(name, content_from_mapping(fields))[0].hash


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    registry = open_registry(tmp_path / "registry")
    push(registry, "support", template=SUPPORT)
    push(registry, "adopted", template=ADOPTED)
    return registry


@pytest.fixture
async def managed(upstream: FakeUpstream, registry: Registry) -> AsyncIterator[RunningProxy]:
    async with proxy_for(upstream, registry=registry, reload_interval=60) as proxy:
        yield proxy


async def post(
    url: str, body: dict[str, Any], headers: dict[str, str] | None = None, path: str = CHAT
) -> tuple[int, CIMultiDict[str], Any]:
    async with aiohttp.ClientSession() as session:
        async with session.post(url + path, json=body, headers=headers or {}) as r:
            return r.status, CIMultiDict(r.headers), await r.json(content_type=None)


async def reload(proxy: RunningProxy) -> None:
    """Apply registry changes now instead of waiting for the next poll."""
    assert await proxy.app[PROMPTS].refresh()


def chat(system: str | None = None, **extra: Any) -> dict[str, Any]:
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": "hi"}]
    return {"model": "gpt-app", "messages": messages, **extra}


VARS = {"X-Prompt-Vars": '{"product": "Acme", "language": "French"}'}


async def test_header_selects_renders_and_replaces_the_app_system_message(
    upstream: FakeUpstream, managed: RunningProxy, registry: Registry
) -> None:
    status, headers, _ = await post(managed.url, chat("old prompt"), {"X-Prompt-Name": "support", **VARS})
    assert status == 200
    sent = upstream.seen[-1]
    assert sent.json()["messages"] == [
        {"role": "system", "content": "You are the support agent of Acme. Answer in French."},
        {"role": "user", "content": "hi"},
    ]
    assert sent.json()["model"] == "gpt-app"  # the version sets no model: the request's passes through
    assert not [h for h in sent.headers if h.lower().startswith("x-prompt")]
    assert headers["X-Prompt-Name"] == "support" and headers["X-Prompt-Arm"] == "stable"
    assert headers["X-Prompt-Version"] == registry.rollout("support").stable
    assert headers["X-Request-Id"]


async def test_template_is_inserted_first_when_the_app_has_no_system_message(
    upstream: FakeUpstream, managed: RunningProxy
) -> None:
    await post(managed.url, chat(), {"X-Prompt-Name": "support", **VARS})
    assert [m["role"] for m in upstream.seen[-1].json()["messages"]] == ["system", "user"]


async def test_model_alias_selects_and_the_version_model_is_sent(
    upstream: FakeUpstream, managed: RunningProxy, registry: Registry
) -> None:
    push(registry, "summarize", template="Summarize.", model="gpt-4o-mini", params={"temperature": 0.1})
    await reload(managed)
    status, headers, _ = await post(managed.url, {**chat(), "model": "prompt:summarize"})
    assert status == 200 and headers["X-Prompt-Name"] == "summarize"
    sent = upstream.seen[-1].json()
    assert sent["model"] == "gpt-4o-mini" and sent["temperature"] == 0.1


async def test_alias_of_a_prompt_without_model_is_a_clear_400(managed: RunningProxy) -> None:
    status, _, body = await post(managed.url, {**chat(), "model": "prompt:support"}, VARS)
    assert status == 400 and body["error"]["param"] == "model" and "sets no model" in body["error"]["message"]


async def test_zero_code_adoption_matches_the_app_system_prompt(
    upstream: FakeUpstream, managed: RunningProxy, registry: Registry
) -> None:
    status, headers, _ = await post(managed.url, chat(ADOPTED))
    assert status == 200 and headers["X-Prompt-Name"] == "adopted" and headers["X-Prompt-Arm"] == "stable"
    assert upstream.seen[-1].json()["messages"][0]["content"] == ADOPTED

    status, headers, _ = await post(managed.url, chat(ADOPTED + " (edited by the app)"))
    assert status == 200 and "X-Prompt-Name" not in headers  # no match: plain pass-through
    assert upstream.seen[-1].json()["messages"][0]["content"] == ADOPTED + " (edited by the app)"


async def test_zero_code_match_ignores_surrounding_whitespace(
    upstream: FakeUpstream, managed: RunningProxy, registry: Registry, tmp_path: Path
) -> None:
    from flywheel.registry import parse_prompt_file

    (tmp_path / "system.txt").write_text("Answer with one word.\n")  # editors end files with a newline
    registry.push("oneword", parse_prompt_file(tmp_path / "system.txt"))
    await reload(managed)
    _, headers, _ = await post(managed.url, chat("Answer with one word."))
    assert headers["X-Prompt-Name"] == "oneword"
    assert (await post(managed.url, chat(ADOPTED + "\n")))[1]["X-Prompt-Name"] == "adopted"


async def test_zero_code_content_parts_and_responses_instructions_match(
    upstream: FakeUpstream, managed: RunningProxy
) -> None:
    parts = {"role": "system", "content": [{"type": "text", "text": ADOPTED}]}
    body = {"model": "gpt-app", "messages": [parts, {"role": "user", "content": "hi"}]}
    assert (await post(managed.url, body))[1]["X-Prompt-Name"] == "adopted"
    response = {"model": "gpt-app", "input": "hi", "instructions": ADOPTED}
    assert (await post(managed.url, response, path=RESPONSES))[1]["X-Prompt-Name"] == "adopted"


async def test_canary_version_is_injected_for_canary_keys(
    upstream: FakeUpstream, managed: RunningProxy, registry: Registry
) -> None:
    stable = registry.rollout("adopted").stable
    better = push(registry, "adopted", template="You help Acme customers. Be concise and exact.", params={"seed": 7})
    registry.set_rollout("adopted", stable=stable, canary=better, weight=100, reason="test")
    await reload(managed)
    status, headers, _ = await post(managed.url, chat(ADOPTED))
    assert headers["X-Prompt-Arm"] == "canary"
    assert headers["X-Prompt-Version"] == better
    sent = upstream.seen[-1].json()
    assert sent["messages"][0]["content"] == "You help Acme customers. Be concise and exact." and sent["seed"] == 7


async def test_what_the_version_sets_wins_and_the_rest_passes_through(upstream: FakeUpstream, tmp_path: Path) -> None:
    registry = open_registry(tmp_path / "r")
    push(
        registry,
        "extract",
        template="Extract the answer.",
        model="gpt-tested",
        params={"temperature": 0.0, "max_tokens": 64},
        response_schema=SCHEMA,
    )
    body = chat(
        "app prompt",
        temperature=1.5,
        top_p=0.9,
        tools=[{"type": "function", "function": {"name": "f"}}],
        response_format={"type": "json_object"},
        x_vendor_field={"kept": True},
    )
    async with proxy_for(upstream, registry=registry) as proxy:
        status, headers, answer = await post(proxy.url, body, {"X-Prompt-Name": "extract"})
        assert status == 200 and answer["choices"][0]["finish_reason"] == "tool_calls"
        sent = upstream.seen[-1].json()
        assert (sent["model"], sent["temperature"], sent["max_tokens"]) == ("gpt-tested", 0.0, 64)
        assert sent["response_format"] == {"type": "json_schema", "json_schema": {"name": "extract", "schema": SCHEMA}}
        assert sent["top_p"] == 0.9 and sent["tools"] == body["tools"] and sent["x_vendor_field"] == {"kept": True}

        response = {"model": "gpt-app", "input": "hi", "instructions": "app", "text": {"verbosity": "low"}}
        await post(proxy.url, response, {"X-Prompt-Name": "extract"}, path=RESPONSES)
        sent = upstream.seen[-1].json()
        assert sent["instructions"] == "Extract the answer." and sent["model"] == "gpt-tested"
        assert sent["text"] == {
            "verbosity": "low",
            "format": {"type": "json_schema", "name": "extract", "schema": SCHEMA},
        }
        assert sent["input"] == "hi"


async def test_messages_prompt_injects_its_messages(upstream: FakeUpstream, tmp_path: Path) -> None:
    registry = open_registry(tmp_path / "r")
    few_shot = [
        {"role": "system", "content": "Classify {{thing}}."},
        {"role": "user", "content": "apple"},
        {"role": "assistant", "content": "fruit"},
    ]
    push(registry, "classify", messages=few_shot)
    async with proxy_for(upstream, registry=registry) as proxy:
        headers = {"X-Prompt-Name": "classify", "X-Prompt-Vars": '{"thing": "food"}'}
        await post(proxy.url, chat("app"), headers)
        assert upstream.seen[-1].json()["messages"] == [
            {"role": "system", "content": "Classify food."},
            {"role": "user", "content": "apple"},
            {"role": "assistant", "content": "fruit"},
            {"role": "user", "content": "hi"},
        ]
        await post(proxy.url, {"model": "m", "input": "carrot"}, headers, path=RESPONSES)
        sent = upstream.seen[-1].json()
        assert sent["instructions"] == "Classify food."
        assert sent["input"] == [
            {"role": "user", "content": "apple"},
            {"role": "assistant", "content": "fruit"},
            {"role": "user", "content": "carrot"},
        ]


async def test_sdk_stream_carries_prompt_headers(managed: RunningProxy, registry: Registry) -> None:
    async with openai.AsyncOpenAI(base_url=managed.url + "/v1", api_key=API_KEY, max_retries=0) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="gpt-app",
            messages=[{"role": "system", "content": ADOPTED}, {"role": "user", "content": "tell me"}],
            stream=True,
            extra_headers={"X-Prompt-Key": "user-42"},
        )
        assert raw.headers["X-Prompt-Name"] == "adopted"
        assert raw.headers["X-Prompt-Version"] == registry.rollout("adopted").stable
        chunks = [chunk async for chunk in raw.parse()]
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


async def test_key_precedence_header_then_safety_identifier_then_user(
    upstream: FakeUpstream, managed: RunningProxy, registry: Registry
) -> None:
    stable = registry.rollout("adopted").stable
    canary = push(registry, "adopted", template="Another adopted prompt.")
    rollout = registry.set_rollout("adopted", stable=stable, canary=canary, weight=50)
    await reload(managed)

    def arm(key: str) -> str:
        return assign_arm(rollout, key).value

    stable_key, canary_key = _key_on(rollout, Arm.STABLE), _key_on(rollout, Arm.CANARY)
    cases = [
        ({"X-Prompt-Key": canary_key}, {"safety_identifier": stable_key, "user": stable_key}, "canary"),
        ({"X-Prompt-Key": stable_key}, {"safety_identifier": canary_key}, "stable"),
        ({}, {"safety_identifier": canary_key, "user": stable_key}, "canary"),
        ({}, {"safety_identifier": stable_key, "user": canary_key}, "stable"),
        ({}, {"user": canary_key}, "canary"),
    ]
    for headers, fields, expected in cases:
        _, got, _ = await post(managed.url, {**chat(ADOPTED), **fields}, headers)
        assert got["X-Prompt-Arm"] == expected == arm(headers.get("X-Prompt-Key") or next(iter(fields.values())))
    # With no key at all each request is its own key: both arms show up.
    arms = {(await post(managed.url, chat(ADOPTED)))[1]["X-Prompt-Arm"] for _ in range(40)}
    assert arms == {"stable", "canary"}


def _key_on(rollout: Any, arm: Arm) -> str:
    return next(f"k{i}" for i in range(10_000) if assign_arm(rollout, f"k{i}") is arm)


# --- bad input -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "headers"),
    [(chat(), {"X-Prompt-Name": "nobody"}), ({**chat(), "model": "prompt:nobody"}, {})],
    ids=["header", "alias"],
)
async def test_unknown_prompt_is_404_in_openai_shape(
    upstream: FakeUpstream, managed: RunningProxy, body: dict[str, Any], headers: dict[str, str]
) -> None:
    before = len(upstream.seen)
    status, got, answer = await post(managed.url, body, headers)
    assert status == 404 and got["X-Request-Id"]
    assert answer["error"]["code"] == "prompt_not_found" and "nobody" in answer["error"]["message"]
    assert set(answer["error"]) == {"message", "type", "param", "code"}
    assert len(upstream.seen) == before  # nothing was sent upstream


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("{not json", "X-Prompt-Vars is not valid JSON"),
        ('["Acme"]', "must be a JSON object"),
        ('{"product": "Acme"}', "needs variables language"),
        (None, "needs variables language, product"),
    ],
)
async def test_bad_or_missing_variables_are_400(
    upstream: FakeUpstream, managed: RunningProxy, value: str | None, message: str
) -> None:
    headers = {"X-Prompt-Name": "support"} | ({"X-Prompt-Vars": value} if value is not None else {})
    before = len(upstream.seen)
    status, _, answer = await post(managed.url, chat(), headers)
    assert status == 400 and message in answer["error"]["message"]
    assert answer["error"]["param"] == "X-Prompt-Vars" and answer["error"]["type"] == "invalid_request_error"
    assert len(upstream.seen) == before


async def test_non_string_variables_are_rendered_as_json(upstream: FakeUpstream, managed: RunningProxy) -> None:
    vars_ = orjson.dumps({"product": {"name": "Acme"}, "language": 3}).decode()
    await post(managed.url, chat(), {"X-Prompt-Name": "support", "X-Prompt-Vars": vars_})
    expected = 'You are the support agent of {"name":"Acme"}. Answer in 3.'
    assert upstream.seen[-1].json()["messages"][0]["content"] == expected


async def test_bad_messages_with_a_prompt_is_400(managed: RunningProxy) -> None:
    status, _, answer = await post(managed.url, {"model": "m", "messages": "hi"}, {"X-Prompt-Name": "adopted"})
    assert status == 400 and answer["error"]["param"] == "messages"
