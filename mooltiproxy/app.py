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
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from . import admin, ui
from .bans import BanLedger
from .config import Config
from .context import RequestContext
from .cors import CORS
from .errors import ProxyError, render
from .fronts import load_dialects, load_fronts
from .guard import Guard
from .h1 import H1Client
from .live import Live, build_settings
from .logs import flush_logs
from .metrics import Metrics
from .pipeline import Pipeline
from .recorder import Recorder, make_sink, new_session
from .reviews import Reviews
from .store import Store
from .upstream import HttpxClient, UpstreamClient

log = logging.getLogger("mooltiproxy")


@dataclass
class Services:
    """What lives as long as the app runs; opened and closed by the lifespan."""

    client: UpstreamClient | None = None

    def upstream(self) -> UpstreamClient:
        if self.client is None:
            raise RuntimeError("the app's lifespan has not started: run it under uvicorn or enter its lifespan")
        return self.client


def create_app(config: Config, *, transport: httpx.AsyncBaseTransport | None = None,
               upstream: Callable[[], UpstreamClient] | None = None) -> Starlette:
    """The proxy as an ASGI app. ``transport`` replaces the network under the upstream client (tests);
    ``upstream`` makes another client altogether (the benchmark compares them)."""
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
        if transport is not None:
            services.client = HttpxClient(transport)
        else:
            services.client = upstream() if upstream is not None else H1Client()
        loop = asyncio.get_running_loop()
        watcher = asyncio.ensure_future(live.watch())
        snapshots = asyncio.ensure_future(_every(1.0, metrics.write))
        logs = asyncio.ensure_future(_every(0.2, flush_logs))
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # not the main thread, or no SIGHUP
            loop.add_signal_handler(signal.SIGHUP, live.reload)
        try:
            yield
        finally:
            watcher.cancel()
            snapshots.cancel()
            logs.cancel()
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(signal.SIGHUP)
            await services.client.aclose()
            services.client = None
            if recorder is not None:
                recorder.stop()
            metrics.forget()
            ledger.close()
            flush_logs(wait=True)

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def prometheus(request: Request) -> PlainTextResponse:
        text = metrics.render([("mooltiproxy_bans", len(ledger.bans()))])
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    pages = ui.routes(lambda: live.settings.config, Store(dataset.dir), Reviews.beside(dataset.dir), ledger)
    cookie_auth = ui.cookie_auth(lambda: live.settings.config.auth.master_key)
    app = ProxyApp(
        proxied=RequestContext(CORS(Guard(pipeline, live=live, open_paths=ui.OPEN_PATHS, cookie_auth=cookie_auth), live=live),
                               metrics=metrics),
        routes=[Route("/health", health, methods=["GET"]), Route("/metrics", prometheus, methods=["GET"]), *admin.routes(live), *pages],
        middleware=[Middleware(RequestContext, metrics=metrics), Middleware(CORS, live=live),
                    Middleware(Guard, live=live, open_paths=ui.OPEN_PATHS, cookie_auth=cookie_auth)],
        exception_handlers={HTTPException: _http_error},
        lifespan=lifespan,
    )
    app.state.live = live
    app.state.ledger = ledger
    app.state.recorder = recorder
    app.state.metrics = metrics
    return app


class ProxyApp(Starlette):
    """The Starlette app, with proxied paths taking the short way: the request context, CORS, the guard
    and the pipeline, straight. Starlette's router and its wrappers, which every request and every
    streamed chunk would otherwise pass through, serve the proxy's own pages (health, metrics, admin,
    the review page) and the lifespan."""

    OWN = ("/health", "/metrics", "/admin/", "/ui")

    def __init__(self, *, proxied: ASGIApp, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.proxied = proxied

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not scope["path"].startswith(self.OWN):
            scope["app"] = self
            await self.proxied(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own refusals (a wrong method or path under the proxy's pages) in the OpenAI error shape."""
    assert isinstance(exc, HTTPException)
    allow = (exc.headers or {}).get("Allow", "")
    message = {404: f"There is no {request.url.path} here.",
               405: f"{request.url.path} answers {allow} only, not {request.method}."}.get(exc.status_code, str(exc.detail))
    _, _, body = render(ProxyError(message, status=exc.status_code, type="invalid_request_error"))
    return Response(body, status_code=exc.status_code, media_type="application/json", headers={"Allow": allow} if allow else None)


async def _every(seconds: float, job: Callable[[], None]) -> None:
    while True:
        await asyncio.sleep(seconds)
        job()
