"""One exchange end to end, as the ASGI app behind every proxied path: read the body, make the plan
(``plan.py``), get an answer from upstream (``attempts.py``), answer the client (``respond.py``), record.

Bytes that need no translation are relayed as they arrive, never buffered whole. Translation happens
only where a route names a mapper or the request came through a front. The client going away cancels
the upstream request at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from starlette.types import Receive, Scope, Send

from ..config.model import ServerConfig
from ..dataset.recorder import Recording
from ..dataset.spooling import Spooler
from ..dataset.tape import CLIENT_LEFT, Tape
from ..errors import MethodNotAllowed, ProxyError
from ..http.bodies import parse_json, read_body
from ..http.context import RequestInfo
from ..http.protocol import CANCELLABLE, CLIENT_GONE, PROTOCOL_CANCELS
from ..ops.metrics import Metrics
from ..upstream.client import UpstreamClient
from . import plan as planning
from .attempts import Attempts
from .cooldowns import Cooldowns
from .exchange import Exchange
from .plan import Asked, Plan
from .respond import Responder, send_json
from .served import ServedModels

log = logging.getLogger("mooltiproxy")

_OWN_PATHS = {"/health": "GET", "/metrics": "GET"}


class Pipeline:
    def __init__(self, client: Callable[[], UpstreamClient], server: ServerConfig, *, recorder: Recording | None = None,
                 record_errors: bool = False, cooldowns: Cooldowns | None = None, metrics: Metrics | None = None,
                 max_text: int | None = None, spooler: Spooler | None = None) -> None:
        metrics = metrics or Metrics(None)
        self.attempts = Attempts(client, cooldowns or Cooldowns(), metrics, server.max_fanout)
        self.served = ServedModels(client)
        self.responder = Responder(metrics, server.max_answer)
        self.max_body = server.max_body
        self.max_text = max_text
        self.recorder = recorder
        self.record_errors = record_errors
        self.spooler = spooler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        info: RequestInfo = scope["mooltiproxy"]
        settings = info.settings  # read once, when the request arrived: a reload meanwhile changes nothing for it
        path, method = scope["path"], scope["method"]
        own = _OWN_PATHS.get(path)
        if own is not None and own != method:
            raise MethodNotAllowed(f"{path} answers {own} only, not {method}.", headers=[("Allow", own)])
        asked = Asked.of(scope)
        if path == "/v1/models" and method == "GET":
            router = settings.router
            chosen = router.pick_if_any(asked.target, info.key_targets)
            if not asked.target and chosen is not None and info.key_targets is not None and chosen.name not in info.key_targets:
                chosen = None  # the default is not this key's: the models it may use are the proxy's to list
            if chosen is None or path not in chosen.routes:
                await send_json(None, 200, router.listing(info.key_targets), send)
                return
            planning.may_use(info, chosen)
        body = await read_body(receive, self.max_body, asked.length)
        plan = planning.make(settings, info, scope, asked, body, parse_json(body) if body else None, recording=self.recorder is not None)
        if plan.pending:
            plan = await planning.complete(plan, info, path, self.served.of)
        tape = Tape(plan.recorded_as, self.max_text, plan.dialect, self.spooler) if plan.recorded_as else None
        if tape is not None and self.recorder is not None and self.recorder.behind:
            await self.recorder.caught_up()  # the recording is a promise: the proxy slows to its pace, loses none
        await self._guarded(plan, Exchange(info, scope, tape), receive, send)

    async def _guarded(self, plan: Plan, ex: Exchange, receive: Receive, send: Send) -> None:
        """Run the exchange so that the client leaving cancels everything at once. The server's protocol
        does it when it can (it cancels the request's task); under another server, a task watches."""
        task = asyncio.current_task()
        assert task is not None
        scope = ex.scope
        watcher = None
        if not scope.get(PROTOCOL_CANCELS):
            async def watch() -> None:
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        if not ex.done:
                            scope[CLIENT_GONE] = True
                            task.cancel()
                        return

            watcher = asyncio.ensure_future(watch())
        scope[CANCELLABLE] = True
        try:
            outcome = await self.attempts.run(plan, ex)
            await self.responder.answer(plan, ex, outcome, send)
        except asyncio.CancelledError:
            ex.client_gone = bool(scope.get(CLIENT_GONE))
            if not ex.client_gone:
                raise
            task.uncancel()
            log.info("request %s: the client went away; upstream request cancelled", ex.info.id)
            ex.info.status = ex.info.status or 499
            if ex.tape is not None:
                ex.tape.cut(CLIENT_LEFT)
        except ProxyError as exc:
            if ex.tape is not None:
                ex.tape.failed(exc)
            raise
        finally:
            scope[CANCELLABLE] = False
            if watcher is not None:
                watcher.cancel()
            if ex.tape is not None:
                self._record(plan, ex, ex.tape)

    def _record(self, plan: Plan, ex: Exchange, tape: Tape) -> None:
        assert self.recorder is not None
        status = ex.info.status
        if status == 0 and tape.status:
            status = tape.status
        if not (200 <= status < 300 or ex.client_gone) and not self.record_errors:
            return
        self.recorder.submit(tape.capture(
            request_id=ex.info.id, target=ex.info.target or plan.target.name, request=plan.json, status=status,
            key=ex.info.key_name, stream=plan.stream, prompt=ex.prompt, started=ex.info.start, tried=ex.tried,
            conversation=plan.conversation, client=ex.info.client,
        ))
