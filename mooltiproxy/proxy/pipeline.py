"""One exchange end to end: read the body, pick target and route, map, send upstream, map back, answer.

Bytes that need no translation are relayed as they arrive, never buffered whole. Translation happens
only where a route names a mapper or the request came through a front (``fronts.py``). The client
going away cancels the upstream request at once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from typing import Any, cast

import orjson
from starlette.types import Receive, Scope, Send

from ..backends.fronts import Front
from ..config.load import ServerConfig
from ..dataset.recorder import Recorder
from ..dataset.tape import RECORDED, Tape
from ..errors import (
    BadRequest,
    Forbidden,
    MethodNotAllowed,
    ProxyError,
    UpstreamError,
)
from ..http.bodies import parse_json, read_body, upstream_json
from ..http.context import RequestInfo
from ..http.protocol import CANCELLABLE, CLIENT_GONE, PROTOCOL_CANCELS
from ..ops.metrics import Metrics
from ..routing.targets import Route, Target
from ..state.settings import Live
from ..translate import sse
from ..translate.mapping import Fanout, MapContext, call_mapper, run_stream_mapper
from ..upstream.client import RawHeaderView, UpstreamClient, UpstreamResponse, forward_headers, response_headers
from .cooldowns import Health
from .fanout import merge_answers, merge_streams

log = logging.getLogger("mooltiproxy")

_JSON_HEADERS = [(b"content-type", b"application/json")]
_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
_STREAM_TYPES = (b"text/event-stream", b"application/x-ndjson", b"application/jsonl")
_OWN_PATHS = {"/health": "GET", "/metrics": "GET"}
MAX_RETRY_WAIT = 30.0  # longest Retry-After honoured before moving on to a fallback
MAX_ERROR_BODY = 1024 * 1024  # an upstream's error body is a message, read whole to pass it on: this much at most
_FANNED_OUT = object()


class Exchange:
    """The state of one request as it travels."""

    __slots__ = (
        "body",
        "character",
        "client_gone",
        "connect_to",
        "ctx",
        "done",
        "front",
        "front_state",
        "info",
        "json",
        "route",
        "scope",
        "stream",
        "t_ready",
        "t_sent",
        "tape",
        "target",
        "tried",
    )

    def __init__(self, info: RequestInfo, scope: Scope, body: bytes, parsed: Any, target: Target, route: Route,
                 front: Front | None) -> None:
        self.info = info
        self.scope = scope
        self.body = body
        self.json = parsed
        self.target = target
        self.route = route
        self.front = front
        self.ctx: MapContext | None = None
        self.stream = isinstance(parsed, dict) and parsed.get("stream") is True
        self.t_sent = 0.0
        self.t_ready = 0.0
        self.done = False
        self.client_gone = False
        self.character: Any = None
        self.tape: Tape | None = None  # what the recorder will get, when this exchange is recorded
        self.front_state: dict[str, Any] = {}  # what the front's request mapper noted for its answer mapper
        self.tried: list[str] = []  # targets that failed before the one answering, for the log and the record
        self.connect_to: str | None = None  # a dynamic host's checked address, connected to in place of its name

    def overhead_ms(self) -> bytes:
        """Time spent in the proxy so far, the upstream's own time taken out."""
        now = time.perf_counter()
        upstream = (self.t_ready - self.t_sent) if self.t_sent else 0.0
        return b"%.3f" % ((now - self.info.start - upstream) * 1000)

    @property
    def mapped(self) -> bool:
        r = self.route
        return self.front is not None or r.request is not None or r.answer is not None or r.stream is not None \
            or r.error is not None


