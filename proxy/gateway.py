"""The core of every ``/v1/*`` request: parse → choose the upstream → relay → render."""

from __future__ import annotations

from aiohttp import web

from proxy.errors import ProxyError, render
from proxy.forward import Forwarder
from proxy.litellm_bridge import LiteLLMBridge
from proxy.prompt_watch import PromptWatcher
from proxy.prompts import PROMPT_ENDPOINTS, apply_prompt
from proxy.upstreams import OpenAIUpstream, Upstreams
from proxy.wire import read_call, request_id


class Gateway:
    """Handles the OpenAI-compatible API; one per proxy process."""

    def __init__(
        self,
        upstreams: Upstreams,
        forwarder: Forwarder,
        bridge: LiteLLMBridge,
        max_body: int,
        prompts: PromptWatcher | None = None,
    ) -> None:
        self._upstreams = upstreams
        self._prompts = prompts
        self._forwarder = forwarder
        self._bridge = bridge
        self._max_body = max_body

    async def handle(self, request: web.Request) -> web.StreamResponse:
        rid = request_id(request)
        try:
            call = await read_call(request, rid, self._max_body)
            if call.endpoint == "models" and request.method == "GET" and self._upstreams.default is None:
                return web.Response(
                    body=self._upstreams.listed_models(), content_type="application/json", headers={"X-Request-Id": rid}
                )
            if self._prompts is not None and call.body is not None and call.endpoint in PROMPT_ENDPOINTS:
                applied = apply_prompt(self._prompts.book, call, request.headers)
                if applied is not None:
                    call.response_headers.update(applied.headers())
                    call.model = call.body.get("model") if isinstance(call.body.get("model"), str) else None
            upstream = self._upstreams.for_model(call.model)
            if isinstance(upstream, OpenAIUpstream):
                return await self._forwarder.forward(request, call, upstream)
            return await self._bridge.serve(request, call, upstream)
        except ProxyError as exc:
            return render(exc, {"X-Request-Id": rid})
