"""A lean HTTP/1.1 client connection for load generation: prebuilt request bytes in, timed response callbacks out.

aiohttp's client costs tens of microseconds per request and per chunk, which would make the load
generator, sharing a core with the upstream, part of what is measured. This one is an asyncio
``Protocol`` over httptools' C parser (already a dependency of the proxy): the only Python work per
response is a handful of callbacks, and every timestamp is taken when the bytes arrive.
"""

from __future__ import annotations

import asyncio
import socket
import time
from typing import cast
from urllib.parse import urlsplit

import httptools


class Handler:
    """One request's callbacks; subclasses record what they need."""

    def headers(self, status: int, captured: bytes | None, t: float) -> None:
        pass

    def body(self, data: bytes, t: float) -> None:
        pass

    def done(self, t: float) -> None:
        pass

    def failed(self, exc: BaseException) -> None:
        pass


class Conn(asyncio.Protocol):
    """One keep-alive connection carrying one request at a time."""

    def __init__(self, capture: bytes = b"") -> None:
        self.capture = capture
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.handler: Handler | None = None
        self.captured: bytes | None = None
        self.alive = True
        self.reusable = True
        self._now = 0.0

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not asyncio.Transport subclasses

    def data_received(self, data: bytes) -> None:
        self._now = time.perf_counter()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.alive = False
        if self.handler is not None:
            handler, self.handler = self.handler, None
            handler.failed(exc or ConnectionResetError("connection closed before the answer ended"))

    # httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.capture and name.lower() == self.capture:
            self.captured = value

    def on_headers_complete(self) -> None:
        if not self.parser.should_keep_alive():
            self.reusable = False
        if self.handler is not None:
            self.handler.headers(self.parser.get_status_code(), self.captured, self._now)

    def on_body(self, body: bytes) -> None:
        if self.handler is not None:
            self.handler.body(body, self._now)

    def on_message_complete(self) -> None:
        handler, self.handler = self.handler, None
        if handler is not None:
            handler.done(self._now)

    # use

    def send(self, request: bytes, handler: Handler) -> None:
        assert self.transport is not None
        self.handler = handler
        self.captured = None
        self.transport.write(request)

    @property
    def idle(self) -> bool:
        return self.alive and self.reusable and self.handler is None

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def _fail(self, exc: BaseException) -> None:
        handler, self.handler = self.handler, None
        self.reusable = False
        if handler is not None:
            handler.failed(exc)
        self.close()


async def connect(host: str, port: int, *, capture: bytes = b"", rcvbuf: int | None = None) -> Conn:
    """A connection; ``rcvbuf`` shrinks the socket's receive buffer (a slow reader's small window)."""
    loop = asyncio.get_running_loop()
    if rcvbuf is None:
        _, conn = await loop.create_connection(lambda: Conn(capture), host, port)
        return conn
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    await loop.sock_connect(sock, (host, port))
    _, conn = await loop.create_connection(lambda: Conn(capture), sock=sock)
    return conn


class Target:
    """Where requests go and the exact bytes of the one request sent over and over."""

    def __init__(self, url: str, body: bytes, headers: dict[str, str], method: str = "POST") -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}", f"Content-Length: {len(body)}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        self.request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body

    async def connect(self, *, capture: bytes = b"", rcvbuf: int | None = None) -> Conn:
        return await connect(self.host, self.port, capture=capture, rcvbuf=rcvbuf)
