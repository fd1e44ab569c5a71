"""Schemathesis against the proxy with OpenAI's own OpenAPI description (../shared), for
the operations flywheel reads and rewrites: chat and text completions, embeddings, models.

Requests valid by OpenAI's schema must all be forwarded (flywheel never refuses what the
provider accepts) with their bytes untouched, except the usage option flywheel adds to
streams; invalid ones are forwarded for the provider to judge or refused with a 4xx in
the OpenAI shape; nothing is a 5xx. The provider is the loopback fake, answering every
call with a fixed valid answer, so every status seen is the proxy's own doing.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import schemathesis
import yaml
from hypothesis import HealthCheck, event, settings
from schemathesis.generation import GenerationMode

from proxy.litellm_bridge import CHAT_ARGUMENTS, EMBEDDING_ARGUMENTS
from tests.background import Background, proxy_in_thread
from tests.fake_upstream import Reply

SPEC = Path(__file__).resolve().parents[2] / "shared" / "openai-openapi" / "openapi.yaml"
OPERATIONS = ["createChatCompletion", "createCompletion", "createEmbedding", "listModels"]
ANSWER = b'{"id":"x","object":"list","data":[],"model":"m","choices":[],"usage":{"prompt_tokens":1}}'


@pytest.fixture(scope="module")
def openai_schema() -> Any:
    if not SPEC.exists():
        pytest.skip(f"OpenAI's OpenAPI description is not at {SPEC}")
    loaded = schemathesis.openapi.from_path(SPEC)
    loaded.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
    return loaded


@pytest.fixture(scope="module")
def background() -> Iterator[Background]:
    with proxy_in_thread() as running:
        yield running


schema = schemathesis.pytest.from_fixture("openai_schema").include(operation_id=OPERATIONS)


@schema.parametrize()
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
def test_proxy_honours_the_openai_contract(case: Any, background: Background) -> None:
    upstream = background.upstream
    path = "/v1" + case.path
    upstream.script(path, Reply(body=[ANSWER], content_length=True))
    before = len(upstream.seen)
    response = case.call(base_url=background.proxy_url + "/v1", timeout=10)
    forwarded = upstream.seen[before:]
    event(f"{case.meta.generation.mode.value} → {response.status_code}")
    assert response.status_code < 500, response.text
    if response.status_code != 200:
        upstream.unscript(path)
        assert case.meta.generation.mode == GenerationMode.NEGATIVE, f"a valid request was refused: {response.text}"
        content_type = response.headers.get("content-type", [""])[0]
        assert content_type.startswith("application/json"), (response.status_code, response.content[:500])
        error = orjson.loads(response.content)["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["message"]
        assert forwarded == []
        return
    assert response.content == ANSWER
    assert len(forwarded) == 1
    if case.method == "POST" and case.meta.generation.mode == GenerationMode.POSITIVE:
        sent = json.loads(forwarded[0].body)
        expected = json.loads(json.dumps(case.body))
        options = expected.get("stream_options")
        if expected.get("stream") is True and not (isinstance(options, dict) and "include_usage" in options):
            expected["stream_options"] = {**(options or {}), "include_usage": True}  # asked for on the app's behalf
        assert sent == expected


def _properties(schemas: dict[str, Any], name: str) -> set[str]:
    schema = schemas[name]
    found = set(schema.get("properties", {}))
    for part in schema.get("allOf", []):
        found |= (
            _properties(schemas, part["$ref"].rsplit("/", 1)[1]) if "$ref" in part else set(part.get("properties", {}))
        )
    return found


def test_the_litellm_bridge_takes_exactly_the_openai_arguments() -> None:
    """The bridge passes only the OpenAI API's own arguments to litellm (the rest could
    route the call); the lists are OpenAI's, so a newer description shows what to add."""
    if not SPEC.exists():
        pytest.skip(f"OpenAI's OpenAPI description is not at {SPEC}")
    schemas = yaml.safe_load(SPEC.read_text(encoding="utf-8"))["components"]["schemas"]
    assert _properties(schemas, "CreateChatCompletionRequest") == CHAT_ARGUMENTS
    assert _properties(schemas, "CreateEmbeddingRequest") == EMBEDDING_ARGUMENTS
