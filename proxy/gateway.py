"""The core of every ``/v1/*`` request: parse → prompt → choose the upstream → relay → render,
with the call's span and metrics finished once the answer is out."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import web

from proxy.errors import ProxyError, render
from proxy.forward import Forwarder
from proxy.litellm_bridge import LiteLLMBridge
from proxy.observation import ask_for_usage
from proxy.prompt_watch import PromptWatcher
from proxy.prompts import PROMPT_ENDPOINTS, apply_prompt
from proxy.telemetry import CallTrace, Telemetry
from proxy.upstreams import OpenAIUpstream, Upstreams
from proxy.wire import BodyLimits, Call, read_call, request_id


class Gateway:
    """Handles the OpenAI-compatible API; one per proxy process."""

    def __init__(
        self,
        upstreams: Upstreams,
        forwarder: Forwarder,
        bridge: LiteLLMBridge,
        body_limits: BodyLimits,
        telemetry: Telemetry,
        prompts: PromptWatcher | None = None,
    ) -> None:
        self._upstreams = upstreams
        self._prompts = prompts
        self._forwarder = forwarder
        self._bridge = bridge
        self._body_limits = body_limits
        self._telemetry = telemetry

    async def handle(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        rid = request_id(request)
        traced: CallTrace | None = None
        try:
            call = await read_call(request, rid, self._body_limits)
            if call.endpoint == "models" and request.method == "GET" and self._upstreams.default is None:
                return web.Response(
                    body=self._upstreams.listed_models(), content_type="application/json", headers={"X-Request-Id": rid}
                )
            traced = self._telemetry.begin(call, request.headers, started)
            if self._prompts is not None and call.body is not None and call.endpoint in PROMPT_ENDPOINTS:
                applied = apply_prompt(self._prompts.book, call, request.headers)
                if applied is not None:
                    call.response_headers.update(applied.headers())
                    call.model = call.body.get("model") if isinstance(call.body.get("model"), str) else None
                if traced is not None:
                    traced.prompt_applied(applied)
            _request_usage(call)
            upstream = self._upstreams.for_model(call.model)
            if traced is not None:
                traced.routed(upstream)
            if isinstance(upstream, OpenAIUpstream):
                return await self._forwarder.forward(request, call, upstream)
            return await self._bridge.serve(request, call, upstream)
        except ProxyError as exc:
            if traced is not None:
                traced.failed(exc.status, exc.code or exc.type)
            return render(exc, {"X-Request-Id": rid})
        except asyncio.CancelledError:  # the app went away
            if traced is not None:
                traced.cancelled()
            raise
        finally:
            if traced is not None:
                traced.finish()


def _request_usage(call: Call) -> None:
    """Ask for the stream's usage chunk on the app's behalf (and hide it from the app)."""
    if call.outcome is None or not ask_for_usage(call.body, call.endpoint, call.stream):
        return
    assert call.body is not None
    options: Any = call.body.get("stream_options")
    call.set_field("stream_options", {**(options if isinstance(options, dict) else {}), "include_usage": True})
    call.outcome.hide_usage = True
