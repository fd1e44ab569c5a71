"""Debian's nginx as a fast fake provider for benchmarks: canned chat JSON, or SSE on request.

A request with header ``X-Bench-Stream: 1`` gets a canned SSE stream in one write;
``X-Bench-Stream: paced`` the same stream an event a write, 2 ms apart, as a provider
sends tokens (nginx's echo module: ``echo_flush``, ``echo_sleep``); every other request
gets a canned chat completion; ``POST /v1/traces`` is an OTLP/HTTP receiver
that accepts and discards. nginx answers from memory, so it is never
the bottleneck of a proxy benchmark.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import orjson

CHAT = {
    "id": "chatcmpl-bench",
    "object": "chat.completion",
    "created": 1700000000,
    "model": "gpt-bench",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "The quick brown fox jumps over the lazy dog. " * 4},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 25, "completion_tokens": 40, "total_tokens": 65},
}


def _events() -> list[bytes]:
    base = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1700000000, "model": "gpt-bench"}
    events = [
        {**base, "choices": [{"index": 0, "delta": {"content": w + " "}, "finish_reason": None}]}
        for w in "The quick brown fox jumps over the lazy dog".split()
    ]
    events.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    events.append({**base, "choices": [], "usage": {"prompt_tokens": 25, "completion_tokens": 9, "total_tokens": 34}})
    return [b"data: " + orjson.dumps(e) + b"\n\n" for e in events] + [b"data: [DONE]\n\n"]


def _sse() -> bytes:
    return b"".join(_events())


PACE_SECONDS = 0.002  # between two events of a paced stream
# For paced streams: Debian's nginx-light ships it (libnginx-mod-http-echo).
ECHO_MODULE = Path("/usr/lib/nginx/modules/ngx_http_echo_module.so")
CAN_PACE = ECHO_MODULE.exists()


def _paced_location() -> str:
    """The stream an event a write, PACE_SECONDS apart, in the echo module's directives."""
    steps = [f'echo -n "{_nginx_string(event)}";\n            echo_flush;' for event in _events()]
    paced = f"\n            echo_sleep {PACE_SECONDS};\n            ".join(steps)
    return f"""location = /__sse_paced {{
            internal;
            default_type text/event-stream;
            {paced}
        }}"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _nginx_string(body: bytes) -> str:
    return body.decode().replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


@contextlib.contextmanager
def nginx_upstream() -> Iterator[str]:
    """Start nginx on a free loopback port; yields its base URL (without /v1)."""
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="flywheel-nginx-") as tmp:
        root = Path(tmp)
        (root / "logs").mkdir()
        config = root / "nginx.conf"
        config.write_text(
            f"""
{f"load_module {ECHO_MODULE};" if CAN_PACE else ""}
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/logs/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {root}/body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    keepalive_requests 1000000;
    map $http_x_bench_stream $sse {{
        paced /__sse_paced;
        default /__sse;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            if ($http_x_bench_stream) {{
                rewrite ^ $sse last;
            }}
            default_type application/json;
            return 200 "{_nginx_string(orjson.dumps(CHAT))}";
        }}
        location = /v1/traces {{
            default_type application/x-protobuf;
            return 200 "";
        }}
        location = /__sse {{
            internal;
            default_type text/event-stream;
            return 200 "{_nginx_string(_sse())}";
        }}
        {_paced_location() if CAN_PACE else ""}
    }}
}}
"""
        )
        process = subprocess.Popen([binary, "-p", str(root), "-c", str(config), "-g", "daemon off;"])
        try:
            wait_listening(port)
            yield f"http://127.0.0.1:{port}"
        finally:
            process.terminate()
            process.wait(10)


def wait_listening(port: int, timeout: float = 30) -> None:
    """Block until something accepts connections on the loopback port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listened on port {port} within {timeout:g}s")
