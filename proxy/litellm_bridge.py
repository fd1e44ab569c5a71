"""Non-OpenAI providers (Anthropic, Bedrock, Gemini…) served in the OpenAI shape through litellm.

``import litellm`` costs seconds and ~180 MB, so it happens only on the first
call to such a provider, in a worker thread: never at start-up and never on the
OpenAI-compatible path.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import time
from collections.abc import AsyncIterator
from types import ModuleType
from typing import Any

import orjson
from aiohttp import web

from proxy.errors import InvalidRequest, ProxyError, UpstreamTimeout, UpstreamUnreachable, render
from proxy.observation import Outcome
from proxy.upstreams import LiteLLMUpstream
from proxy.wire import Call

log = logging.getLogger("flywheel.proxy")

_DONE = b"data: [DONE]\n\n"
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


class ProviderError(ProxyError):
    """An error the provider answered, translated by litellm into a status and message."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status
        self.type = _ERROR_TYPES.get(status, "api_error")


# litellm takes its routing, credentials, callbacks (and their hosts) and MCP servers as
# keyword arguments beside the request's: a body passed through as it came could send the
# call, its content or a key anywhere. Only the OpenAI API's own arguments are taken from
# the app (openapi.yaml's CreateChatCompletionRequest and CreateEmbeddingRequest, checked
# by a test), and two that litellm maps for other providers; anything else is refused as
# OpenAI refuses it.
CHAT_ARGUMENTS = frozenset(
    (
        *("audio", "frequency_penalty", "function_call", "functions", "logit_bias", "logprobs"),
        *("max_completion_tokens", "max_tokens", "messages", "metadata", "modalities", "model"),
        *("moderation", "n", "parallel_tool_calls", "prediction", "presence_penalty", "prompt_cache_key"),
        *("prompt_cache_options", "prompt_cache_retention", "reasoning_effort", "response_format"),
        *("safety_identifier", "seed", "service_tier", "stop", "store", "stream", "stream_options"),
        *("temperature", "tool_choice", "tools", "top_logprobs", "top_p", "user", "verbosity"),
        "web_search_options",
    )
)
EMBEDDING_ARGUMENTS = frozenset(("dimensions", "encoding_format", "input", "model", "user"))
PROVIDER_ARGUMENTS = frozenset(("top_k", "thinking"))  # Anthropic's, Gemini's: litellm maps them


class LiteLLMBridge:
    """Chat completions and embeddings for providers that do not speak the OpenAI API."""

    def __init__(self) -> None:
        self._module: ModuleType | None = None
        self._loading: asyncio.Lock | None = None

    async def serve(self, request: web.Request, call: Call, upstream: LiteLLMUpstream) -> web.StreamResponse:
        if call.body is None or call.endpoint not in ("chat/completions", "embeddings"):
            raise InvalidRequest(
                f"/v1/{call.endpoint} is not available for the provider model `{call.model}`; "
                "use /v1/chat/completions or /v1/embeddings."
            )
        known = EMBEDDING_ARGUMENTS if call.endpoint == "embeddings" else CHAT_ARGUMENTS
        unknown = sorted(k for k in call.body if k not in known and k not in PROVIDER_ARGUMENTS)
        if unknown:
            named = ", ".join(name[:64] for name in unknown[:5]) + (
                f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
            )
            raise InvalidRequest(f"Unrecognized request argument supplied: {named}", param=unknown[0][:64])
        litellm = await self._litellm()
        kwargs: dict[str, Any] = {**call.body, **upstream.params, "model": upstream.model_for(call.model)}
        try:
            if call.endpoint == "embeddings":
                result = await litellm.aembedding(**kwargs)
            else:
                # Tools go to the provider as tools: litellm's MCP gateway (it connects to
                # a server a tool names, and needs the `mcp` package) is never used.
                result = await litellm.acompletion(**kwargs, _skip_mcp_handler=True)
        except Exception as exc:  # litellm's exception tree, translated once here
            error = _translate(exc)
            if call.outcome is not None:
                call.outcome.status = error.status
                call.outcome.error_type = error.code or str(error.status)
            return render(error, _error_headers(call.request_id, exc))
        headers = call.response_headers
        outcome = call.outcome
        if outcome is not None:
            outcome.status = 200
        if call.stream:
            return await _stream(request, result, headers, outcome)
        dumped = result.model_dump()
        response = web.Response(body=orjson.dumps(dumped), content_type="application/json", headers=headers)
        if outcome is not None:
            await response.prepare(request)  # sent now: telemetry reads the answer after the app has it
            await response.write_eof()
            outcome.first_chunk_at = time.perf_counter()
            outcome.read_json(dumped)
            outcome.completed = True
        return response

    async def _litellm(self) -> Any:
        if self._module is None:
            if self._loading is None:
                self._loading = asyncio.Lock()
            async with self._loading:
                if self._module is None:
                    log.info("loading litellm for a non-OpenAI provider (first call only)")
                    self._module = await asyncio.to_thread(_import_litellm)
        return self._module


