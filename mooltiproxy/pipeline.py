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
from typing import Any

import orjson
from starlette.types import Receive, Scope, Send

from . import sse
from .bodies import parse_json, read_body, upstream_json
from .config import ServerConfig
from .context import RequestInfo
from .errors import (
    BadRequest,
    Forbidden,
    MethodNotAllowed,
    ProxyError,
    UpstreamError,
)
from .fanout import merge_answers, merge_streams
from .fronts import Front
from .live import Live
from .mapping import Fanout, MapContext, call_mapper, run_stream_mapper
from .recorder import Recorder
from .tape import RECORDED, Tape
from .targets import Route, Target
from .upstream import UpstreamClient, UpstreamResponse, forward_headers, response_headers

log = logging.getLogger("mooltiproxy")

_JSON_HEADERS = [(b"content-type", b"application/json")]
_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
_STREAM_TYPES = (b"text/event-stream", b"application/x-ndjson", b"application/jsonl")
_OWN_PATHS = {"/health": "GET"}


class Exchange:
    """The state of one request as it travels."""

    __slots__ = (
        "body",
        "character",
        "client_gone",
        "ctx",
        "done",
        "front",
        "info",
        "json",
        "route",
        "scope",
        "stream",
        "t_ready",
        "t_sent",
        "tape",
        "target",
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
                 recorder: Recorder | None = None, record_errors: bool = False) -> None:
        self.live = live  # targets and routes change with a reloaded config; a request keeps what it started with
        self.client = client
        self.max_body = server.max_body
        self.body_timeout = server.body_timeout
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
            chosen = router.pick_if_any(target_header)
            if chosen is None or path not in chosen.routes:
                await _send_json(None, 200, router.listing(info.key_targets), send)
                return
            _may_use(info, chosen)
        body = await read_body(receive, self.max_body, declared, self.body_timeout)
        parsed = parse_json(body) if body else None

        model = parsed.get("model") if isinstance(parsed, dict) else None
        target, alias = router.pick(target_header, model if isinstance(model, str) else None)
        info.target = target.name
        _may_use(info, target)
        route, front = self._route(target, path, method)
        if alias is not None and alias.model and isinstance(parsed, dict):
            parsed["model"] = alias.model
            body = orjson.dumps(parsed)
        ex = Exchange(info, scope, body, parsed, target, route, front)
        ex.character = target.pick_character(character)
        if record and route.inbound in RECORDED:
            ex.tape = Tape(route.inbound)
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
        """Run the exchange while watching for the client to leave; if it does, cancel everything."""
        task = asyncio.current_task()
        assert task is not None

        async def watch() -> None:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    if not ex.done:
                        ex.client_gone = True
                        task.cancel()
                    return

        watcher = asyncio.ensure_future(watch())
        try:
            await self._exchange(ex, send)
        except asyncio.CancelledError:
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
            watcher.cancel()
            if ex.tape is not None:
                self._record(ex)

    # ------------------------------------------------------------------------------ request stage

    async def _exchange(self, ex: Exchange, send: Send) -> None:
        target, route, front = ex.target, ex.route, ex.front
        body = ex.body
        headers = forward_headers(ex.scope["headers"], target.headers)
        if ex.mapped:
            ex.ctx = ctx = MapContext(
                target=target,
                path=ex.scope["path"],
                model=ex.json.get("model") if isinstance(ex.json, dict) else None,
                request_id=ex.info.id,
                stream=ex.stream,
                prompter=target.prompter,
                character=ex.character,
                request=ex.json,
            )
            if front is not None:
                ex.json = await call_mapper(front.request, ex.json, ctx)
                ex.stream = ctx.stream = isinstance(ex.json, dict) and ex.json.get("stream") is True
                ctx.request, ctx.path = ex.json, route.inbound
                ctx.model = ex.json.get("model") if isinstance(ex.json, dict) else None
                body = orjson.dumps(ex.json)
        bodies = [body]
        if route.request is not None:
            assert ex.ctx is not None
            if not isinstance(ex.json, dict):
                raise BadRequest(f"{route.inbound} needs a JSON object as its body.", code="invalid_json")
            out = await call_mapper(route.request, ex.json, ex.ctx)
            bodies = [orjson.dumps(b) for b in out] if isinstance(out, Fanout) else [orjson.dumps(out)]
            if isinstance(out, Fanout):
                ex.ctx.state["fanout_prompts"] = out.prompts
        if route.request is not None or front is not None:
            headers = [h for h in headers if h[0] != "content-type"]
            headers.append(("content-type", "application/json"))
        if len(bodies) > 1:
            await self._fanout(ex, bodies, headers, send)
            return
        resp = await self._send_upstream(ex, bodies[0], headers)
        try:
            if ex.ctx is not None:
                _note_upstream(ex.ctx, resp)
            await self._respond(ex, resp, ex.ctx, send)
        finally:
            ex.info.upstream_ms = (time.perf_counter() - ex.t_sent) * 1000
            await resp.aclose()

    async def _send_upstream(self, ex: Exchange, body: bytes, headers: list[tuple[str, str]]) -> UpstreamResponse:
        target, route = ex.target, ex.route
        upstream_path = (ex.ctx.upstream_path if ex.ctx is not None else None) or (
            route.stream_path if ex.stream and route.stream_path else route.path)
        qs = ex.scope.get("query_string")
        url = target.url + upstream_path + ("?" + qs.decode("latin-1") if qs else "")
        if not ex.t_sent:
            ex.t_sent = time.perf_counter()
        resp = await self.client().send(
            ex.scope["method"], url, headers, body, timeout=target.timeout, connect_timeout=target.connect_timeout,
            target=target.name,
        )
        ex.t_ready = time.perf_counter()
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
        data = await resp.read()
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
            log.warning("request %s: %s", ex.info.id, exc.message)
            if tape is not None:
                tape.cut(exc.message)
            if stream:
                await send({"type": "http.response.body", "body": sse.frame(exc.body()), "more_body": True})
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
            log.warning("request %s: stream ended by an error: %s", ex.info.id, exc.message)
            if ex.tape is not None:
                ex.tape.cut(exc.message)
            await send({"type": "http.response.body", "body": _error_event(ex, exc), "more_body": True})
        finally:
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
        data = await resp.read()
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
            prompt=ex.ctx.prompt if ex.ctx is not None else None, started=ex.info.start,
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
    return sse.frame(exc.body())


def _note_upstream(ctx: MapContext, resp: UpstreamResponse) -> None:
    ctx.upstream_status = resp.status
    ctx.upstream_headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in resp.headers}


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


