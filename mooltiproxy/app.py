"""``create_app``: the proxy as an ASGI app, built from a config and explicit parts.

One chain of pure ASGI middleware serves every request: the request context (id, settings snapshot,
access line, error rendering), CORS and the guard, then a fork: proxied paths go to the pipeline straight,
the proxy's own pages (health, metrics, admin, the review page) and the lifespan to a Starlette app. The
lifespan opens and closes the ``Runtime``: what lives as long as the app does.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import httpx
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from .config.model import Config
from .dataset.places import open_reviews
from .dataset.store import Store
from .errors import Forbidden, ProxyError, render
from .guard.door import Guard
from .guard.keys import MASTER
from .http.context import RequestContext
from .http.cors import CORS
from .ops import admin
from .ops.runtime import Runtime
from .proxy.pipeline import Pipeline
from .proxy.stored import PATH as RESPONSES
from .proxy.stored import StoredResponses
from .review import pages
from .review.sessions import Sessions
from .state.settings import build_settings
from .upstream.client import UpstreamClient
from .upstream.h1 import H1Client
from .upstream.httpx_seam import HttpxClient

log = logging.getLogger("mooltiproxy")

OWN_PATHS = ("/health", "/metrics", "/admin/", "/ui")  # the proxy's own pages; every other path is proxied


class ProxyApp:
    """The app ``create_app`` returns: the ASGI chain, and the runtime it serves with."""

    def __init__(self, chain: ASGIApp, runtime: Runtime) -> None:
        self.chain = chain
        self.runtime = runtime

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.chain(scope, receive, send)


class Fork:
    """Below the shared middleware: proxied paths to the pipeline, without Starlette's router and wrappers (which
    every request and every streamed chunk would otherwise pass through), ``/v1/responses`` through its stored
    responses first, the rest to the pages."""

    def __init__(self, proxied: ASGIApp, own: ASGIApp, responses: ASGIApp) -> None:
        self.proxied = proxied
        self.own = own
        self.responses = responses

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        if scope["type"] == "http" and not scope["path"].startswith(OWN_PATHS):
            # The pipeline's coroutine handed back rather than awaited in a frame of the fork's own: every frame a
            # request passes through costs it again. (The outermost app stays a coroutine function: servers look.)
            if scope["path"].startswith(RESPONSES):
                return self.responses(scope, receive, send)
            return self.proxied(scope, receive, send)
        return self.own(scope, receive, send)


def create_app(config: Config, *, transport: httpx.AsyncBaseTransport | None = None,
               upstream: Callable[[], UpstreamClient] | None = None, clock: Callable[[], float] = time.time) -> ProxyApp:
    """The proxy as an ASGI app. ``transport`` replaces the network under the upstream client (tests);
    ``upstream`` makes another client altogether (the benchmark compares them); ``clock`` is the wall clock
    that bans, rate limits and review-page sessions run on (tests move it forward instead of waiting)."""
    settings = build_settings(config)
    auth = config.auth
    if auth.master_key is not None and len(auth.master_key) < 16:
        log.warning("the master key in %s is only %d characters long; `mooltiproxy keygen` makes a strong one",
                    auth.master_key_env, len(auth.master_key))

    def make_client() -> UpstreamClient:
        if transport is not None:
            return HttpxClient(transport)
        return upstream() if upstream is not None else H1Client()

    runtime = Runtime(config, settings, client=make_client, clock=clock)
    live, dataset = runtime.live, config.dataset
    pipeline = Pipeline(runtime.upstream, config.server, recorder=runtime.recorder, record_errors=dataset.record_errors,
                        cooldowns=runtime.cooldowns, metrics=runtime.metrics, max_text=dataset.max_text, spooler=runtime.spooler)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await runtime.start()
        try:
            yield
        finally:
            await runtime.stop()

    state = runtime.state

    async def healthz(request: Request) -> JSONResponse:
        if state is None:
            return JSONResponse({"status": "ok"})
        # A load balancer takes an instance that must not serve out of its rotation.
        refusing = state.required and not state.up
        return JSONResponse({"status": "unavailable" if refusing else "ok", "state": "up" if state.up else "down"},
                            status_code=503 if refusing else 200)

    async def prometheus(request: Request) -> PlainTextResponse:
        if request.scope["mooltiproxy"].key_name != MASTER:
            # Every target, every route and what other keys do: for whoever runs the proxy, not for each key.
            raise Forbidden("/metrics needs the proxy's master key.", code="admin_only")
        extra = [("mooltiproxy_bans", len(runtime.ledger.bans()))] + (
            [("mooltiproxy_state_up", int(state.up))] if state is not None else [])
        return PlainTextResponse(runtime.metrics.render(extra), media_type="text/plain; version=0.0.4; charset=utf-8")

    dsn = dataset.dsn if dataset.sink == "postgres" else None
    sessions = Sessions(lambda: live.settings.config.auth.master_key, clock=clock, ended=runtime.ended)
    own = Starlette(
        routes=[Route("/health", healthz, methods=["GET"]), Route("/metrics", prometheus, methods=["GET"]), *admin.routes(live),
                *pages.routes(sessions, Store(dataset.dir, dsn=dsn), open_reviews(dataset.dir, dsn), runtime.ledger)],
        exception_handlers={HTTPException: _http_error, ProxyError: _proxy_error},
        lifespan=lifespan,
    )
    responses = StoredResponses(pipeline, runtime.responses, config.server.max_body,
                                enabled=lambda: live.settings.config.responses.store)
    guard = Guard(Fork(pipeline, own, responses), live=live, open_paths=pages.OPEN_PATHS, cookie_auth=pages.cookie_auth(sessions))
    return ProxyApp(RequestContext(CORS(guard), live=live, metrics=runtime.metrics), runtime)


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own refusals (a wrong method or path under the proxy's pages) in the OpenAI error shape."""
    assert isinstance(exc, HTTPException)
    allow = (exc.headers or {}).get("Allow", "")
    message = {404: f"There is no {request.url.path} here.",
               405: f"{request.url.path} answers {allow} only, not {request.method}."}.get(exc.status_code, str(exc.detail))
    _, _, body = render(ProxyError(message, status=exc.status_code, type="invalid_request_error"))
    return Response(body, status_code=exc.status_code, media_type="application/json", headers={"Allow": allow} if allow else None)


async def _proxy_error(request: Request, exc: Exception) -> Response:
    """A page's ``ProxyError`` (the admin endpoints', /metrics'), rendered as the request context renders them."""
    assert isinstance(exc, ProxyError)
    status, headers, body = render(exc, request.scope["mooltiproxy"].id, full=request.scope["mooltiproxy"].administrator)
    return Response(body, status_code=status, headers={k.decode(): v.decode() for k, v in headers if k != b"content-length"})
