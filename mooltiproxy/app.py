"""``create_app``: the Starlette app built from a config and explicit parts; its lifespan owns the upstream
client and the ban ledger."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from . import admin
from .bans import BanLedger
from .config import Config
from .context import RequestContext
from .cors import CORS
from .errors import ConfigError
from .fronts import load_fronts
from .guard import Guard
from .keys import Keyring
from .pipeline import Pipeline
from .recorder import Recorder, make_sink, new_session
from .router import Router
from .targets import build_targets
from .upstream import AiohttpClient, HttpxClient, UpstreamClient

log = logging.getLogger("mooltiproxy")


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
    auth = config.auth
    if auth.master_key is None:
        raise ConfigError([
            f"auth.master_key_env: the environment variable {auth.master_key_env} is not set, and the proxy does not run "
            f"without its key. Run: export {auth.master_key_env}=$(mooltiproxy keygen) — then give that key to your clients."
        ])
    if len(auth.master_key) < 16:
        log.warning("the master key in %s is only %d characters long; `mooltiproxy keygen` makes a strong one",
                    auth.master_key_env, len(auth.master_key))
    targets = build_targets(config)
    router = Router(targets, config.default_target, config.models)
    keyring = Keyring(auth.master_key, [(k.name, k.key, k.targets) for k in auth.keys.values()])
    ledger = BanLedger(config.dataset.dir / "state.db", max_failures=auth.max_failures, window=auth.window, ban=auth.ban,
                       whitelist=auth.whitelist)
    dataset = config.dataset
    session = dataset.session or new_session()
    sink = make_sink(dataset.sink, dataset.dir, session)
    recorder = Recorder(sink, session, redact=dataset.redact, fsync=dataset.fsync, queue_size=dataset.queue) if sink else None
    services = Services()
    pipeline = Pipeline(router, services.upstream, config.server, load_fronts(), recorder, dataset.record_errors)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        ledger.open()
        if recorder is not None:
            recorder.start()
            log.info("recording exchanges to %s (session %s)", getattr(recorder.sink, "path", dataset.dir), session)
        services.client = HttpxClient(transport) if transport is not None else AiohttpClient()
        try:
            yield
        finally:
            await services.client.aclose()
            services.client = None
            if recorder is not None:
                recorder.stop()
            ledger.close()

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    app = Starlette(
        routes=[Route("/health", health, methods=["GET"]), *admin.routes(ledger), Route("/{path:path}", pipeline)],
        middleware=[
            Middleware(RequestContext),
            Middleware(CORS, origins=config.server.cors_origins),
            Middleware(Guard, keyring=keyring, ledger=ledger, blacklist=auth.blacklist),
        ],
        lifespan=lifespan,
    )
    app.state.config = config
    app.state.router = router
    app.state.ledger = ledger
    app.state.recorder = recorder
    return app
