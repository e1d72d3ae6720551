"""The upstream client over any httpx transport: the seam tests use with ``httpx.MockTransport``, held to the
same behaviour as the proxy's own client (the same tests run over both)."""

from __future__ import annotations

import socket
import ssl
from collections.abc import AsyncIterator

import httpx

from .client import UpstreamResponse, broken_stream, read_whole, slow, unreachable, unusable


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

    async def read(self, limit: int | None = None) -> bytes:
        return await read_whole(self.chunks(), self._target, limit)

    async def aclose(self) -> None:
        await self._resp.aclose()


class HttpxClient:
    """An httpx client over any httpx transport; the seam tests use with ``httpx.MockTransport``."""

    def __init__(self, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._client = httpx.AsyncClient(transport=transport, follow_redirects=False, trust_env=False)

    async def send(
        self, method: str, url: str, headers: list[tuple[str, str]], body: bytes, *, timeout: float, connect_timeout: float,
        target: str, connect_to: str | None = None, max_connections: int | None = None,
    ) -> UpstreamResponse:
        # (``connect_to`` and ``max_connections`` are not applied: this client is the tests' seam over an httpx transport, which resolves
        # names itself; the proxy's own client, h1.H1Client, connects to the checked address.)
        request = self._client.build_request(
            method, url, headers=headers, content=body or None,
            timeout=httpx.Timeout(timeout, connect=connect_timeout, pool=None),
        )
        for attempt in (1, 2):
            try:
                resp = await self._client.send(request, stream=True)
            except httpx.ConnectTimeout:
                raise slow(target, url, connect_timeout, "accept a connection") from None
            except httpx.TimeoutException:
                raise slow(target, url, timeout, "answer") from None
            except httpx.ConnectError as exc:
                raise unreachable(target, url, _reason(exc)) from None
            except (httpx.ReadError, httpx.RemoteProtocolError) as exc:
                if "SWITCH_UPGRADE" in str(exc):  # h11 refuses a 101 it did not ask for
                    raise unusable(target, url, "it switched to another protocol (HTTP 101), which the proxy does not relay") from None
                if attempt == 1:
                    continue  # a pooled connection the upstream had closed, as the proxy's own client retries it once
                raise unreachable(target, url, "it closed the connection without answering" if _closed(exc) else str(exc)) from None
            except httpx.TransportError as exc:
                raise unreachable(target, url, str(exc) or type(exc).__name__) from None
            if resp.status_code == 101:
                await resp.aclose()
                raise unusable(target, url, "it switched to another protocol (HTTP 101), which the proxy does not relay")
            return _HttpxResponse(resp, target)
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        await self._client.aclose()


def _reason(exc: BaseException) -> str:
    """What a connect error was, in the words the proxy's own client uses (httpx words it its own way)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ConnectionRefusedError):
            return "connection refused"
        if isinstance(seen, socket.gaierror):
            return "its host name does not resolve"
        if isinstance(seen, ssl.SSLError):
            return f"the TLS handshake failed ({seen.reason or seen})"
        seen = seen.__cause__ or seen.__context__
    text = str(exc)
    return "connection refused" if "refused" in text.lower() else text or "connection failed"


def _closed(exc: BaseException) -> bool:
    return "disconnect" in str(exc).lower() or isinstance(exc, httpx.ReadError)
