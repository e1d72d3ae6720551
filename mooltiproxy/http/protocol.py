"""uvicorn's HTTP protocol with what it lacks: deadlines for a request's headers and body, a cap on
concurrent connections from one address, and the cancellation of a request whose client has gone.

uvicorn gives a client that trickles its headers or body byte by byte all the time it wants, and holds
as many connections from one address as it opens. These are decided here, per TCP connection: a late
client gets a 408, one over the cap a 429, both with the OpenAI error body, and the connection is
closed. When a client disconnects while the proxy works on its request, the request's task is
cancelled at once (the pipeline marks when it can be), so the upstream request is dropped with it;
this costs nothing per request, where a task watching for the disconnect would. That needs uvicorn's
``_start_asgi_task`` (0.45 and later), a private hook: it is looked for, and where it is missing the
protocol says so on the scope and the pipeline watches for the disconnect itself. Each request's cycle writes
through a transport that joins the answer's head to its body (``HeadWithBody``). The limits travel on
the uvicorn config (``ProxyServerConfig``), so worker processes get them too; connections are counted
per server (per worker).
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections import Counter
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ..errors import ProxyError, TooManyRequests, render

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class ProxyServerConfig(uvicorn.Config):
    """uvicorn's config, carrying the proxy's connection limits to the protocol (and to worker processes)."""

    def __init__(self, app: Any, *, header_timeout: float = 10.0, body_timeout: float = 60.0, max_per_address: int = 1000,
                 exempt: tuple[Network, ...] = (), **options: Any) -> None:
        super().__init__(app, http=GuardedProtocol, **options)
        self.header_timeout = header_timeout
        self.body_timeout = body_timeout
        self.max_per_address = max_per_address
        self.exempt = exempt


def refusal(exc: ProxyError) -> bytes:
    """A whole HTTP response for ``exc``, written straight to the socket."""
    status, headers, body = render(exc)
    lines = [f"HTTP/1.1 {status} {'Request Timeout' if status == 408 else 'Too Many Requests'}".encode()]
    lines += [name + b": " + value for name, value in headers]
    lines.append(b"connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def _exempt(host: str, networks: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(ip.version == net.version and ip in net for net in networks)


ARRIVED = "mooltiproxy.arrived"  # scope key: perf_counter() when the request's first byte was parsed
PROTOCOL_CANCELS = "mooltiproxy.protocol_cancels"  # scope key: this protocol cancels the request when its client leaves
CANCELLABLE = "mooltiproxy.cancellable"  # scope key: the app may be cancelled now if its client leaves
CLIENT_GONE = "mooltiproxy.client_gone"  # scope key: set before such a cancellation
PEER = "mooltiproxy.peer"  # scope key: the TCP peer's address, whatever X-Forwarded-For later says the client is

# Where uvicorn starts a request's task; overridden below to keep the task for cancelling it. Private to
# uvicorn (pyproject bounds uvicorn from above for it); without it, requests run as uvicorn starts them.
_HOOK = "_start_asgi_task"
CAN_CANCEL = callable(getattr(HttpToolsProtocol, _HOOK, None))


class GuardedProtocol(HttpToolsProtocol):
    _counted: str | None = None
    _header_timer: asyncio.TimerHandle | None = None
    _body_timer: asyncio.TimerHandle | None = None
    _arrived = 0.0

    @property
    def _open(self) -> Counter[str]:
        """Open connections per address, kept on the server's own state (shared by its connections)."""
        counts: Counter[str] | None = getattr(self.server_state, "mooltiproxy_open", None)
        if counts is None:
            counts = Counter()
            self.server_state.mooltiproxy_open = counts  # type: ignore[attr-defined]
        return counts

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        config = self.config
        host = self.client[0] if self.client else None
        cap = getattr(config, "max_per_address", None)
        if host and cap is not None and not _exempt(host, getattr(config, "exempt", ())):
            self._open[host] += 1
            self._counted = host
            if self._open[host] > cap:
                transport.write(refusal(TooManyRequests(
                    f"This address already holds {cap} open connections to the proxy (server.max_connections_per_ip); "
                    f"close some or reuse them.", code="too_many_connections")))
                transport.close()
                return
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._disarm_body()
        cycle = self.cycle
        scope: dict[str, Any] = cycle.scope if cycle is not None else {}  # type: ignore[assignment]
        if cycle is not None and not cycle.response_complete and scope.get(CANCELLABLE):
            task: asyncio.Task[None] | None = getattr(cycle, "mooltiproxy_task", None)
            if task is not None and not task.done():
                scope[CLIENT_GONE] = True
                task.cancel()
        if self._counted is not None:
            open_ = self._open
            open_[self._counted] -= 1
            if open_[self._counted] <= 0:
                del open_[self._counted]
            self._counted = None
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        self._arrived = time.perf_counter()
        super().on_message_begin()
        if self._header_timer is None:
            self._arm()  # the next request on a kept-alive connection

    def on_headers_complete(self) -> None:
        self._disarm()
        if CAN_CANCEL:
            self.scope[PROTOCOL_CANCELS] = True  # type: ignore[literal-required]
        self.scope[ARRIVED] = self._arrived  # type: ignore[literal-required]
        self.scope[PEER] = self.client[0] if self.client else None  # type: ignore[literal-required]
        before = self.cycle
        super().on_headers_complete()
        if self.cycle is not None and self.cycle is not before:  # not an upgrade: a cycle for this request, its task not yet run
            self.cycle.transport = HeadWithBody(self.transport, self.loop)  # type: ignore[assignment]
        timeout = getattr(self.config, "body_timeout", None)
        if timeout is not None and self._body_timer is None:
            self._body_timer = self.loop.call_later(timeout, self._body_too_slow)

    def on_message_complete(self) -> None:
        self._disarm_body()
        super().on_message_complete()

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        task = self.loop.create_task(cycle.run_asgi(app))
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)
        cycle.mooltiproxy_task = task  # for cancelling it when the client leaves

    def _disarm_body(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _body_too_slow(self) -> None:
        self._body_timer = None
        if not self.transport.is_closing():
            if self.cycle is not None and not self.cycle.response_started:
                timeout = getattr(self.config, "body_timeout", 0)
                self.transport.write(refusal(ProxyError(
                    f"The request body did not arrive within {timeout:g} s (server.body_timeout).",
                    status=408, type="invalid_request_error", code="request_timeout")))
            self.transport.close()

    def _arm(self) -> None:
        timeout = getattr(self.config, "header_timeout", None)
        if timeout is not None:
            self._header_timer = self.loop.call_later(timeout, self._too_slow)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _too_slow(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            if self.cycle is None or self.cycle.response_complete:
                timeout = getattr(self.config, "header_timeout", 0)
                self.transport.write(refusal(ProxyError(
                    f"The request's headers did not arrive within {timeout:g} s (server.header_timeout).",
                    status=408, type="invalid_request_error", code="request_timeout")))
            self.transport.close()


class HeadWithBody:
    """The client's transport as one request's cycle sees it: the answer's head is held until the body's first write.

    uvicorn writes the status line and headers on ``http.response.start`` and the body on ``http.response.body``,
    each as a write of its own: two ``send`` system calls and two TCP segments for an answer sent whole, which the
    client reads in two wake-ups. Held, the head leaves with the body when that comes in the same turn of the event
    loop; otherwise (a stream whose first chunk is still upstream) it leaves at the end of the turn, so a client never
    waits for headers the proxy has. Everything else is the transport's own.
    """

    __slots__ = ("_head", "_loop", "_transport")

    JOIN_UP_TO = 256 * 1024  # a larger body is written after the head, not copied behind it

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._head: bytes | None = b""  # b"": nothing written yet; None: the head is out

    def write(self, data: bytes) -> None:
        head = self._head
        if head is None:
            self._transport.write(data)
        elif not head:
            self._head = data
            self._loop.call_soon(self._release)
        else:
            self._head = None
            if len(data) <= self.JOIN_UP_TO:
                self._transport.write(head + data)
            else:
                self._transport.write(head)
                self._transport.write(data)

    def _release(self) -> None:
        head, self._head = self._head, None
        if head and not self._transport.is_closing():
            self._transport.write(head)

    def close(self) -> None:
        self._release()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)