class Pipeline:
    """The ASGI app behind every proxied path."""

    def __init__(self, live: Live, client: Callable[[], UpstreamClient], server: ServerConfig, fronts: Mapping[str, Front],
                 recorder: Recorder | None = None, record_errors: bool = False, health: Health | None = None,
                 metrics: Metrics | None = None, max_text: int | None = None) -> None:
        self.live = live  # targets and routes change with a reloaded config; a request keeps what it started with
        self.client = client
        self.health = health or Health()
        self.metrics = metrics or Metrics(None)
        self.max_body = server.max_body
        self.max_answer = server.max_answer
        self.max_fanout = server.max_fanout
        self.max_text = max_text
        self.fronts = fronts
        self.recorder = recorder
        self.record_errors = record_errors

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        info: RequestInfo = scope["mooltiproxy"]
        router = self.live.settings.router
        path, method = scope["path"], scope["method"]
        own = _OWN_PATHS.get(path)
        if own is not None and own != method:
            raise MethodNotAllowed(f"{path} answers {own} only, not {method}.", headers=[("Allow", own)])

        target_header = None
        character = None
        declared = None
        record = self.recorder is not None
        for name, value in scope["headers"]:
            if name == b"target":
                target_header = value.decode("latin-1").strip()
            elif name == b"content-length":
                declared = int(value) if value.isdigit() else None
            elif name == b"x-character":
                character = value.decode("latin-1").strip()
            elif name == b"x-mooltiproxy-record":
                record = record and value.strip().lower() not in (b"off", b"0", b"false", b"no")
        if path == "/v1/models" and method == "GET":
            chosen = router.pick_if_any(target_header, info.key_targets)
            if chosen is None or path not in chosen.routes:
                await _send_json(None, 200, router.listing(info.key_targets), send)
                return
            _may_use(info, chosen)
        body = await read_body(receive, self.max_body, declared)
        parsed = parse_json(body) if body else None

        dynamic = self.live.settings.dynamic
        destination = dynamic.match(path, method, scope.get("raw_path")) if dynamic.claims(path) else None
        alias = None
        front = None
        if destination is not None:  # POST /{host}/{path}: a host from the dynamic: list, relayed as it is
            target, route = destination.target, destination.route
            info.target = target.name
            _may_use(info, target)
        else:
            model = parsed.get("model") if isinstance(parsed, dict) else None
            target, alias = router.pick(target_header, model if isinstance(model, str) else None, info.key_targets)
            info.target = target.name
            _may_use(info, target)
            route, front = self._route(target, path, method)
        info.route = route.inbound
        if alias is not None and alias.model and isinstance(parsed, dict):
            parsed["model"] = alias.model
            body = orjson.dumps(parsed)
        ex = Exchange(info, scope, body, parsed, target, route, front)
        if destination is not None:
            ex.connect_to = await dynamic.address(destination.host)
        ex.character = target.pick_character(character)
        if record and route.inbound in RECORDED:
            ex.tape = Tape(route.inbound, self.max_text)
        await self._guarded(ex, receive, send)

    def _route(self, target: Target, path: str, method: str) -> tuple[Route, Front | None]:
        """The target's own route for the path, else a front riding on one of its OpenAI routes."""
        if path not in target.routes:
            front = self.fronts.get(path)
            if front is not None and front.base in target.routes:
                if method != "POST":
                    raise MethodNotAllowed(f"{path} answers POST only, not {method}.", headers=[("Allow", "POST")])
                return target.routes[front.base], front
        return target.route(path, method), None

    async def _guarded(self, ex: Exchange, receive: Receive, send: Send) -> None:
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
            await self._exchange(ex, send)
        except asyncio.CancelledError:
            ex.client_gone = bool(scope.get(CLIENT_GONE))
            if not ex.client_gone:
                raise
            task.uncancel()
            log.info("request %s: the client went away; upstream request cancelled", ex.info.id)
            ex.info.status = ex.info.status or 499
            if ex.tape is not None:
                ex.tape.cut("the client disconnected")
        except ProxyError as exc:
            if ex.tape is not None:
                ex.tape.failed(exc)
            raise
        finally:
            scope[CANCELLABLE] = False
            if watcher is not None:
                watcher.cancel()
            if ex.tape is not None:
                self._record(ex)

    # ------------------------------------------------------------------------------ request stage

    async def _exchange(self, ex: Exchange, send: Send) -> None:
        """Try the target, again on a failure if it allows retries, then its fallbacks: until one answers
        without a connect error, a 5xx or a 429, or nothing is left (its failure is then the answer)."""
        if ex.front is not None:
            await self._apply_front(ex)
        candidates = self._candidates(ex)
        for i, (target, route) in enumerate(candidates):
            last = i == len(candidates) - 1
            left = self.health.cooling(target.name)
            if left and not last:
                ex.tried.append(f"{target.name} (cooling down, {left:.0f} s left)")
                continue
            tried = await self._try(ex, target, route, last, send)
            if tried is _FANNED_OUT:
                return
            if tried is None:
                continue  # on to the next target
            resp = cast(UpstreamResponse, tried)
            if ex.tried:
                log.info("request %s answered by target %s after: %s", ex.info.id, target.name, ", ".join(ex.tried))
            try:
                if ex.ctx is not None:
                    _note_upstream(ex.ctx, resp)
                await self._respond(ex, resp, ex.ctx, send)
            finally:
                ex.info.upstream_ms = (time.perf_counter() - ex.t_sent) * 1000
                await resp.aclose()
            return

    async def _try(self, ex: Exchange, target: Target, route: Route, last: bool, send: Send) -> UpstreamResponse | object | None:
        """One target, with its retries: the response to answer with, or None to move on to the next target."""
        tc = target.config
        retries = tc.retries if tc is not None else 0
        attempt = 0
        while True:
            ex.target, ex.route = target, route
            ex.info.target = target.name
            bodies, headers = await self._prepare(ex)
            if len(bodies) > self.max_fanout:
                raise BadRequest(
                    f"This request needs {len(bodies)} calls to target '{target.name}', which answers one prompt and one choice "
                    f"per call (a list of prompts times n), and the proxy makes at most {self.max_fanout} for one request "
                    f"(server.max_fanout). Send fewer prompts or a smaller n per request.", code="too_many_upstream_calls")
            if len(bodies) > 1:
                await self._fanout(ex, bodies, headers, send)  # several calls at once are not retried
                return _FANNED_OUT
            resp: UpstreamResponse | None = None
            failure: UpstreamError | None = None
            try:
                resp = await self._send_upstream(ex, bodies[0], headers)
            except UpstreamError as exc:
                failure = exc
            if resp is not None and resp.status < 500 and resp.status != 429:
                self.health.succeeded(target.name)
                return resp
            wait = _retry_after(resp) if resp is not None else None
            if wait is None:
                wait = (tc.retry_backoff if tc is not None else 0.5) * 2 ** attempt
            again = attempt < retries and wait <= MAX_RETRY_WAIT
            self.metrics.failed(target.name)
            if tc is not None:
                self.health.failed(target.name, after=tc.cooldown_after, cooldown=tc.cooldown)
            if not again and last:
                if failure is not None:  # nothing left to try: this failure is the answer
                    raise failure
                return resp
            what = failure.code if failure is not None else str(resp.status if resp is not None else "?")
            ex.tried.append(f"{target.name} ({what})")
            log.warning("request %s: target %s failed (%s); %s", ex.info.id, target.name, what,
                        f"trying again in {wait:g} s" if again else "trying the next target")
            if resp is not None:
                await resp.aclose()
            if not again:
                return None
            await asyncio.sleep(wait)
            attempt += 1

    def _candidates(self, ex: Exchange) -> list[tuple[Target, Route]]:
        """The chosen target, then its fallbacks that serve the same route and that the request's key may use
        (a fallback is no way around a key's ``targets:``; one it may not use is passed over, and logged)."""
        out = [(ex.target, ex.route)]
        tc = ex.target.config
        router = self.live.settings.router
        allowed = ex.info.key_targets
        for name in tc.fallbacks if tc is not None else ():
            fallback = router.targets.get(name)
            route = fallback.routes.get(ex.route.inbound) if fallback is not None else None
            if fallback is None or route is None or route.method != ex.route.method:
                continue
            if allowed is not None and name not in allowed:
                log.info("request %s: fallback %s passed over: the key '%s' may not use it", ex.info.id, name, ex.info.key_name)
                continue
            out.append((fallback, route))
        return out

    def _context(self, ex: Exchange, state: dict[str, Any] | None = None) -> MapContext:
        return MapContext(
            target=ex.target,
            path=ex.route.inbound if ex.front is not None else ex.scope["path"],
            model=ex.json.get("model") if isinstance(ex.json, dict) else None,
            request_id=ex.info.id,
            stream=ex.stream,
            prompter=ex.target.prompter,
            character=ex.character,
            request=ex.json,
            state=dict(state or {}),
        )

    async def _apply_front(self, ex: Exchange) -> None:
        """The front's request in the OpenAI shape, once, whichever target ends up answering."""
        assert ex.front is not None
        ctx = self._context(ex)
        ctx.path = ex.scope["path"]
        ex.json = await call_mapper(ex.front.request, ex.json, ctx)
        ex.stream = isinstance(ex.json, dict) and ex.json.get("stream") is True
        ex.body = orjson.dumps(ex.json)
        ex.front_state = ctx.state

    async def _prepare(self, ex: Exchange) -> tuple[list[bytes], list[tuple[str, str]]]:
        """The upstream bodies (several when a mapper fans out) and headers for the current target."""
        target, route = ex.target, ex.route
        headers = forward_headers(ex.scope["headers"], target.upstream_headers(ex.info.client_key))
        ex.ctx = self._context(ex, ex.front_state) if ex.mapped else None
        bodies = [ex.body]
        if route.request is not None:
            assert ex.ctx is not None
            if not isinstance(ex.json, dict):
                raise BadRequest(f"{route.inbound} needs a JSON object as its body.", code="invalid_json")
            out = await call_mapper(route.request, ex.json, ex.ctx)
            bodies = [orjson.dumps(b) for b in out] if isinstance(out, Fanout) else [orjson.dumps(out)]
            if isinstance(out, Fanout):
                ex.ctx.state["fanout_prompts"] = out.prompts
        if route.request is not None or ex.front is not None:
            headers = [h for h in headers if h[0] != "content-type"]
            headers.append(("content-type", "application/json"))
        return bodies, headers

    async def _send_upstream(self, ex: Exchange, body: bytes, headers: list[tuple[str, str]]) -> UpstreamResponse:
        target, route = ex.target, ex.route
        upstream_path = (ex.ctx.upstream_path if ex.ctx is not None else None) or (
            route.stream_path if ex.stream and route.stream_path else route.path)
        qs = ex.scope.get("query_string")
        url = target.url + upstream_path + ("?" + qs.decode("latin-1") if qs else "")
        if not ex.t_sent:
            ex.t_sent = time.perf_counter()
        pinned = {"connect_to": ex.connect_to} if ex.connect_to else {}
        resp = await self.client().send(
            ex.scope["method"], url, headers, body, timeout=target.timeout, connect_timeout=target.connect_timeout,
            target=target.name, max_connections=target.max_connections, **pinned,
        )
        ex.t_ready = time.perf_counter()
        # The upstream's time starts when the request's last byte left (the client knows it), not before
        # the proxy had built and written it.
        ex.t_sent = getattr(resp, "written_at", 0.0) or ex.t_sent
        return resp

    async def _fanout(self, ex: Exchange, bodies: list[bytes], headers: list[tuple[str, str]], send: Send) -> None:
        """Several upstream calls for one request, answered as one."""
        ctx = ex.ctx
        assert ctx is not None
        calls = [asyncio.ensure_future(self._send_upstream(ex, b, headers)) for b in bodies]
        try:
            responses = await asyncio.gather(*calls)
        except BaseException:
            for call in calls:
                if call.done() and not call.cancelled() and call.exception() is None:
                    await call.result().aclose()
                else:
                    call.cancel()
            raise
        ctxs = [dataclasses.replace(ctx) for _ in responses]
        for c, resp in zip(ctxs, responses, strict=True):
            _note_upstream(c, resp)
        prompts = int(ctx.state.get("fanout_prompts", len(bodies)))
        try:
            failed = next((i for i, r in enumerate(responses) if r.status >= 400), None)
            if failed is not None:
                await self._error(ex, responses[failed], ctxs[failed], send)
            elif all(_is_stream(r) for r in responses):
                streams = [self._events(ex, r, c) for r, c in zip(responses, ctxs, strict=True)]
                await self._emit_stream(ex, merge_streams(streams, prompts), send)
            else:
                answers = await asyncio.gather(*(self._answer(ex, r, c) for r, c in zip(responses, ctxs, strict=True)))
                await self._emit_answer(ex, 200, merge_answers(answers, prompts), send)
        finally:
            ex.info.upstream_ms = (time.perf_counter() - ex.t_sent) * 1000
            for resp in responses:
                await resp.aclose()

    # ----------------------------------------------------------------------------- answer stage

    async def _respond(self, ex: Exchange, resp: UpstreamResponse, ctx: MapContext | None, send: Send) -> None:
        if resp.status >= 400:
            await self._error(ex, resp, ctx, send)
            return
        stream = _is_stream(resp)
        if ex.front is None and (ex.route.stream if stream else ex.route.answer) is None:
            await self._relay(ex, resp, send)
        elif stream:
            await self._emit_stream(ex, self._events(ex, resp, ctx), send)
        else:
            await self._emit_answer(ex, resp.status, await self._answer(ex, resp, ctx), send)

    def _events(self, ex: Exchange, resp: UpstreamResponse, ctx: MapContext | None) -> AsyncIterator[Any]:
        """The upstream's stream as OpenAI events: through the route's stream mapper, or parsed as they are."""
        events = _checked(sse.events(resp.chunks(), ex.route.stream_format))
        if ex.route.stream is not None:
            assert ctx is not None
            return run_stream_mapper(ex.route.stream, events, ctx)
        return events

    async def _answer(self, ex: Exchange, resp: UpstreamResponse, ctx: MapContext | None) -> Any:
        data = await resp.read(self.max_answer)
        ex.t_ready = time.perf_counter()
        parsed = upstream_json(data, ex.target.name)
        if ex.route.answer is not None:
            assert ctx is not None
            return await call_mapper(ex.route.answer, parsed, ctx)
        return parsed

    async def _relay(self, ex: Exchange, resp: UpstreamResponse, send: Send) -> None:
        """Bytes in, bytes out, each chunk as it arrives."""
        headers = response_headers(resp.headers, keep_length=True)
        chunks = resp.chunks()
        first = await anext(chunks, b"")
        ex.t_ready = time.perf_counter()
        headers.append((b"x-mooltiproxy-overhead-ms", ex.overhead_ms()))
        await send({"type": "http.response.start", "status": resp.status, "headers": headers})
        stream = _is_stream(resp)
        tape = ex.tape
        if not stream and len(first) == _length(resp):
            # The whole answer came in one read (the common case): one send, not three.
            if tape is not None:
                tape.relayed(first, False)
            ex.done = True
            await send({"type": "http.response.body", "body": first})
            return
        if stream:
            self.metrics.streams += 1
        try:
            if first:
                if tape is not None:
                    tape.relayed(first, stream)
                await send({"type": "http.response.body", "body": first, "more_body": True})
            async for chunk in chunks:
                if tape is not None:
                    tape.relayed(chunk, stream)
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except UpstreamError as exc:
            log.warning("request %s: %s", ex.info.id, exc.full_message())
            if tape is not None:
                tape.cut(exc.message)
            if not stream:
                # Ending the body now would pass a truncated answer off as whole; returning without ending it
                # makes the server close the connection, which is how HTTP/1.1 says an answer broke off.
                ex.done = True
                return
            await send({"type": "http.response.body", "body": sse.frame(exc.body(ex.info.administrator)), "more_body": True})
        finally:
            if stream:
                self.metrics.streams -= 1
        ex.done = True
        await send({"type": "http.response.body", "body": b""})

    async def _emit_answer(self, ex: Exchange, status: int, answer: Any, send: Send) -> None:
        if ex.tape is not None:
            ex.tape.answer = answer
        if ex.front is not None and ex.front.answer is not None:
            assert ex.ctx is not None
            answer = await call_mapper(ex.front.answer, answer, ex.ctx)
        ex.done = True
        await _send_json(ex, status, answer, send)

    async def _emit_stream(self, ex: Exchange, events: AsyncIterator[Any], send: Send) -> None:
        """Events written in the front's framing. The status line waits for the first event, so an error
        the upstream reports before any token still becomes a proper HTTP error."""
        framing = "openai"
        if ex.tape is not None:
            events = ex.tape.tap(events)
        if ex.front is not None:
            framing = ex.front.framing
            if ex.front.stream is not None:
                assert ex.ctx is not None
                events = run_stream_mapper(ex.front.stream, events, ex.ctx)
        frame, done = sse.FRAMINGS[framing]
        started = False
        self.metrics.streams += 1
        try:
            async for event in events:
                if not started:
                    ex.t_ready = time.perf_counter()
                    await self._start_stream(ex, send)
                    started = True
                await send({"type": "http.response.body", "body": frame(event), "more_body": True})
            if not started:
                await self._start_stream(ex, send)
                started = True
            if done:
                await send({"type": "http.response.body", "body": done, "more_body": True})
        except ProxyError as exc:
            if not started:
                raise
            log.warning("request %s: stream ended by an error: %s", ex.info.id, exc.full_message())
            if ex.tape is not None:
                ex.tape.cut(exc.message)
            await send({"type": "http.response.body", "body": _error_event(ex, exc), "more_body": True})
        finally:
            self.metrics.streams -= 1
            aclose = getattr(events, "aclose", None)
            if aclose is not None:
                await aclose()
        ex.done = True
        await send({"type": "http.response.body", "body": b""})

    async def _start_stream(self, ex: Exchange, send: Send) -> None:
        headers = [*_SSE_HEADERS, (b"x-mooltiproxy-overhead-ms", ex.overhead_ms())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})

    async def _error(self, ex: Exchange, resp: UpstreamResponse, ctx: MapContext | None, send: Send) -> None:
        """The upstream's own error: its status kept, its message carried through (translated where a
        route or front speaks another API)."""
        data = await resp.read(MAX_ERROR_BODY)
        ex.t_ready = time.perf_counter()
        if ex.tape is not None:
            ex.tape.error = data.decode("utf-8", "replace")[:2000]
        route, front = ex.route, ex.front
        if ctx is not None and (route.error is not None or front is not None):
            try:
                parsed: Any = orjson.loads(data)
            except orjson.JSONDecodeError:
                parsed = data.decode("utf-8", "replace")
            if route.error is not None:
                parsed = await call_mapper(route.error, parsed, ctx)
            if front is not None and front.error is not None:
                parsed = await call_mapper(front.error, parsed, ctx)
            extra = [(k, v) for k, v in resp.headers if k == b"retry-after"]
            ex.done = True
            await _send_json(ex, resp.status, parsed, send, extra)
            return
        headers = response_headers(resp.headers, keep_length=False)
        headers.append((b"content-length", str(len(data)).encode()))
        headers.append((b"x-mooltiproxy-overhead-ms", ex.overhead_ms()))
        ex.done = True
        await send({"type": "http.response.start", "status": resp.status, "headers": headers})
        await send({"type": "http.response.body", "body": data})


    def _record(self, ex: Exchange) -> None:
        tape, status = ex.tape, ex.info.status
        assert tape is not None and self.recorder is not None
        if status == 0 and tape.status:
            status = tape.status
        if not (200 <= status < 300 or ex.client_gone) and not self.record_errors:
            return
        self.recorder.submit(tape.capture(
            request_id=ex.info.id, target=ex.target.name, request=ex.json, status=status, key=ex.info.key_name, stream=ex.stream,
            prompt=ex.ctx.prompt if ex.ctx is not None else None, started=ex.info.start, tried=ex.tried,
        ))


