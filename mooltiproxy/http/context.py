"""Per-request context: the request id, timing, the access-log line, and where errors become answers.

``RequestContext`` is the outermost middleware. Anything below it raises a ``ProxyError``; this is the
one place that turns it into an OpenAI error body (or, for a bug, into a 500 with the traceback in the
log). It also writes exactly one access-log line per request, which never holds a secret: no headers,
no query string, no body.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import ProxyError, render
from ..guard.keys import MASTER
from ..ops.metrics import Metrics

if TYPE_CHECKING:
    from ..routing.fronts import FrontRoute
    from ..state.settings import Live, Settings

access_log = logging.getLogger("mooltiproxy.access")
log = logging.getLogger("mooltiproxy")

_SAFE_ID = re.compile(rb"[A-Za-z0-9._:-]{1,64}")


class RequestInfo:
    """What the layers below learn about a request, for the access log and the response headers."""

    __slots__ = ("client", "client_key", "id", "key_name", "key_targets", "route", "settings", "start", "started", "status", "target",
                 "upstream_ms")

    def __init__(self, request_id: str, start: float, client: str, settings: Settings) -> None:
        self.id = request_id
        self.start = start
        self.client = client
        # The config this request runs on, read once as it arrives: the guard, the router and the pipeline all see
        # this one, even if a reload swaps in another while the request runs.
        self.settings = settings
        self.key_name: str | None = None
        self.key_targets: frozenset[str] | None = None  # None: the key may use every target
        self.client_key: str | None = None  # auth.mode passthrough: the client's own key, for targets that forward it
        self.target: str | None = None
        self.route: str | None = None  # the route's inbound path, once one is chosen
        self.status = 0
        self.upstream_ms: float | None = None
        self.started = False

    @property
    def administrator(self) -> bool:
        """Whether the request came with the master key: its errors may say how the proxy is set up (upstream
        addresses, config keys); other keys are told only what concerns them."""
        return self.key_name == MASTER


_ids = itertools.count()
_PROCESS = os.urandom(6).hex()


def new_request_id() -> str:
    """Unique across processes and runs (a random part per process, a counter) without a system call per request."""
    return f"{_PROCESS}{next(_ids):012x}"


class RequestContext:
    def __init__(self, app: ASGIApp, live: Live, metrics: Metrics | None = None) -> None:
        self.app = app
        self.live = live
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = None
        for name, value in scope["headers"]:
            if name == b"x-request-id" and _SAFE_ID.fullmatch(value):
                request_id = value.decode()
                break
        # The clock starts when the server parsed the request's first byte, as the client's clock does.
        info = RequestInfo(request_id or new_request_id(), scope.get("mooltiproxy.arrived") or time.perf_counter(), _client(scope),
                           self.live.settings)
        scope["mooltiproxy"] = info
        rid = info.id.encode()

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                info.started = True
                info.status = message["status"]
                headers = message.get("headers")
                message["headers"] = [*headers, (b"x-request-id", rid)] if headers else [(b"x-request-id", rid)]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except ProxyError as exc:
            await self._answer_error(scope, info, exc, send)
        except Exception as exc:
            log.exception("request %s failed", info.id)
            await self._answer_error(
                scope, info,
                ProxyError(f"The proxy failed on this request ({type(exc).__name__}); its log has the details under request id {info.id}."),
                send,
            )
        finally:
            total = (time.perf_counter() - info.start) * 1000
            if self.metrics is not None:
                self.metrics.request(info.target, info.route, info.status, info.upstream_ms, total)
            _access(scope, info, total)

    async def _answer_error(self, scope: Scope, info: RequestInfo, exc: ProxyError, send: Send) -> None:
        if info.started:
            # Too late for a status line; the layer that started the answer has ended it.
            log.warning("request %s: %s (after the answer had started)", info.id, exc.full_message())
            return
        if exc.detail and not info.administrator:
            log.warning("request %s: %s", info.id, exc.full_message())  # what the client was not told
        front = _front_of(info.settings.fronts, scope)
        status, headers, body = render(exc, info.id, full=info.administrator, shape=front.error_body if front is not None else None)
        info.status = status
        info.started = True
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _front_of(fronts: Mapping[str, FrontRoute], scope: Scope) -> FrontRoute | None:
    """The API a request was asked in, when not OpenAI's: its path is a front's (Anthropic's /v1/messages, TGI's
    /generate…) or under one (/v1/messages/count_tokens). Its errors are answered in that API's shape, whatever refused
    it. TGI's compat route "/" counts for a POST only: a browser's GET / is nobody's API."""
    path = scope["path"]
    if path == "/":
        return fronts.get(path) if scope["method"] == "POST" else None
    front = fronts.get(path)
    if front is None:
        for base, candidate in fronts.items():
            if base != "/" and path.startswith(base + "/"):
                return candidate
    return front


def _client(scope: Scope) -> str:
    client = scope.get("client")
    return client[0] if client else "-"


def _access(scope: Scope, info: RequestInfo, total: float) -> None:
    if not access_log.isEnabledFor(logging.INFO):
        return
    upstream = f"{info.upstream_ms:.1f}" if info.upstream_ms is not None else "-"
    fields = {"client": info.client, "method": scope["method"], "path": scope["path"], "status": info.status, "target": info.target,
              "key": info.key_name, "upstream_ms": info.upstream_ms, "total_ms": round(total, 3), "request_id": info.id}
    # A record made and handled directly: ``Logger.info`` would also walk the stack for the caller's file and line,
    # which no access line shows (a tenth of the line's cost).
    access_log.handle(access_log.makeRecord(
        access_log.name, logging.INFO, __file__, 0, "%s %s %s status=%d target=%s key=%s upstream_ms=%s total_ms=%.1f id=%s",
        (_printable(info.client), scope["method"], _printable(scope["path"]), info.status, info.target or "-", info.key_name or "-",
         upstream, total, info.id), None, "_access", {"fields": fields},
    ))


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\\]")


def _printable(text: str) -> str:
    """``text`` with control characters (and backslashes) escaped: a path decoded from ``%0a`` must not start a
    forged line of its own in a text log. (The JSON log escapes them anyway.)"""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text) if _CONTROL.search(text) else text
