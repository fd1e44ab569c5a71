"""The proxy's aiohttp application: routes, runtime objects in typed AppKeys, errors in one place."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from functools import partial

import aiohttp
from aiohttp import web

from proxy.config import ProxyConfig
from proxy.content import ContentRecorder
from proxy.errors import InternalError, ProxyError, from_http_exception, render
from proxy.feedback import accepted, parse_feedback
from proxy.forward import Forwarder
from proxy.gateway import Gateway
from proxy.litellm_bridge import LiteLLMBridge
from proxy.metrics import ProxyMetrics
from proxy.pricing import PriceTable
from proxy.prompt_watch import PromptWatcher
from proxy.propagation import TraceHeaders
from proxy.recent_calls import RecentCalls
from proxy.telemetry import Telemetry, bearer_token
from proxy.tracing import Tracing, build_tracing
from proxy.wire import BodyLimits, read_body

log = logging.getLogger("flywheel.proxy")


@dataclass(slots=True)
class Lifecycle:
    """Whether the process is draining after SIGTERM (``/readyz`` then fails)."""

    draining: bool = False


CONFIG = web.AppKey("config", ProxyConfig)
LIFECYCLE = web.AppKey("lifecycle", Lifecycle)
GATEWAY = web.AppKey("gateway", Gateway)
FORWARDER = web.AppKey("forwarder", Forwarder)
METRICS = web.AppKey("metrics", ProxyMetrics)
PROMPTS = web.AppKey("prompts", PromptWatcher)
TELEMETRY = web.AppKey("telemetry", Telemetry)

_OK = b'{"status":"ok"}'
_DRAINING = b'{"status":"draining"}'


def create_app(config: ProxyConfig, tracing: Tracing | None = None) -> web.Application:
    """The proxy app; spans go to ``tracing`` when given (tests), else where config says."""
    app = web.Application(client_max_size=config.max_body_size, middlewares=[openai_errors])
    app[CONFIG] = config
    app[LIFECYCLE] = Lifecycle()
    app[METRICS] = metrics_ = ProxyMetrics()
    own = tracing is None
    tracing = build_tracing(config.export, metrics_.spans_dropped) if tracing is None else tracing
    app.cleanup_ctx.append(partial(_telemetry, tracing=tracing, own=own))
    app.cleanup_ctx.append(_gateway)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/v1/feedback", feedback)
    app.router.add_route("*", "/v1/{tail:.*}", proxy_api)
    return app


async def _telemetry(app: web.Application, tracing: Tracing, own: bool) -> AsyncIterator[None]:
    config = app[CONFIG]
    prices = await asyncio.to_thread(PriceTable.from_litellm)  # a 2 MB JSON file, read once
    app[TELEMETRY] = Telemetry(
        tracing,
        app[METRICS],
        prices,
        ContentRecorder(config.capture_content, config.secrets()),
        RecentCalls(config.remember_calls),
        TraceHeaders(config.propagators),
    )
    yield
    await app[TELEMETRY].close()  # calls answered during the drain, schema checks running
    # Flush what is queued; the SDK's export runs in its own thread, not on the loop.
    provider = tracing.provider
    await asyncio.to_thread(provider.shutdown if own else provider.force_flush)


async def _gateway(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    watcher = None
    if config.registry is not None:
        watcher = app[PROMPTS] = PromptWatcher(config.registry, config.reload_interval, app[METRICS])
        await watcher.start()
    session = upstream_session(config)
    forwarder = app[FORWARDER] = Forwarder(session)
    app[GATEWAY] = Gateway(config.upstreams, forwarder, LiteLLMBridge(), body_limits(config), app[TELEMETRY], watcher)
    yield
    await forwarder.close()
    await session.close()
    if watcher is not None:
        await watcher.stop()


def upstream_session(config: ProxyConfig) -> aiohttp.ClientSession:
    """One pooled session to every OpenAI-compatible upstream."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=config.max_connections, limit_per_host=0, ttl_dns_cache=300),
        # No total cap: a reasoning stream may run for many minutes; idle time is what is bounded.
        timeout=aiohttp.ClientTimeout(
            total=None, connect=None, sock_connect=config.timeouts.connect, sock_read=config.timeouts.read
        ),
        cookie_jar=aiohttp.DummyCookieJar(),  # never carry one app request's cookies into another
        skip_auto_headers=("User-Agent", "Content-Type"),  # send the app's, or none
        trust_env=False,
    )


async def proxy_api(request: web.Request) -> web.StreamResponse:
    return await request.app[GATEWAY].handle(request)


async def healthz(request: web.Request) -> web.Response:
    return web.Response(body=_OK, content_type="application/json")


async def readyz(request: web.Request) -> web.Response:
    if request.app[LIFECYCLE].draining:
        return web.Response(status=503, body=_DRAINING, content_type="application/json")
    return web.Response(body=_OK, content_type="application/json")


def body_limits(config: ProxyConfig) -> BodyLimits:
    return BodyLimits(config.max_body_size, config.client_timeouts.body)


async def feedback(request: web.Request) -> web.Response:
    parsed = parse_feedback(await read_body(request, body_limits(request.app[CONFIG])))
    request.app[TELEMETRY].record_feedback(parsed, bearer_token(request.headers))
    return accepted(parsed)


async def metrics(request: web.Request) -> web.Response:
    body = request.app[METRICS].exposition()
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def openai_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Whatever fails before the answer starts is rendered in the OpenAI shape, never a traceback."""
    try:
        return await handler(request)
    except ProxyError as exc:
        return render(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return render(from_http_exception(exc))
    except (asyncio.CancelledError, ConnectionError):
        raise
    except Exception:
        log.exception("unexpected error serving %s %s", request.method, request.path)
        if request.writer.output_size > 0:
            raise  # the answer has started: aiohttp closes the connection
        return render(InternalError("The proxy failed unexpectedly; its log has the details."))
