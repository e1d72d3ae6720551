"""aiohttp as the proxy's upstream client, kept for the benchmark's comparison of clients (RESULTS.md)."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import aiohttp

from mooltiproxy.upstream.client import UpstreamResponse, broken_stream, slow, unreachable


class _AiohttpResponse:
    __slots__ = ("_read_timeout", "_resp", "_target", "headers", "status")

    def __init__(self, resp: aiohttp.ClientResponse, target: str, read_timeout: float) -> None:
        self.status = resp.status
        self.headers = [(k.lower(), v) for k, v in resp.raw_headers]
        self._resp = resp
        self._target = target
        self._read_timeout = read_timeout

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._resp.content.iter_any():
                yield chunk
        except TimeoutError:
            raise broken_stream(self._target, f"nothing arrived for {self._read_timeout:g} s") from None
        except aiohttp.ClientError as exc:
            raise broken_stream(self._target, _reason(exc)) from None

    async def read(self) -> bytes:
        try:
            return await self._resp.read()
        except TimeoutError:
            raise broken_stream(self._target, f"nothing arrived for {self._read_timeout:g} s") from None
        except aiohttp.ClientError as exc:
            raise broken_stream(self._target, _reason(exc)) from None

    async def aclose(self) -> None:
        self._resp.close()


def _reason(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return "its host name does not resolve"
    if isinstance(exc, aiohttp.ClientConnectorError):
        err = exc.os_error
        if isinstance(err, ConnectionRefusedError):
            return "connection refused"
        if isinstance(err, socket.gaierror):
            return "its host name does not resolve"
        return err.strerror or str(err) or type(err).__name__
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "it closed the connection without answering"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "the connection closed before the answer was complete"
    return str(exc) or type(exc).__name__


class AiohttpClient:
    """One aiohttp session with an unbounded connection pool."""

    def __init__(self) -> None:
        # Unbounded: the proxy must not cap concurrency below what its clients ask for (aiohttp's
        # default of 100 connections made 256 concurrent streams queue behind each other).
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, limit_per_host=0, ttl_dns_cache=60, keepalive_timeout=30),
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Accept", "Content-Type"),
            timeout=aiohttp.ClientTimeout(total=None),
        )
        self._timeouts: dict[tuple[float, float], aiohttp.ClientTimeout] = {}

    async def send(
        self, method: str, url: str, headers: list[tuple[str, str]], body: bytes, *, timeout: float, connect_timeout: float,
        target: str, connect_to: str | None = None, max_connections: int | None = None,
    ) -> UpstreamResponse:
        # (``connect_to``, the checked address of a dynamic host, is not applied: this client only serves the
        # benchmark's comparison, which routes to configured targets.)
        t = self._timeouts.get((timeout, connect_timeout))
        if t is None:
            t = self._timeouts[(timeout, connect_timeout)] = aiohttp.ClientTimeout(
                total=None, connect=connect_timeout, sock_read=timeout
            )
        for attempt in (1, 2):
            try:
                resp = await self._session.request(
                    method, url, headers=headers, data=body or None, allow_redirects=False, timeout=t
                )
                return _AiohttpResponse(resp, target, timeout)
            except aiohttp.ServerDisconnectedError:
                # A pooled connection the upstream had already closed: it never saw the request.
                if attempt == 2:
                    raise unreachable(target, url, "it closed the connection without answering") from None
            except aiohttp.ConnectionTimeoutError:
                raise slow(target, url, connect_timeout, "accept a connection") from None
            except TimeoutError:
                raise slow(target, url, timeout, "answer") from None
            except aiohttp.ClientError as exc:
                raise unreachable(target, url, _reason(exc)) from None
            except OSError as exc:
                raise unreachable(target, url, exc.strerror or str(exc)) from None
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        await self._session.close()


