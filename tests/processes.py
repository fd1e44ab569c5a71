"""``flywheel proxy`` as a real process (the console script's code path, signals, stderr log)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import ssl
import sys
from collections.abc import AsyncIterator, Iterator, Mapping

from aiohttp import web


class ProxyProcess:
    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.url = ""
        self.log: list[str] = []

    async def wait_for_log(self, pattern: str, timeout: float = 30) -> re.Match[str]:
        async def scan() -> re.Match[str]:
            assert self.process.stderr is not None
            while True:
                line = (await self.process.stderr.readline()).decode()
                if not line:
                    raise AssertionError("proxy exited; log:\n" + "".join(self.log))
                self.log.append(line)
                if found := re.search(pattern, line):
                    return found

        return await asyncio.wait_for(scan(), timeout)


@contextlib.asynccontextmanager
async def flywheel_proxy(
    *args: str, env: Mapping[str, str] | None = None, stdout: int | None = None
) -> AsyncIterator[ProxyProcess]:
    """``stdout``: ``asyncio.subprocess.PIPE`` to read it (default: inherited)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "flywheel.cli",
        "proxy",
        "--port",
        "0",
        *args,
        stderr=asyncio.subprocess.PIPE,
        stdout=stdout,
        env={**os.environ, **(env or {})},
    )
    running = ProxyProcess(process)
    try:
        running.url = (await running.wait_for_log(r"listening on (http://\S+)"))[1]
        yield running
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def free_port() -> int:
    """A loopback port nobody listens on right now (for servers that need one given)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def run_flywheel(*args: str, env: Mapping[str, str] | None = None, timeout: float = 120) -> tuple[int, str, str]:
    """A ``flywheel`` command as its own process: (exit status, stdout, stderr)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "flywheel.cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout)
    return process.returncode or 0, out.decode(), err.decode()


@contextlib.contextmanager
def debian_server(names: tuple[str, ...], args: list[str]) -> Iterator[str]:
    """A server from Debian's packages (prometheus, prometheus-alertmanager) on a free
    loopback port; ``args`` may use ``{port}``. Yields its base URL."""
    import shutil
    import subprocess

    binary = next(filter(None, (shutil.which(name) for name in names)), None)
    assert binary, f"Debian's {names[0]} is needed (.ci/run installs it)"
    port = free_port()
    process = subprocess.Popen(
        [binary, *(a.format(port=port) for a in args)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(30)


@contextlib.asynccontextmanager
async def serving(app: web.Application, ssl_context: ssl.SSLContext | None = None) -> AsyncIterator[str]:
    """An aiohttp app of the test's own (a receiver) on a free loopback port, over TLS when
    given a context; yields its base URL."""
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    try:
        yield f"{'https' if ssl_context else 'http'}://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()
