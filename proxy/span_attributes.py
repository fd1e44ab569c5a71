"""A call span's attributes as the GenAI conventions name them, read from the request,
the upstream it went to and what came back (:class:`~proxy.observation.Outcome`)."""

from __future__ import annotations

from typing import Any

from yarl import URL

from proxy import semconv as sc
from proxy.masking import mask_credentials
from proxy.observation import Outcome
from proxy.upstreams import LiteLLMUpstream, OpenAIUpstream, Upstream

_REQUEST_PARAMS = (  # numbers, as the request gives them
    ("temperature", sc.REQUEST_TEMPERATURE, float),
    ("top_p", sc.REQUEST_TOP_P, float),
    ("top_k", sc.REQUEST_TOP_K, int),  # an int since the conventions' v0.1.0 (a double before)
    ("frequency_penalty", sc.REQUEST_FREQUENCY_PENALTY, float),
    ("presence_penalty", sc.REQUEST_PRESENCE_PENALTY, float),
    ("max_tokens", sc.REQUEST_MAX_TOKENS, int),
    ("max_completion_tokens", sc.REQUEST_MAX_TOKENS, int),
    ("max_output_tokens", sc.REQUEST_MAX_TOKENS, int),
    ("seed", sc.REQUEST_SEED, int),
)
_OPTIONS = frozenset(("n", "stop", "response_format", "text", "encoding_format", "conversation", "service_tier"))
_PARAM_KEYS = frozenset(key for key, _, _ in _REQUEST_PARAMS) | _OPTIONS
_OUTPUT_TYPES = {"json_object": "json", "json_schema": "json", "text": "text"}
_OPENAI_PROVIDERS = frozenset(("openai", "azure.ai.openai"))  # the spans that carry openai.* attributes
_LITELLM_PROVIDERS = {
    "bedrock": "aws.bedrock",
    "gemini": "gcp.gemini",
    "vertex_ai": "gcp.vertex_ai",
    "azure": "azure.ai.openai",
}


def add_request_attributes(attributes: dict[str, Any], model: str | None, body: dict[str, Any]) -> None:
    """The request's model and settings (``attributes`` already holds the provider's)."""
    if model:
        attributes[sc.REQUEST_MODEL] = model
    present = _PARAM_KEYS.intersection(body)  # iterates the body's few keys
    if not present:
        return
    for key, name, kind in _REQUEST_PARAMS:  # in order: the last max_*tokens given wins
        if key in present and isinstance(value := body[key], int | float) and not isinstance(value, bool):
            if kind is int and value != int(value):
                continue  # 10.5 tokens is no count: left out rather than rounded
            attributes[name] = kind(value)
    if not _OPTIONS.isdisjoint(present):
        _add_request_options(attributes, body, present)


def _add_request_options(attributes: dict[str, Any], body: dict[str, Any], present: frozenset[str]) -> None:
    """Choice count, stop sequences, output type, embedding formats, conversation and
    service tier, in the conventions' types."""
    if "n" in present and isinstance(n := body["n"], int) and not isinstance(n, bool) and n != 1:
        attributes[sc.REQUEST_CHOICE_COUNT] = n  # only when not 1, as the conventions ask
    if "stop" in present:
        stop = body["stop"]
        stops = [stop] if isinstance(stop, str) else stop if isinstance(stop, list) else []
        if stops and all(isinstance(s, str) for s in stops):
            # Recorded whatever the content mode, so a key pasted there is masked here.
            attributes[sc.REQUEST_STOP_SEQUENCES] = tuple(mask_credentials(s) for s in stops)
    # Chat Completions: response_format.type; Responses API: text.format.type.
    fmt = body.get("response_format") if "response_format" in present else None
    if fmt is None and "text" in present and isinstance(text := body["text"], dict):
        fmt = text.get("format")
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if isinstance(kind, str) and kind in _OUTPUT_TYPES:
        attributes[sc.OUTPUT_TYPE] = _OUTPUT_TYPES[kind]
    if "encoding_format" in present and isinstance(encoding := body["encoding_format"], str):
        attributes[sc.REQUEST_ENCODING_FORMATS] = (encoding,)
    if "conversation" in present:  # Responses API: an id, or {"id": …}
        conversation = body["conversation"]
        found = conversation.get("id") if isinstance(conversation, dict) else conversation
        if isinstance(found, str) and found:
            attributes[sc.CONVERSATION_ID] = found
    tier = body.get("service_tier") if "service_tier" in present else None
    if isinstance(tier, str) and tier != "auto" and attributes.get(sc.PROVIDER_NAME) in _OPENAI_PROVIDERS:
        attributes[sc.OPENAI_REQUEST_SERVICE_TIER] = tier  # only when not "auto", as the conventions ask


def add_response_attributes(attributes: dict[str, Any], outcome: Outcome) -> None:
    if outcome.response_model:
        attributes[sc.RESPONSE_MODEL] = outcome.response_model
    if outcome.response_id:
        attributes[sc.RESPONSE_ID] = outcome.response_id
    reasons = outcome.finish_reasons
    if len(reasons) == 1:
        attributes[sc.RESPONSE_FINISH_REASONS] = tuple(reasons.values())
    elif reasons:
        attributes[sc.RESPONSE_FINISH_REASONS] = tuple(reasons[i] for i in sorted(reasons))
    for key, field in _COUNTS:
        if (count := getattr(outcome, field)) is not None:
            attributes[key] = count
    if attributes.get(sc.PROVIDER_NAME) in _OPENAI_PROVIDERS:
        if outcome.service_tier is not None:
            attributes[sc.OPENAI_RESPONSE_SERVICE_TIER] = outcome.service_tier
        if outcome.system_fingerprint is not None:
            attributes[sc.OPENAI_RESPONSE_SYSTEM_FINGERPRINT] = outcome.system_fingerprint


_COUNTS = (
    (sc.USAGE_INPUT_TOKENS, "input_tokens"),
    (sc.USAGE_OUTPUT_TOKENS, "output_tokens"),
    (sc.USAGE_CACHE_READ_INPUT_TOKENS, "cached_input_tokens"),
    (sc.USAGE_CACHE_CREATION_INPUT_TOKENS, "cache_creation_input_tokens"),
    (sc.USAGE_REASONING_OUTPUT_TOKENS, "reasoning_output_tokens"),
    (sc.EMBEDDINGS_DIMENSION_COUNT, "embedding_size"),
)


def upstream_attributes(upstream: Upstream) -> dict[str, Any]:
    """Provider and server: worked out once per configured upstream (the caller keeps them)."""
    if isinstance(upstream, LiteLLMUpstream):
        provider = upstream.model.partition("/")[0]
        return {sc.PROVIDER_NAME: _LITELLM_PROVIDERS.get(provider, provider)}
    assert isinstance(upstream, OpenAIUpstream)
    url = URL(upstream.base_url)
    host = url.host or ""
    provider = "azure.ai.openai" if host.endswith(".openai.azure.com") else "openai"
    return {sc.PROVIDER_NAME: provider, sc.SERVER_ADDRESS: host, sc.SERVER_PORT: url.port or 443}
