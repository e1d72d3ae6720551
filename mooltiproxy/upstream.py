"""The pooled HTTP client that talks to targets, the header hygiene around it, and its errors.

One client serves the whole process; the app's lifespan opens and closes it. The default speaks
through aiohttp: at 64 concurrent slow requests it kept the proxy at the direct connection's
throughput where plain httpx 0.28 fell far behind (bench/RESULTS.md). An ``httpx`` transport may be
given instead (``create_app(config, transport=...)``), which is how tests plug in
``httpx.MockTransport``.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterable
from typing import Protocol
from urllib.parse import urlsplit

import aiohttp
import httpx

from .errors import UpstreamError, UpstreamTimeout

RawHeaders = list[tuple[bytes, bytes]]

# Never forwarded upstream: hop-by-hop headers, the client's credentials (the target's own key is
# sent instead), routing headers meant for the proxy, and headers the proxy sets itself.
_REQUEST_DROP = frozenset(
    {
        b"host", b"content-length", b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization",
        b"proxy-connection", b"te", b"trailer", b"trailers", b"transfer-encoding", b"upgrade", b"expect",
        b"authorization", b"x-api-key", b"cookie", b"target", b"accept-encoding", b"forwarded",
        b"x-forwarded-for", b"x-forwarded-host", b"x-forwarded-proto", b"x-real-ip", b"x-request-id",
    }
)
# Never relayed back: hop-by-hop headers and what the proxy's own server writes.
_RESPONSE_DROP = frozenset(
    {
        b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-connection", b"te", b"trailer", b"trailers",
        b"transfer-encoding", b"upgrade", b"server", b"date", b"set-cookie", b"alt-svc",
    }
)


def forward_headers(client_headers: Iterable[tuple[bytes, bytes]], extra: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Headers for the upstream request: the client's, cleaned, then the target's own."""
    out = []
    hop = _connection_tokens(client_headers)
    for name, value in client_headers:
        if name in _REQUEST_DROP or name in hop or name.startswith(b"x-mooltiproxy-"):
            continue
        out.append((name.decode("latin-1"), value.decode("latin-1")))
    out.append(("accept-encoding", "identity"))
    out.extend(extra)
    return out


def response_headers(upstream: RawHeaders, *, keep_length: bool) -> RawHeaders:
    """Headers to relay to the client; ``content-length`` only when the body is relayed unchanged."""
    out = []
    for name, value in upstream:
        if name in _RESPONSE_DROP:
            continue
        if name == b"content-length" and not keep_length:
            continue
        if name == b"x-request-id":
            name = b"x-upstream-request-id"
        out.append((name, value))
    return out


def _connection_tokens(headers: Iterable[tuple[bytes, bytes]]) -> frozenset[bytes]:
    for name, value in headers:
        if name == b"connection":
            return frozenset(t.strip().lower() for t in value.split(b","))
    return frozenset()


def display_url(url: str) -> str:
    """scheme://host:port of ``url``, without credentials or path, for messages and logs."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")


class UpstreamResponse(Protocol):
    status: int
    headers: RawHeaders

    def chunks(self) -> AsyncIterator[bytes]: ...

    async def read(self) -> bytes: ...

    async def aclose(self) -> None:
        """Drop the upstream request, read or not: the upstream sees the connection close."""


class UpstreamClient(Protocol):
    async def send(
        self, method: str, url: str, headers: list[tuple[str, str]], body: bytes, *, timeout: float, connect_timeout: float,
        target: str,
    ) -> UpstreamResponse: ...

    async def aclose(self) -> None: ...


def _unreachable(target: str, url: str, reason: str) -> UpstreamError:
    return UpstreamError(
        f"The upstream of target '{target}' ({display_url(url)}) could not be reached: {reason}. "
        f"Check that it is running and that targets.{target}.url is right."
    )


def _slow(target: str, url: str, timeout: float, phase: str) -> UpstreamTimeout:
    knob = f"targets.{target}.timeout" if phase == "answer" else "server.connect_timeout"
    return UpstreamTimeout(
        f"The upstream of target '{target}' ({display_url(url)}) did not {phase} within {timeout:g} s. "
        f"It may be overloaded; raise {knob} if it needs longer."
    )


def broken_stream(target: str, reason: str) -> UpstreamError:
    return UpstreamError(f"The upstream of target '{target}' broke off its answer: {reason}.", code="upstream_stream_broken")


# ----------------------------------------------------------------------------------------- aiohttp


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
    """The production client: one aiohttp session with an unbounded connection pool."""

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
        target: str,
    ) -> UpstreamResponse:
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
                    raise _unreachable(target, url, "it closed the connection without answering") from None
            except aiohttp.ConnectionTimeoutError:
                raise _slow(target, url, connect_timeout, "accept a connection") from None
            except TimeoutError:
                raise _slow(target, url, timeout, "answer") from None
            except aiohttp.ClientError as exc:
                raise _unreachable(target, url, _reason(exc)) from None
            except OSError as exc:
                raise _unreachable(target, url, exc.strerror or str(exc)) from None
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        await self._session.close()


# ------------------------------------------------------------------------------------------- httpx


class _HttpxResponse:
    __slots__ = ("_resp", "_target", "headers", "status")

    def __init__(self, resp: httpx.Response, target: str) -> None:
        self.status = resp.status_code
        self.headers = [(k.lower(), v) for k, v in resp.headers.raw]
        self._resp = resp
        self._target = target

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            if self._resp.is_stream_consumed:  # a response built from bytes (MockTransport) is read already
                yield self._resp.content
                return
            async for chunk in self._resp.aiter_raw():
                yield chunk
        except httpx.TimeoutException:
            raise broken_stream(self._target, "it stopped sending") from None
        except httpx.TransportError as exc:
            raise broken_stream(self._target, str(exc) or type(exc).__name__) from None
        finally:
            await self._resp.aclose()

    async def read(self) -> bytes:
        return b"".join([c async for c in self.chunks()])

    async def aclose(self) -> None:
        await self._resp.aclose()


class HttpxClient:
    """An httpx client over any httpx transport; the seam tests use with ``httpx.MockTransport``."""

    def __init__(self, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._client = httpx.AsyncClient(transport=transport, follow_redirects=False, trust_env=False)

    async def send(
        self, method: str, url: str, headers: list[tuple[str, str]], body: bytes, *, timeout: float, connect_timeout: float,
        target: str,
    ) -> UpstreamResponse:
        request = self._client.build_request(
            method, url, headers=headers, content=body or None,
            timeout=httpx.Timeout(timeout, connect=connect_timeout, pool=None),
        )
        try:
            resp = await self._client.send(request, stream=True)
        except httpx.ConnectTimeout:
            raise _slow(target, url, connect_timeout, "accept a connection") from None
        except httpx.TimeoutException:
            raise _slow(target, url, timeout, "answer") from None
        except httpx.ConnectError as exc:
            reason = str(exc) or "connection failed"
            if "refused" in reason.lower():
                reason = "connection refused"
            raise _unreachable(target, url, reason) from None
        except httpx.TransportError as exc:
            raise _unreachable(target, url, str(exc) or type(exc).__name__) from None
        return _HttpxResponse(resp, target)

    async def aclose(self) -> None:
        await self._client.aclose()
