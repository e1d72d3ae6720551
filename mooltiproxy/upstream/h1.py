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

from .client import RawHeaders, UpstreamResponse, broken_stream, read_whole, slow, unreachable, unusable

_HIGH_WATER = 64 * 1024  # unread answer bytes held before reading from the upstream pauses
# What the consumer gets at once: the pieces waiting, joined, up to this size. A big answer relayed to a slow reader
# arrives in reads of up to 256 KiB; joined whole (up to twice the high-water mark) each was copied and the reader's
# connection held the copy beside the next: 2.1 MB a slow reader in bench S7, 1.1 MB with both limits here.
_TAKE_UP_TO = 256 * 1024
_IDLE = 30.0  # seconds an idle pooled connection is kept
MAX_HEAD = 64 * 1024  # bytes of status line and headers an upstream may send (nginx's default buffer is 4-8 KiB)


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
        self._stopped: _Unsupported | None = None
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
        self.head_size = 0
        self.no_body = False  # the answer to a HEAD request: headers only, whatever they announce

    # ---------------------------------------------------------------------------- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.received_any = True
        if self.closed:
            return  # bytes after the connection was given up on
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # The proxy never asks for an upgrade (hop-by-hop headers are not forwarded), so a 101 is an
            # upstream the proxy cannot speak to; without this the request would wait for its timeout.
            self._fail(_Unsupported("it switched to another protocol (HTTP 101), which the proxy does not relay"))
        except httptools.HttpParserCallbackError as exc:
            self._fail(self._stopped or exc)
        except httptools.HttpParserError as exc:
            self._fail(exc)

    def _stop(self, why: _Unsupported) -> None:
        """Stop parsing from inside a parser callback (the parser turns what is raised into its own error)."""
        self._stopped = why
        raise why

    def _fail(self, error: BaseException) -> None:
        """The connection is unusable: the answer so far stands only if it was complete; nothing is reused."""
        if not self.complete:
            self.error = self.error or error
        self.keep_alive = False
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

    def on_message_begin(self) -> None:
        if self.status:
            # A second answer to one request (or bytes on an idle connection): whoever sends it is out of step
            # with the requests, and whatever follows cannot be trusted to belong to anyone. Raised here, it
            # stops the parser before a byte of it touches the answer being relayed; the connection is closed.
            self._stop(_Unsupported("it sent an answer nobody asked for"))

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head_size += len(name) + len(value) + 4
        if self.head_size > MAX_HEAD:
            self._stop(_Unsupported(f"its headers were larger than {MAX_HEAD // 1024} KiB"))
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200:  # an interim answer (100 Continue): the real one follows
            self.headers = []
            self.head_size = 0
            return
        self.status = status
        self.headers_done = True
        self.keep_alive = self.parser.should_keep_alive()
        for name, value in self.headers:
            if name == b"content-length" or (name == b"transfer-encoding" and b"chunked" in value.lower()):
                self.delimited = True
        if self.no_body:
            # The parser cannot be told an answer has no body; it would wait for the length the headers
            # announce. The answer ends here, and so does the connection (its parser is out of step now).
            self.complete = True
            self.keep_alive = False
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

    def take(self) -> bytes:
        """The pieces that have arrived, oldest first, joined up to ``_TAKE_UP_TO`` bytes (a bigger piece alone)."""
        body = self.body
        if self.buffered <= _TAKE_UP_TO:  # the common case: all of it
            data = body.popleft() if len(body) == 1 else b"".join(body)
            body.clear()
            self.buffered = 0
        else:
            parts = [body.popleft()]
            size = len(parts[0])
            while body and size + len(body[0]) <= _TAKE_UP_TO:
                size += len(body[0])
                parts.append(body.popleft())
            data = parts[0] if len(parts) == 1 else b"".join(parts)
            self.buffered -= size
        if self.paused and not body and self.transport is not None:
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
                # What has arrived goes on together: under load several chunks wait here, and one write for
                # them all costs the proxy much less than one each.
                yield conn.take()
                # More may have arrived while the consumer was blocked sending that (a slow client): nothing
                # wakes a waiter for bytes already here, and past the high-water mark reading is paused, so
                # look again before waiting.
                continue
            if conn.complete:
                return
            if conn.error is not None:
                reason = str(conn.error) if isinstance(conn.error, _Unsupported) else "the connection closed before the answer was complete"
                raise broken_stream(self._target, reason)
            try:
                await conn.wait(self._timeout)
            except TimeoutError:
                raise broken_stream(self._target, f"nothing arrived for {self._timeout:g} s") from None

    async def read(self, limit: int | None = None) -> bytes:
        return await read_whole(self.chunks(), self._target, limit)

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self._client.check_in(self._key, conn, reuse=conn.reusable() and not conn.body)


Key = tuple[str, str, int]