async def _checked(events: AsyncIterator[Any]) -> AsyncGenerator[Any, None]:
    try:
        async for event in events:
            yield event
    except sse.NotJSON as exc:
        raise UpstreamError(f"The upstream's stream could not be read: {exc}.", code="upstream_bad_stream") from None


def _may_use(info: RequestInfo, target: Target) -> None:
    if info.key_targets is not None and target.name not in info.key_targets:
        raise Forbidden(
            f"The key '{info.key_name}' may not use target '{target.name}'; it may use: {', '.join(sorted(info.key_targets)) or 'none'}.",
            code="target_not_allowed",
        )


def _error_event(ex: Exchange, exc: ProxyError) -> bytes:
    """An error inside a stream whose status line is gone, in the front's own shape."""
    if ex.front is not None and ex.front.framing == "tgi":
        return sse.frame_tgi({"error": exc.message, "error_type": exc.code or exc.type})
    if ex.front is not None and ex.front.framing == "anthropic":
        return sse.frame_typed({"type": "error", "error": {"type": "api_error", "message": exc.message}})
    return sse.frame(exc.body(ex.info.administrator))


def _length(resp: UpstreamResponse) -> int:
    for k, v in resp.headers:
        if k == b"content-length":
            return int(v) if v.isdigit() else -1
    return -1


def _retry_after(resp: UpstreamResponse) -> float | None:
    for k, v in resp.headers:
        if k == b"retry-after":
            try:
                return max(0.0, float(v))
            except ValueError:
                return None  # an HTTP date: rare from model servers, and the backoff serves
    return None


def _note_upstream(ctx: MapContext, resp: UpstreamResponse) -> None:
    ctx.upstream_status = resp.status
    ctx.upstream_headers = RawHeaderView(resp.headers)


def _is_stream(resp: UpstreamResponse) -> bool:
    for k, v in resp.headers:
        if k == b"content-type":
            return v.lower().startswith(_STREAM_TYPES)
    return False


async def _send_json(ex: Exchange | None, status: int, answer: Any, send: Send, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    body = orjson.dumps(answer)
    headers = [*_JSON_HEADERS, (b"content-length", str(len(body)).encode())]
    if ex is not None:
        headers.append((b"x-mooltiproxy-overhead-ms", ex.overhead_ms()))
    if extra:
        headers.extend(extra)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


