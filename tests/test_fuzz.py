"""Property-based fuzzing of the request path that parses and rewrites bodies (prompt
selection, variables, injection, usage options), through a real proxy over HTTP.

Whatever JSON (or non-JSON) the app sends with whatever flywheel headers: the proxy
answers a clear 4xx in the OpenAI shape and forwards nothing, or forwards one request
whose body differs from the app's only where flywheel documents a change — and the
bytes are untouched when nothing was changed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from flywheel.registry import open_registry
from flywheel.registry.version import content_from_mapping
from tests.background import Background, proxy_in_thread
from tests.fake_upstream import Reply

ANSWER = b'{"id":"x","object":"chat.completion","model":"m","choices":[],"usage":{"prompt_tokens":1}}'
# What flywheel may change in a body it forwards (SPEC §4 injection, usage option, model pin).
REWRITABLE = frozenset(("messages", "input", "instructions", "stream_options", "model"))
ADOPTED = "You are the adopted assistant."

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
roles = st.sampled_from(["system", "developer", "user", "assistant", "tool"]) | st.text(max_size=6)
contents = (
    st.text(max_size=30)
    | st.just(ADOPTED)
    | st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": st.text(max_size=20) | st.just(ADOPTED)}))
    | json_values
)
messages = st.lists(st.fixed_dictionaries({"role": roles, "content": contents}), max_size=4) | json_values
bodies = st.fixed_dictionaries(
    {},
    optional={
        "model": st.sampled_from(["m", "prompt:plain", "prompt:support", "prompt:nope"]) | json_values,
        "messages": messages,
        "input": st.text(max_size=20) | messages,
        "instructions": st.text(max_size=20) | json_values,
        "stream": st.just(True) | st.booleans() | json_values,
        "stream_options": json_values,
        "user": st.text(max_size=10) | json_values,
        "temperature": json_values,
        "extra": json_values,
    },
)
header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40).map(str.strip)
prompt_headers = st.fixed_dictionaries(
    {},
    optional={
        "X-Prompt-Name": st.sampled_from(["plain", "plain", "support", "adopted", "nope", ""]) | header_text,
        "X-Prompt-Key": header_text,
        "X-Prompt-Vars": header_text
        | st.fixed_dictionaries({"product": st.text(max_size=5), "language": st.text(max_size=5)}).map(json.dumps)
        | st.dictionaries(st.sampled_from(["product", "language", "x"]), st.text(max_size=5) | json_values).map(
            json.dumps  # ASCII-escaped, as a header value must be
        ),
    },
)


@pytest.fixture(scope="module")
def managed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Background]:
    registry = open_registry(Path(tmp_path_factory.mktemp("fuzz")) / "registry")
    registry.push("plain", content_from_mapping({"template": "You are terse."}))
    registry.push("support", content_from_mapping({"template": "Support for {{product}} in {{language}}."}))
    registry.push("adopted", content_from_mapping({"template": ADOPTED}))
    with proxy_in_thread(registry=registry, reload_interval=60) as background:
        yield background


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    body=bodies,
    headers=prompt_headers,
    path=st.sampled_from(["/v1/chat/completions", "/v1/responses", "/v1/completions"]),
)
def test_rewriting_is_exact_or_refused(
    managed: Background, body: dict[str, Any], headers: dict[str, str], path: str
) -> None:
    raw = json.dumps(body).encode()  # big integers and lone surrogates included
    _check(managed, path, raw, headers, body)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=64) | st.text(max_size=64).map(str.encode), headers=prompt_headers)
def test_arbitrary_bytes_are_refused_or_passed_whole(managed: Background, raw: bytes, headers: dict[str, str]) -> None:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        body = None
    _check(managed, "/v1/chat/completions", raw, headers, body if isinstance(body, dict) else None)


def _check(managed: Background, path: str, raw: bytes, headers: dict[str, str], body: dict[str, Any] | None) -> None:
    upstream = managed.upstream
    upstream.script(path, Reply(body=[ANSWER], content_length=True))
    before = len(upstream.seen)
    response = httpx.post(
        managed.proxy_url + path, content=raw, headers={"Content-Type": "application/json", **headers}, timeout=10
    )
    forwarded = upstream.seen[before:]
    event(f"status {response.status_code}")
    if response.status_code != 200:
        upstream.unscript(path)  # nothing consumed the scripted answer
        assert 400 <= response.status_code < 500, response.text
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["message"]
        assert forwarded == []
        assert body is None or response.status_code in (400, 404)
        return
    assert response.content == ANSWER
    assert len(forwarded) == 1
    sent = forwarded[0].body
    assert body is not None, "only JSON objects are forwarded on JSON endpoints"
    if sent == raw:
        event("forwarded untouched")
        return
    event("forwarded rewritten")
    changed = json.loads(sent)  # exact: orjson reads integers past 64 bits as floats
    assert isinstance(changed, dict)
    assert {k: v for k, v in changed.items() if k not in REWRITABLE} == {
        k: v for k, v in body.items() if k not in REWRITABLE
    }
    assert response.headers.get("X-Prompt-Name") or changed.get("stream_options", {}).get("include_usage") is True
