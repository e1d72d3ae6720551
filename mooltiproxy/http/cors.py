"""CORS for browser clients: preflights answered from ``server.cors_origins``, never sent upstream.

With no origins configured (the default) every preflight is refused, so a web page on another origin
cannot call the proxy from a visitor's browser. ``*`` allows any origin.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import Forbidden

_EXPOSE = b"x-request-id, x-mooltiproxy-overhead-ms, retry-after"
_METHODS = b"GET, POST, DELETE, OPTIONS"


class CORS:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        origins = scope["mooltiproxy"].settings.cors_origins  # they change with a reloaded config
        if not origins and scope["method"] != "OPTIONS":
            await self.app(scope, receive, send)  # nothing to add, and a preflight is all there is to refuse
            return
        origin = requested = None
        for name, value in scope["headers"]:
            if name == b"origin":
                origin = value.decode("latin-1")
            elif name == b"access-control-request-method":
                requested = value
        if origin is None:
            await self.app(scope, receive, send)
            return
        if scope["method"] == "OPTIONS" and requested is not None:
            await self._preflight(scope, origins, origin, send)
            return
        if not _allowed(origins, origin):
            await self.app(scope, receive, send)
            return
        allow = b"*" if "*" in origins else origin.encode("latin-1")

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), (b"access-control-allow-origin", allow),
                                      (b"access-control-expose-headers", _EXPOSE), (b"vary", b"Origin")]
            await send(message)

        await self.app(scope, receive, send_with_cors)

    async def _preflight(self, scope: Scope, origins: frozenset[str], origin: str, send: Send) -> None:
        if not _allowed(origins, origin):
            raise Forbidden(f"Origin {origin} may not call this proxy from a browser; add it to server.cors_origins.",
                            code="cors_origin_not_allowed")
        asked = b""
        for name, value in scope["headers"]:
            if name == b"access-control-request-headers":
                asked = value
        headers = [
            (b"access-control-allow-origin", b"*" if "*" in origins else origin.encode("latin-1")),
            (b"access-control-allow-methods", _METHODS),
            (b"access-control-allow-headers", asked or b"authorization, content-type"),
            (b"access-control-max-age", b"600"),
            (b"vary", b"Origin"),
            (b"content-length", b"0"),
        ]
        await send({"type": "http.response.start", "status": 204, "headers": headers})
        await send({"type": "http.response.body", "body": b""})


def _allowed(origins: frozenset[str], origin: str) -> bool:
    return "*" in origins or origin in origins