def _import_litellm() -> ModuleType:
    # No network here or in many clusters: use the price table shipped in the
    # package instead of fetching it at import.
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    litellm: Any = importlib.import_module("litellm")
    litellm.telemetry = False
    litellm.suppress_debug_info = True
    module: ModuleType = litellm
    return module


async def _stream(
    request: web.Request, chunks: AsyncIterator[Any], headers: dict[str, str], outcome: Outcome | None
) -> web.StreamResponse:
    response = web.StreamResponse(headers={**headers, "Content-Type": "text/event-stream"})
    try:
        await response.prepare(request)
        try:
            async for chunk in chunks:
                event = chunk.model_dump(exclude_none=True)
                if outcome is not None:
                    usage_only = outcome.read_event(event)
                    if outcome.hide_usage:  # asked for on the app's behalf: not shown to it
                        if usage_only:
                            continue
                        event.pop("usage", None)
                    if outcome.first_chunk_at is None:
                        outcome.first_chunk_at = time.perf_counter()
                await response.write(b"data: " + orjson.dumps(event) + b"\n\n")
        except ConnectionResetError:
            raise
        except Exception as exc:  # litellm's errors mid-stream
            # Cut the app off: a clean end would pass a truncated answer as complete.
            log.warning("provider stream broke off (%s); closing the client stream", type(exc).__name__)
            if outcome is not None:
                outcome.error_type = "upstream_cut_off"
            if request.transport is not None:
                request.transport.close()
            return response
        await response.write(_DONE)
        if outcome is not None:
            outcome.completed = outcome.delivered = True
        await response.write_eof()
    except ConnectionResetError:
        log.debug("client went away mid-stream")
        if outcome is not None and not outcome.delivered:
            outcome.error_type = "cancelled"
    return response


def _translate(exc: Exception) -> ProxyError:
    status = getattr(exc, "status_code", None)
    message = str(getattr(exc, "message", None) or exc)
    if isinstance(status, int) and 400 <= status < 600:
        if status == 408:
            return UpstreamTimeout(f"The provider did not answer in time: {message}")
        return ProviderError(message, status)
    if isinstance(exc, (TypeError, ValueError)):
        return InvalidRequest(f"The request could not be translated for this provider: {exc}")
    log.warning("provider call failed: %s", type(exc).__name__)
    return UpstreamUnreachable(f"The provider could not be reached: {type(exc).__name__}.")


def _error_headers(request_id: str, exc: Exception) -> dict[str, str]:
    headers = {"X-Request-Id": request_id}
    response = getattr(exc, "response", None)
    retry_after = getattr(getattr(response, "headers", None), "get", lambda _k: None)("retry-after")
    if isinstance(retry_after, str):
        headers["Retry-After"] = retry_after
    return headers
