"""``create_app``: the Starlette app built from a config and explicit parts; its lifespan owns the upstream client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from .config import Config
from .context import RequestContext
from .fronts import load_fronts
from .pipeline import Pipeline
from .router import Router
from .targets import build_targets
from .upstream import AiohttpClient, HttpxClient, UpstreamClient


@dataclass
class Services:
    """What lives as long as the app runs; opened and closed by the lifespan."""

    client: UpstreamClient | None = None

    def upstream(self) -> UpstreamClient:
        if self.client is None:
            raise RuntimeError("the app's lifespan has not started: run it under uvicorn or enter its lifespan")
        return self.client


def create_app(config: Config, *, transport: httpx.AsyncBaseTransport | None = None) -> Starlette:
    """The proxy as an ASGI app. ``transport`` replaces the network under the upstream client (tests)."""
    targets = build_targets(config)
    router = Router(targets, config.default_target, config.models)
    services = Services()
    pipeline = Pipeline(router, services.upstream, config.server.max_body, load_fronts())

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        services.client = HttpxClient(transport) if transport is not None else AiohttpClient()
        try:
            yield
        finally:
            await services.client.aclose()
            services.client = None

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    app = Starlette(
        routes=[Route("/health", health, methods=["GET"]), Route("/{path:path}", pipeline)],
        middleware=[Middleware(RequestContext)],
        lifespan=lifespan,
    )
    app.state.config = config
    app.state.router = router
    return app
