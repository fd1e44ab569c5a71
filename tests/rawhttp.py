"""Requests sent as raw bytes, for what HTTP clients would normalize or refuse to send."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass


async def raw_request(base_url: str, request: bytes, timeout: float = 5) -> tuple[int, bytes]:
    """Send ``request`` as is; return the status and body of a ``Connection: close`` answer."""
    async with raw_connection(base_url) as conn:
        conn.writer.write(request)
        answer = await asyncio.wait_for(conn.reader.read(), timeout)
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


@dataclass
class Answer:
    status: int
    headers: dict[str, str]  # lower-cased names
    body: bytes


@dataclass
class RawConnection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def answer(self, timeout: float = 5) -> Answer:
        """One response with a Content-Length body (the proxy's own answers have one)."""
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), timeout)
        lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        body = await asyncio.wait_for(self.reader.readexactly(length), timeout)
        return Answer(int(lines[0].split(" ")[1]), headers, body)

    async def closed_by_peer(self, timeout: float) -> bool:
        """Whether the proxy closes the connection within ``timeout`` (sending nothing more)."""
        try:
            rest = await asyncio.wait_for(self.reader.read(), timeout)
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True
        return rest == b""


@contextlib.asynccontextmanager
async def raw_connection(base_url: str) -> AsyncIterator[RawConnection]:
    host, port = base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        yield RawConnection(reader, writer)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