class H1Client:
    """The pooled client: idle connections per (scheme, host, port), reused newest first, closed after ``idle``
    seconds unused; at most ``max_connections`` in use per upstream at once (a request past that waits for one,
    up to the connect timeout)."""

    def __init__(self, idle: float = _IDLE) -> None:
        self.idle = idle
        self._idle: dict[Key, list[_Connection]] = {}
        self._busy: dict[Key, int] = {}
        self._waiting: dict[Key, collections.deque[asyncio.Future[None]]] = {}
        self._reaper: asyncio.TimerHandle | None = None
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
        target: str, connect_to: str | None = None, max_connections: int | None = None,
    ) -> UpstreamResponse:
        key, host, path = self._split(url)
        lines = [method.encode() + b" " + path + b" HTTP/1.1", b"host: " + host]
        lines += [k.encode("latin-1") + b": " + v.encode("latin-1") for k, v in headers]
        if body or method in ("POST", "PUT", "PATCH"):
            lines.append(b"content-length: " + str(len(body)).encode())
        request = b"\r\n".join(lines) + b"\r\n\r\n" + body
        for attempt in (1, 2):
            await self._slot(key, max_connections, connect_timeout, target, url)
            try:
                # A retry never takes another pooled connection: the upstream may have closed them all (llama-server
                # closes its connection after each stream), and the retry is the last chance the request gets.
                conn, reused = await self._connection(key, url, connect_timeout, target, connect_to, pooled=attempt == 1)
            except BaseException:
                self._free(key)
                raise
            conn._reset()
            conn.no_body = method == "HEAD"
            assert conn.transport is not None
            conn.transport.write(request)
            conn.written_at = time.perf_counter()
            try:
                while not conn.headers_done:
                    if conn.error is not None:
                        raise conn.error
                    await conn.wait(timeout)
            except TimeoutError:
                self.check_in(key, conn, reuse=False)
                raise slow(target, url, timeout, "answer") from None
            except asyncio.CancelledError:
                self.check_in(key, conn, reuse=False)  # the client has gone: the upstream sees the connection drop
                raise
            except _Unsupported as exc:
                self.check_in(key, conn, reuse=False)
                raise unusable(target, url, str(exc)) from None
            except BaseException as exc:
                self.check_in(key, conn, reuse=False)
                if reused and not conn.received_any and attempt == 1:
                    continue  # a pooled connection the upstream had closed; it never saw the request
                raise unreachable(target, url, "it closed the connection without answering"
                                  if isinstance(exc, (_Gone, ConnectionError)) else str(exc) or type(exc).__name__) from None
            return H1Response(conn, self, key, target, timeout)
        raise AssertionError("unreachable")

    async def _slot(self, key: Key, limit: int | None, timeout: float, target: str, url: str) -> None:
        """Wait until fewer than ``limit`` connections to ``key`` are in use, and take one."""
        if limit is not None and self._busy.get(key, 0) >= limit:
            waiter = asyncio.get_running_loop().create_future()
            queue = self._waiting.setdefault(key, collections.deque())
            queue.append(waiter)
            try:
                async with asyncio.timeout(timeout):
                    while self._busy.get(key, 0) >= limit:
                        await waiter
                        waiter = asyncio.get_running_loop().create_future()
                        queue.appendleft(waiter)  # woken but beaten to it: first in line again
            except TimeoutError:
                raise slow(target, url, timeout, f"free one of its {limit} connections in use") from None
            finally:
                if waiter in queue:
                    queue.remove(waiter)
        self._busy[key] = self._busy.get(key, 0) + 1

    def _free(self, key: Key) -> None:
        self._busy[key] -= 1
        queue = self._waiting.get(key)
        while queue:
            waiter = queue.popleft()
            if not waiter.done():
                waiter.set_result(None)
                break

    def check_in(self, key: Key, conn: _Connection, *, reuse: bool) -> None:
        """A connection taken by ``send`` is done with: kept for the next request, or closed."""
        self._free(key)
        if reuse:
            self.release(key, conn)
        else:
            conn._close()

    async def _connection(self, key: Key, url: str, connect_timeout: float, target: str,
                          connect_to: str | None = None, pooled: bool = True) -> tuple[_Connection, bool]:
        idle = self._idle.get(key) if pooled else None
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if not conn.closed and now - conn.idle_since < self.idle:
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

    def release(self, key: Key, conn: _Connection) -> None:
        conn.idle_since = time.monotonic()
        self._idle.setdefault(key, []).append(conn)
        if self._reaper is None:
            self._reaper = asyncio.get_running_loop().call_later(self.idle, self._reap)

    def _reap(self) -> None:
        """Close the connections idle for ``idle`` seconds: a burst leaves none open behind it for long."""
        self._reaper = None
        now = time.monotonic()
        soonest = None
        for key in list(self._idle):
            kept = []
            for conn in self._idle[key]:
                if conn.closed or now - conn.idle_since >= self.idle:
                    conn._close()
                else:
                    kept.append(conn)
                    soonest = min(soonest or conn.idle_since, conn.idle_since)
            if kept:
                self._idle[key] = kept
            else:
                del self._idle[key]
        if soonest is not None:
            self._reaper = asyncio.get_running_loop().call_later(soonest + self.idle - now, self._reap)

    def open_connections(self) -> int:
        """Connections held now, in use or idle."""
        return sum(self._busy.values()) + sum(len(idle) for idle in self._idle.values())

    async def aclose(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            self._reaper = None
        for idle in self._idle.values():
            for conn in idle:
                conn._close()
        self._idle.clear()

