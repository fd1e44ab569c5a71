"""The fake provider and a real proxy on an event loop in a background thread, for
synchronous drivers (hypothesis ``@given``, schemathesis) that call over HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from tests.conftest import proxy_for
from tests.fake_upstream import FakeUpstream


@dataclass
class Background:
    proxy_url: str
    upstream: FakeUpstream  # read ``seen`` only after the proxy answered (no concurrent use)


@contextlib.contextmanager
def proxy_in_thread(**overrides: Any) -> Iterator[Background]:
    """A proxy (with ``overrides`` of its config) in front of the fake, until the block ends."""
    loop = asyncio.new_event_loop()
    ready: asyncio.Future[Background] = loop.create_future()
    stop = asyncio.Event()

    async def serve() -> None:
        async with FakeUpstream().running() as upstream:
            async with proxy_for(upstream, **overrides) as proxy:
                ready.set_result(Background(proxy.url, upstream))
                await stop.wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    try:
        yield asyncio.run_coroutine_threadsafe(_wait(ready), loop).result(timeout=30)
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=30)
        loop.close()


async def _wait(future: asyncio.Future[Background]) -> Background:
    return await future
