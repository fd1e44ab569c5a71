"""Requests sent as raw bytes, for what HTTP clients would normalize or refuse to send."""

from __future__ import annotations

import asyncio


async def raw_request(base_url: str, request: bytes, timeout: float = 5) -> tuple[int, bytes]:
    """Send ``request`` as is; return the status and body of a ``Connection: close`` answer."""
    host, port = base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(request)
        answer = await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body
