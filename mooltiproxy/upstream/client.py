"""What every upstream client offers (``UpstreamClient``, one abstract ``send``), the header hygiene around
it, and its errors.

One client serves the whole process; the app's lifespan opens and closes it. The proxy's own HTTP/1.1
client (``h1.py``) is the default: it cost the proxy a fraction of what aiohttp did, and plain httpx 0.28
fell far behind both at 64 concurrent slow requests (bench/RESULTS.md). An httpx transport may be given
instead (``create_app(config, transport=...)``, ``httpx_seam.py``), which is how tests plug in
``httpx.MockTransport``; the same tests run over both clients.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from typing import Any, Protocol
from urllib.parse import urlsplit

from ..errors import UpstreamError, UpstreamTimeout

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


class RawHeaderView(Mapping[str, str]):
    """An upstream's raw headers as a read-only mapping of lower-case names, decoded only when asked
    (mappers look at one or two of them, if any)."""

    __slots__ = ("_raw",)

    def __init__(self, raw: RawHeaders) -> None:
        self._raw = raw

    def _find(self, name: str) -> str | None:
        key = name.lower().encode("latin-1")
        for k, v in self._raw:
            if k == key:
                return v.decode("latin-1")
        return None

    def __getitem__(self, name: str) -> str:
        value = self._find(name)
        if value is None:
            raise KeyError(name)
        return value

    def get(self, name: str, default: Any = None) -> Any:
        """Mapping's ``get`` without its raise and catch of ``KeyError`` for a header not sent (the usual case)."""
        value = self._find(name)
        return default if value is None else value

    def __iter__(self) -> Iterator[str]:
        return (k.decode("latin-1") for k, _ in self._raw)

    def __len__(self) -> int:
        return len(self._raw)


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

    async def read(self, limit: int | None = None) -> bytes:
        """The whole body; ``UpstreamError`` (a 502) past ``limit`` bytes."""

    async def aclose(self) -> None:
        """Drop the upstream request, read or not: the upstream sees the connection close."""


class UpstreamClient(Protocol):
    async def send(
        self, method: str, url: str, headers: list[tuple[str, str]], body: bytes, *, timeout: float, connect_timeout: float,
        target: str, connect_to: str | None = None, max_connections: int | None = None,
    ) -> UpstreamResponse:
        """``connect_to``: an address to connect to in place of the URL's host name (which stays the Host and the
        TLS server name), so that the address the proxy checked is the one it reaches. ``max_connections``: how many
        requests may be in flight to this URL's host at once; more wait for one to end."""

    async def aclose(self) -> None: ...


async def read_whole(chunks: AsyncIterator[bytes], target: str, limit: int | None) -> bytes:
    """Every chunk of an answer joined, up to ``limit`` bytes: the proxy holds whole only the answers it must
    read (to translate them, or an error to pass on), and never without a bound."""
    parts: list[bytes] = []
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if limit is not None and size > limit:
            raise UpstreamError(f"The upstream of target '{target}' answered with more than {limit} bytes, more than the proxy "
                                f"reads whole to translate or pass on an answer.", code="upstream_answer_too_large",
                                detail="The limit is server.max_answer for answers, 1 MiB for error bodies.")
        parts.append(chunk)
    return b"".join(parts)


def unusable(target: str, url: str, reason: str) -> UpstreamError:
    return UpstreamError(f"The upstream of target '{target}' answered in a way the proxy does not relay: {reason}.",
                         code="upstream_bad_answer", detail=f"It is at {display_url(url)}.")


def unreachable(target: str, url: str, reason: str) -> UpstreamError:
    return UpstreamError(
        f"The upstream of target '{target}' could not be reached: {reason}.",
        detail=f"It is at {display_url(url)}: check that it is running and that targets.{target}.url is right.",
    )


def slow(target: str, url: str, timeout: float, phase: str) -> UpstreamTimeout:
    knob = f"targets.{target}.timeout" if phase == "answer" else "server.connect_timeout"
    return UpstreamTimeout(
        f"The upstream of target '{target}' did not {phase} within {timeout:g} s; it may be overloaded.",
        detail=f"It is at {display_url(url)}; raise {knob} if it needs longer.",
    )


def broken_stream(target: str, reason: str) -> UpstreamError:
    return UpstreamError(f"The upstream of target '{target}' broke off its answer: {reason}.", code="upstream_stream_broken")
