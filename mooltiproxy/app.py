"""``create_app``: the Starlette app built from a config and explicit parts; its lifespan owns the upstream
client, the ban ledger, the recorder and the config watcher (a changed file or SIGHUP reloads it)."""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time
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

from .backends.fronts import load_dialects, load_fronts
from .config.load import Config
from .dataset.recorder import Recorder, make_sink, new_session
from .dataset.reviews import open_reviews
from .dataset.store import Store
from .errors import Forbidden, ProxyError, render
from .guard.bans import BanLedger
from .guard.door import Guard
from .guard.keys import MASTER
from .guard.limits import RateLimits
from .http.context import RequestContext
from .http.cors import CORS
from .ops import admin
from .ops.logs import flush_logs
from .ops.metrics import Metrics
from .proxy.cooldowns import Health
from .proxy.pipeline import Pipeline
from .review import pages as ui
from .review.sessions import EndedSessions, Sessions
from .state.settings import Live, build_settings
from .upstream.client import HttpxClient, UpstreamClient
from .upstream.h1 import H1Client

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
               upstream: Callable[[], UpstreamClient] | None = None, clock: Callable[[], float] = time.time) -> Starlette:
    """The proxy as an ASGI app. ``transport`` replaces the network under the upstream client (tests);
    ``upstream`` makes another client altogether (the benchmark compares them); ``clock`` is the wall clock
    that bans, rate limits and review-page sessions run on (tests move it forward instead of waiting)."""
    settings = build_settings(config)
    auth = config.auth
    if auth.master_key is not None and len(auth.master_key) < 16:
        log.warning("the master key in %s is only %d characters long; `mooltiproxy keygen` makes a strong one",
                    auth.master_key_env, len(auth.master_key))
    state = None
    if config.state is not None:
        from .state.redis import RedisState  # only with a state: the redis package is an extra

        state = RedisState(config.state, required=config.state_required)
    # With a shared state, Redis holds bans and counts; without, SQLite beside the dataset (shared by workers).
    local = None if state is not None else config.dataset.dir / "state.db"
    ledger = BanLedger(local, max_failures=auth.max_failures, window=auth.window, ban=auth.ban, whitelist=auth.whitelist,
                       clock=clock)
    limits = RateLimits(local, clock=clock)
    ended = EndedSessions(local, clock=clock)
    health = Health()
    ledger.shared = limits.shared = ended.shared = state
    health.shared = state
    live = Live(settings, ledger, limits)
    live.state = state
    dataset = config.dataset
    session = dataset.session or new_session()
    sink = make_sink(dataset.sink, dataset.dir, session, dataset.dsn)
    recorder = None
    if sink is not None:
        recorder = Recorder(sink, session, redact=dataset.redact, fsync=dataset.fsync, queue_size=dataset.queue,
                            dialects=load_dialects())
    metrics = Metrics(dataset.dir / "metrics")
    if recorder is not None:
        metrics.gauges["mooltiproxy_dataset_records_written_total"] = lambda: recorder.written
        metrics.gauges["mooltiproxy_dataset_records_lost_total"] = lambda: recorder.lost
        metrics.gauges["mooltiproxy_dataset_records_spilled_total"] = lambda: recorder.spilled
        metrics.gauges["mooltiproxy_dataset_records_altered_total"] = lambda: recorder.altered
        metrics.gauges["mooltiproxy_dataset_records_held"] = lambda: recorder.held
    services = Services()
    pipeline = Pipeline(live, services.upstream, config.server, load_fronts(), recorder, dataset.record_errors, metrics=metrics,
                        health=health, max_text=dataset.max_text)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        ledger.open()
        limits.open()
        ended.open()
        if state is not None:
            await state.start(ledger, health, lambda: live.reload(tell_others=False), ended)
            await state.wait_up(2.0)  # so the first requests are counted in Redis, when it is there
        if recorder is not None:
            recorder.start()
            log.info("recording exchanges to %s (session %s)", recorder.sink.where, session)
        if transport is not None:
            services.client = HttpxClient(transport)
        else:
            services.client = upstream() if upstream is not None else H1Client()
        loop = asyncio.get_running_loop()
        watcher = asyncio.ensure_future(live.watch())
        snapshots = asyncio.ensure_future(_every(1.0, metrics.write))
        logs = asyncio.ensure_future(_every(0.2, flush_logs))
        unwatch = _reload_on_sighup(loop, live.reload)
        try:
            yield
        finally:
            watcher.cancel()
            snapshots.cancel()
            logs.cancel()
            unwatch()
            await services.client.aclose()
            services.client = None
            if recorder is not None:
                recorder.stop()
            metrics.forget()
            if state is not None:
                await state.close()
            ended.close()
            limits.close()
            ledger.close()
            flush_logs(wait=True)

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
        extra = [("mooltiproxy_bans", len(ledger.bans()))] + ([("mooltiproxy_state_up", int(state.up))] if state is not None else [])
        text = metrics.render(extra)
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    dsn = dataset.dsn if dataset.sink == "postgres" else None
    sessions = Sessions(lambda: live.settings.config.auth.master_key, clock=clock, ended=ended)
    pages = ui.routes(sessions, Store(dataset.dir, dsn=dsn), open_reviews(dataset.dir, dsn), ledger)
    cookie_auth = ui.cookie_auth(sessions)
    app = ProxyApp(
        proxied=RequestContext(CORS(Guard(pipeline, live=live, open_paths=ui.OPEN_PATHS, cookie_auth=cookie_auth), live=live),
                               metrics=metrics),
        routes=[Route("/health", healthz, methods=["GET"]), Route("/metrics", prometheus, methods=["GET"]), *admin.routes(live), *pages],
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


def _reload_on_sighup(loop: asyncio.AbstractEventLoop, reload: Callable[[], object]) -> Callable[[], object]:
    """SIGHUP reloads the config where a signal can be caught: on a platform that has SIGHUP, with the app
    served from the main thread (as ``mooltiproxy serve`` does; an app embedded in another thread leaves
    the process's signals to its host). Returns what undoes it."""
    sighup = getattr(signal, "SIGHUP", None)
    if sighup is None or threading.current_thread() is not threading.main_thread():
        return lambda: None
    loop.add_signal_handler(sighup, reload)
    return lambda: loop.remove_signal_handler(sighup)


async def _every(seconds: float, job: Callable[[], None]) -> None:
    while True:
        await asyncio.sleep(seconds)
        job()
