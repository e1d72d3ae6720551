"""``create_app``: the Starlette app built from a config and explicit parts; its lifespan owns the upstream
client, the ban ledger, the recorder and the config watcher (a changed file or SIGHUP reloads it)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from . import admin, ui
from .bans import BanLedger
from .config import Config
from .context import RequestContext
from .cors import CORS
from .fronts import load_dialects, load_fronts
from .guard import Guard
from .live import Live, build_settings
from .metrics import Metrics
from .pipeline import Pipeline
from .recorder import Recorder, make_sink, new_session
from .reviews import Reviews
from .store import Store
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
    settings = build_settings(config)
    auth = config.auth
    assert auth.master_key is not None
    if len(auth.master_key) < 16:
        log.warning("the master key in %s is only %d characters long; `mooltiproxy keygen` makes a strong one",
                    auth.master_key_env, len(auth.master_key))
    ledger = BanLedger(config.dataset.dir / "state.db", max_failures=auth.max_failures, window=auth.window, ban=auth.ban,
                       whitelist=auth.whitelist)
    live = Live(settings, ledger)
    dataset = config.dataset
    session = dataset.session or new_session()
    sink = make_sink(dataset.sink, dataset.dir, session)
    recorder = None
    if sink is not None:
        recorder = Recorder(sink, session, redact=dataset.redact, fsync=dataset.fsync, queue_size=dataset.queue,
                            dialects=load_dialects())
    metrics = Metrics(dataset.dir / "metrics")
    if recorder is not None:
        metrics.gauges["mooltiproxy_dataset_records_written_total"] = lambda: recorder.written
        metrics.gauges["mooltiproxy_dataset_records_lost_total"] = lambda: recorder.lost
    services = Services()
    pipeline = Pipeline(live, services.upstream, config.server, load_fronts(), recorder, dataset.record_errors, metrics=metrics)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        ledger.open()
        if recorder is not None:
            recorder.start()
            log.info("recording exchanges to %s (session %s)", getattr(recorder.sink, "path", dataset.dir), session)
        services.client = HttpxClient(transport) if transport is not None else AiohttpClient()
        loop = asyncio.get_running_loop()
        watcher = asyncio.ensure_future(live.watch())
        snapshots = asyncio.ensure_future(_every(1.0, metrics.write))
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # not the main thread, or no SIGHUP
            loop.add_signal_handler(signal.SIGHUP, live.reload)
        try:
            yield
        finally:
            watcher.cancel()
            snapshots.cancel()
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(signal.SIGHUP)
            await services.client.aclose()
            services.client = None
            if recorder is not None:
                recorder.stop()
            metrics.forget()
            ledger.close()

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def prometheus(request: Request) -> PlainTextResponse:
        text = metrics.render([("mooltiproxy_bans", len(ledger.bans()))])
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    pages = ui.routes(lambda: live.settings.config, Store(dataset.dir), Reviews.beside(dataset.dir), ledger)
    app = Starlette(
        routes=[Route("/health", health, methods=["GET"]), Route("/metrics", prometheus, methods=["GET"]), *admin.routes(live), *pages,
                Route("/{path:path}", pipeline)],
        middleware=[
            Middleware(RequestContext, metrics=metrics),
            Middleware(CORS, live=live),
            Middleware(Guard, live=live, open_paths=ui.OPEN_PATHS,
                       cookie_auth=ui.cookie_auth(lambda: live.settings.config.auth.master_key)),
        ],
        lifespan=lifespan,
    )
    app.state.live = live
    app.state.ledger = ledger
    app.state.recorder = recorder
    app.state.metrics = metrics
    return app


async def _every(seconds: float, job: Callable[[], None]) -> None:
    while True:
        await asyncio.sleep(seconds)
        job()
