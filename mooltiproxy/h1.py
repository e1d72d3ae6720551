"""A lean HTTP/1.1 client for talking to upstreams: pooled keep-alive connections, httptools parsing.

The proxy sends one request with a body it already holds and relays the answer as it comes. This
client does only that: one write per request, the answer's body handed over in the chunks the socket
delivers, reading paused when the client reading it falls behind. With aiohttp in its place the proxy
answers a third to two fifths fewer requests per second on one core, with httpx five sixths fewer
(bench/RESULTS.md, "Upstream clients"). Responses end by content-length,
chunked encoding or the connection closing. TLS through the standard ``ssl`` module.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import socket
import ssl
import time
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import httptools

from .upstream import RawHeaders, UpstreamResponse, broken_stream, slow, unreachable

_HIGH_WATER = 256 * 1024  # unread answer bytes held before reading from the upstream pauses
_IDLE = 30.0  # seconds an idle pooled connection is kept


class _Gone(Exception):
    """The connection closed before the answer was complete."""


class _Unsupported(Exception):
    """An answer this client cannot relay; the message says why."""


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection and the answer being read on it."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.idle_since = 0.0
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.headers: RawHeaders = []  # a new list: the previous answer's response keeps its own
        self.body: collections.deque[bytes] = collections.deque()
        self.buffered = 0
        self.headers_done = False
        self.complete = False
        self.received_any = False
        self.error: BaseException | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.written_at = 0.0
        self.paused = False
        self.keep_alive = True
        self.delimited = False  # the answer has a length or chunked encoding (else the close ends it)

    # ---------------------------------------------------------------------------- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.received_any = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # The proxy never asks for an upgrade (hop-by-hop headers are not forwarded), so a 101 is an
            # upstream the proxy cannot speak to; without this the request would wait for its timeout.
            self.error = _Unsupported("it switched to another protocol (HTTP 101), which the proxy does not relay")
            self._wake()
            self._close()
        except httptools.HttpParserError as exc:
            self.error = exc
            self._wake()
            self._close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.complete:
            if self.headers_done and not self.delimited:
                self.complete = True  # an answer without a length ends where the connection does
            else:
                self.error = self.error or exc or _Gone()  # what was found first says most
        self._wake()

    def pause_writing(self) -> None:  # requests are written whole; nothing to hold back
        pass

    def resume_writing(self) -> None:
        pass

    # ---------------------------------------------------------------------------- httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200:  # an interim answer (100 Continue): the real one follows
            self.headers = []
            return
        self.status = status
        self.headers_done = True
        self.keep_alive = self.parser.should_keep_alive()
        for name, value in self.headers:
            if name == b"content-length" or (name == b"transfer-encoding" and b"chunked" in value.lower()):
                self.delimited = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        self.body.append(body)
        self.buffered += len(body)
        if self.buffered > _HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self.status:
            self.complete = True
            self._wake()

    # ---------------------------------------------------------------------------- for the client

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self, timeout: float) -> None:
        """Until something new happens on this connection, or ``timeout`` seconds without anything."""
        waiter = self.waiter = self.loop.create_future()
        timer = self.loop.call_later(timeout, _expire, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self.waiter = None

    def take_all(self) -> bytes:
        data = self.body.popleft() if len(self.body) == 1 else b"".join(self.body)
        self.body.clear()
        self.buffered = 0
        if self.paused and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()
        return data

    def reusable(self) -> bool:
        return self.complete and self.keep_alive and not self.closed and self.error is None and self.transport is not None

    def _close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
        self.closed = True


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class H1Response:
    __slots__ = ("_client", "_conn", "_key", "_target", "_timeout", "headers", "status", "written_at")

    def __init__(self, conn: _Connection, client: H1Client, key: tuple[str, str, int], target: str, timeout: float) -> None:
        self._conn: _Connection | None = conn
        self._client = client
        self._key = key
        self._target = target
        self._timeout = timeout
        self.status = conn.status
        self.headers = conn.headers
        self.written_at = conn.written_at  # when the request's last byte went out: the upstream's time starts here

    async def chunks(self) -> AsyncIterator[bytes]:
        conn = self._conn
        if conn is None:
            return
        while True:
            if conn.body:
                # Everything that has arrived goes on together: under load several chunks wait here, and
                # one write for them all costs the proxy much less than one each.
                yield conn.take_all()
            if conn.complete and not conn.body:
                return
            if conn.error is not None:
                raise broken_stream(self._target, "the connection closed before the answer was complete")
            try:
                await conn.wait(self._timeout)
            except TimeoutError:
                raise broken_stream(self._target, f"nothing arrived for {self._timeout:g} s") from None

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self.chunks()])

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if conn.reusable() and not conn.body:
            self._client.release(self._key, conn)
        else:
            conn._close()


class H1Client:
    """The pooled client: idle connections per (scheme, host, port), reused newest first."""

    def __init__(self) -> None:
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._ssl: ssl.SSLContext | None = None

    @staticmethod
    @functools.lru_cache(maxsize=1024)
    def _split(url: str) -> tuple[tuple[str, str, int], bytes, bytes]:
        """(scheme, host, port), the Host header value and the request target (URLs repeat: worked out once)."""
        parts = urlsplit(url)
        key = (parts.scheme, parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80))
        host = parts.netloc.rpartition("@")[2].encode("idna")
        target = (parts.path or "/") + ("?" + parts.query if parts.query else "")
        return key, host, target.encode("latin-1")

    async def send(
        self, method: str, url: str, headers: list[tuple[str, str]], body: bytes, *, timeout: float, connect_timeout: float,
        target: str, connect_to: str | None = None,
    ) -> UpstreamResponse:
        key, host, path = self._split(url)
        lines = [method.encode() + b" " + path + b" HTTP/1.1", b"host: " + host]
        lines += [k.encode("latin-1") + b": " + v.encode("latin-1") for k, v in headers]
        if body or method in ("POST", "PUT", "PATCH"):
            lines.append(b"content-length: " + str(len(body)).encode())
        request = b"\r\n".join(lines) + b"\r\n\r\n" + body
        for attempt in (1, 2):
            conn, reused = await self._connection(key, url, connect_timeout, target, connect_to)
            conn._reset()
            assert conn.transport is not None
            conn.transport.write(request)
            conn.written_at = time.perf_counter()
            try:
                while not conn.headers_done:
                    if conn.error is not None:
                        raise conn.error
                    await conn.wait(timeout)
            except TimeoutError:
                conn._close()
                raise slow(target, url, timeout, "answer") from None
            except asyncio.CancelledError:
                conn._close()  # the client has gone: the upstream sees the connection drop
                raise
            except BaseException as exc:
                conn._close()
                if reused and not conn.received_any and attempt == 1:
                    continue  # a pooled connection the upstream had closed; it never saw the request
                raise unreachable(target, url, "it closed the connection without answering"
                                  if isinstance(exc, (_Gone, ConnectionError)) else str(exc) or type(exc).__name__) from None
            return H1Response(conn, self, key, target, timeout)
        raise AssertionError("unreachable")

    async def _connection(self, key: tuple[str, str, int], url: str, connect_timeout: float, target: str,
                          connect_to: str | None = None) -> tuple[_Connection, bool]:
        idle = self._idle.get(key)
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if not conn.closed and now - conn.idle_since < _IDLE:
                return conn, True
            conn._close()
        loop = asyncio.get_running_loop()
        scheme, host, port = key
        ssl_context = None
        if scheme == "https":
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            ssl_context = self._ssl
        try:
            async with asyncio.timeout(connect_timeout):
                _, conn = await loop.create_connection(lambda: _Connection(loop), connect_to or host, port, ssl=ssl_context,
                                                       server_hostname=host if ssl_context else None)
        except TimeoutError:
            raise slow(target, url, connect_timeout, "accept a connection") from None
        except socket.gaierror:
            raise unreachable(target, url, "its host name does not resolve") from None
        except ConnectionRefusedError:
            raise unreachable(target, url, "connection refused") from None
        except ssl.SSLError as exc:
            raise unreachable(target, url, f"the TLS handshake failed ({exc.reason or exc})") from None
        except OSError as exc:
            raise unreachable(target, url, exc.strerror or str(exc)) from None
        return conn, False

    def release(self, key: tuple[str, str, int], conn: _Connection) -> None:
        conn.idle_since = time.monotonic()
        self._idle.setdefault(key, []).append(conn)

    async def aclose(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn._close()
        self._idle.clear()

