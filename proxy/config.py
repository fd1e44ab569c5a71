"""Settings of ``flywheel proxy``: small frozen value objects, parsed once in ``main()``."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from yarl import URL

from flywheel.registry import Registry, RegistryError, open_registry
from proxy.content import CaptureContent
from proxy.propagation import Propagators
from proxy.recent_calls import DEFAULT_CAPACITY
from proxy.tracing import Export
from proxy.upstreams import LiteLLMUpstream, Upstreams, load_upstreams

MiB = 1024 * 1024


class ConfigError(ValueError):
    """A flag, variable or upstreams file the proxy cannot start with."""


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Upstream timeouts. There is no total cap: reasoning streams run for many minutes.

    ``connect`` bounds the TCP/TLS connect; ``read`` bounds every wait for the next
    bytes from the provider, the wait for the response headers included.
    """

    connect: float = 10.0
    read: float = 600.0


@dataclass(frozen=True, slots=True)
class ClientTimeouts:
    """How long an app's connection may take, as nginx's client timeouts.

    ``idle``: from opening a connection (or the previous answer on it) to a complete
    request head; then it is closed. ``body``: to receive the request body; 408 after.
    """

    idle: float = 75.0
    body: float = 60.0


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    upstreams: Upstreams
    registry: Registry | None = None  # None: plain pass-through, no managed prompts
    reload_interval: float = 1.0  # seconds between registry checks (picked up within 2 s)
    host: str = "127.0.0.1"
    port: int = 4000
    max_body_size: int = 50 * MiB  # OpenAI's own per-request ceiling for image inputs
    timeouts: Timeouts = field(default_factory=Timeouts)
    client_timeouts: ClientTimeouts = field(default_factory=ClientTimeouts)
    drain_timeout: float = 30.0
    max_connections: int = 1024
    capture_content: CaptureContent = CaptureContent.NONE
    remember_calls: int = DEFAULT_CAPACITY  # recent calls feedback can join (trace parent, version labels)
    export: Export = field(default_factory=Export)  # where spans go
    propagators: Propagators = field(default_factory=Propagators)  # OTEL_PROPAGATORS: trace headers read and written

    def secrets(self) -> tuple[str, ...]:
        """Upstream keys from config: masked wherever content is captured."""
        found = [self.upstreams.default.api_key] if self.upstreams.default else []
        for upstream in self.upstreams.by_model.values():
            key = upstream.params.get("api_key") if isinstance(upstream, LiteLLMUpstream) else upstream.api_key
            found.append(key if isinstance(key, str) else None)
        return tuple(key for key in found if key)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``flywheel proxy`` (SPEC §2); each also reads ``FLYWHEEL_<FLAG>``."""
    parser.add_argument("--host", default="127.0.0.1", help="listen address (a sidecar listens on loopback)")
    parser.add_argument("--port", type=int, default=4000, help="listen port; 0 picks a free one")
    parser.add_argument("--upstream", help="OpenAI-compatible base URL, e.g. https://api.openai.com/v1")
    parser.add_argument(
        "--upstreams", type=Path, help="TOML/JSON model list: several upstreams, non-OpenAI providers via litellm"
    )
    parser.add_argument("--registry", default="./.flywheel", help="prompt registry: DIR or k8s://NAMESPACE/CONFIGMAP")
    parser.add_argument("--reload-interval", type=float, default=1.0, help="seconds between registry checks")
    parser.add_argument("--spans-file", type=Path, help="also append spans here as OTLP-JSON lines (the span store)")
    parser.add_argument(
        "--spans-file-max-mb", type=float, default=100.0, help="rotate the spans file to PATH.1 … at this size"
    )
    parser.add_argument(
        "--capture-content",
        choices=[mode.value for mode in CaptureContent],
        default="none",
        help="record message content on spans: none, redacted (secrets, emails, cards masked) or full",
    )
    parser.add_argument(
        "--remember-calls",
        type=int,
        default=DEFAULT_CAPACITY,
        help="recent calls feedback is linked to (trace and version labels); ~300 bytes each",
    )
    parser.add_argument(
        "--max-body-size", type=int, default=50 * MiB, help="largest accepted request body in bytes (413 above)"
    )
    parser.add_argument("--connect-timeout", type=float, default=10.0, help="seconds to connect to the upstream")
    parser.add_argument(
        "--read-timeout",
        type=float,
        default=600.0,
        help="seconds the upstream may stay silent (before headers or between chunks); no total cap",
    )
    parser.add_argument(
        "--idle-timeout",
        type=float,
        default=75.0,
        help="seconds a client connection may go without a complete request head (idle or slow headers)",
    )
    parser.add_argument(
        "--body-timeout", type=float, default=60.0, help="seconds a client may take to send the body (408 after)"
    )
    parser.add_argument(
        "--drain-timeout", type=float, default=30.0, help="seconds SIGTERM waits for in-flight requests and streams"
    )
    parser.add_argument(
        "--max-connections", type=int, default=1024, help="upstream connection pool size; more requests queue"
    )


def from_args(args: argparse.Namespace, environ: Mapping[str, str]) -> ProxyConfig:
    """Build the config from parsed flags and ``environ`` (the provider key, KUBECONFIG, OTEL_*)."""
    api_key = environ.get("FLYWHEEL_UPSTREAM_API_KEY") or None
    default = _base_url(args.upstream) if args.upstream else None
    try:
        upstreams = load_upstreams(args.upstreams, default=default, api_key=api_key, environ=environ)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--upstreams {args.upstreams}: {exc}") from exc
    if not upstreams:
        raise ConfigError("give --upstream URL (or FLYWHEEL_UPSTREAM) or --upstreams FILE")
    _positive("--max-body-size", args.max_body_size)
    _positive("--connect-timeout", args.connect_timeout)
    _positive("--read-timeout", args.read_timeout)
    _positive("--max-connections", args.max_connections)
    _positive("--reload-interval", args.reload_interval)
    _positive("--idle-timeout", args.idle_timeout)
    _positive("--body-timeout", args.body_timeout)
    try:
        registry = open_registry(args.registry, environ.get("KUBECONFIG"))
    except RegistryError as exc:
        raise ConfigError(f"--registry {args.registry}: {exc}") from exc
    if args.remember_calls < 0:
        raise ConfigError("--remember-calls must be >= 0")
    if args.drain_timeout < 0:
        raise ConfigError("--drain-timeout must be >= 0")
    if not 0 <= args.port <= 65535:
        raise ConfigError("--port must be 0..65535")
    _positive("--spans-file-max-mb", args.spans_file_max_mb)
    try:
        export = Export.from_environ(environ, args.spans_file, int(args.spans_file_max_mb * MiB))
        propagators = Propagators.from_environ(environ)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    return ProxyConfig(
        upstreams=upstreams,
        registry=registry,
        reload_interval=args.reload_interval,
        host=args.host,
        port=args.port,
        max_body_size=args.max_body_size,
        timeouts=Timeouts(connect=args.connect_timeout, read=args.read_timeout),
        client_timeouts=ClientTimeouts(idle=args.idle_timeout, body=args.body_timeout),
        drain_timeout=args.drain_timeout,
        max_connections=args.max_connections,
        capture_content=CaptureContent(args.capture_content),
        remember_calls=args.remember_calls,
        export=export,
        propagators=propagators,
    )


def _base_url(text: str) -> URL:
    url = URL(text)
    if url.scheme not in ("http", "https") or not url.host:
        raise ConfigError(f"--upstream must be an http(s) URL, got {text!r}")
    return url


def _positive(flag: str, value: float) -> None:
    if value <= 0:
        raise ConfigError(f"{flag} must be > 0")
