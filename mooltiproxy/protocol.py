"""uvicorn's HTTP protocol with the limits it lacks: a deadline for a request's headers, and a cap on
concurrent connections from one address.

uvicorn gives a client that trickles its headers byte by byte all the time it wants, and holds as many
connections from one address as it opens. Both are decided here, per TCP connection, before any ASGI
code runs: a late client gets a 408, one over the cap a 429, both with the OpenAI error body, and the
connection is closed.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections import Counter
from collections.abc import Iterable

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .errors import ProxyError, TooManyRequests, render

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _refusal(exc: ProxyError) -> bytes:
    status, headers, body = render(exc)
    lines = [f"HTTP/1.1 {status} {'Request Timeout' if status == 408 else 'Too Many Requests'}".encode()]
    lines += [name + b": " + value for name, value in headers]
    lines.append(b"connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def guarded_protocol(*, header_timeout: float, max_per_address: int, exempt: Iterable[Network] = ()) -> type[HttpToolsProtocol]:
    """A protocol class for ``uvicorn.Config(http=...)`` enforcing these limits; ``exempt`` (the trusted
    reverse proxies, whose connections carry many clients) is not capped."""
    open_by_address: Counter[str] = Counter()
    exempt = tuple(exempt)
    late = _refusal(ProxyError(
        f"The request's headers did not arrive within {header_timeout:g} s (server.header_timeout).",
        status=408, type="invalid_request_error", code="request_timeout",
    ))
    crowded = _refusal(TooManyRequests(
        f"This address already holds {max_per_address} open connections to the proxy (server.max_connections_per_ip); "
        f"close some or reuse them.",
        code="too_many_connections",
    ))

    def is_exempt(host: str) -> bool:
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(ip.version == net.version and ip in net for net in exempt)

    class GuardedProtocol(HttpToolsProtocol):
        _counted: str | None = None
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            host = self.client[0] if self.client else None
            if host and not is_exempt(host):
                open_by_address[host] += 1
                self._counted = host
                if open_by_address[host] > max_per_address:
                    transport.write(crowded)
                    transport.close()
                    return
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            if self._counted is not None:
                open_by_address[self._counted] -= 1
                if open_by_address[self._counted] <= 0:
                    del open_by_address[self._counted]
                self._counted = None
            super().connection_lost(exc)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            if self._header_timer is None:
                self._arm()  # the next request on a kept-alive connection

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def _arm(self) -> None:
            self._header_timer = self.loop.call_later(header_timeout, self._too_slow)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _too_slow(self) -> None:
            self._header_timer = None
            if not self.transport.is_closing():
                if self.cycle is None or self.cycle.response_complete:
                    self.transport.write(late)
                self.transport.close()

    return GuardedProtocol
