"""Answering the client: bytes relayed as they come where nothing translates, else the answer or the event
stream mapped (through the route's mappers, then the front's) and written in the front's framing; the
upstream's own errors with their status kept. A route that translates answers but has no stream mapper
streams the whole answer as one synthesized event stream: a client asking for a stream gets one."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

import orjson
from starlette.types import Send

from ..dataset.records import RecordOnly
from ..errors import ProxyError, UpstreamError
from ..http.bodies import upstream_json
from ..ops.metrics import Metrics
from ..routing.targets import Route
from ..translate import sse, toolcalls
from ..translate.helpers import stream_of
from ..translate.mapping import MapContext, call_mapper, run_stream_mapper
from ..upstream.client import UpstreamResponse, response_headers
from .attempts import Answer, Spread
from .exchange import Exchange
from .fanout import merge_answers, merge_streams
from .plan import CHAT, COMPLETION, Plan

log = logging.getLogger("mooltiproxy")

MAX_ERROR_BODY = 1024 * 1024  # an upstream's error body is a message, read whole to pass it on: this much at most
_JSON_HEADERS = [(b"content-type", b"application/json")]
_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
_STREAM_TYPES = (b"text/event-stream", b"application/x-ndjson", b"application/jsonl")


class Responder:
    def __init__(self, metrics: Metrics, max_answer: int) -> None:
        self.metrics = metrics
        self.max_answer = max_answer

    async def answer(self, plan: Plan, ex: Exchange, outcome: Answer | Spread, send: Send) -> None:
        if isinstance(outcome, Spread):
            try:
                await self._spread(plan, ex, outcome, send)
            finally:
                ex.info.upstream_ms = (time.perf_counter() - ex.t_sent) * 1000
                for resp in outcome.responses:
                    await resp.aclose()
            return
        resp, route, ctx = outcome.resp, outcome.route, outcome.ctx
        try:
            if ctx is not None:
                ex.prompt = ctx.prompt
            if resp.status >= 400:
                await self._error(plan, ex, resp, route, ctx, send)
            elif plan.front is None and ctx is None:
                await self._relay(ex, resp, send)  # nothing translates: the common case, straight
            else:
                await self._mapped(plan, ex, resp, route, ctx, send)
        finally:
            ex.info.upstream_ms = (time.perf_counter() - ex.t_sent) * 1000
            await resp.aclose()

    async def _mapped(self, plan: Plan, ex: Exchange, resp: UpstreamResponse, route: Route, ctx: MapContext | None,
                      send: Send) -> None:
        stream = is_stream(resp)
        if plan.front is None and (route.stream if stream else route.answer) is None:
            if stream and route.answer is not None:
                # Answers in another API than OpenAI's, and nothing to translate its streams: relayed, they would
                # reach the client untranslated.
                raise UpstreamError(
                    f"The upstream of target '{ex.info.target}' answered with an event stream, and route {route.inbound} has "
                    f"an answer mapper but no stream mapper to translate one.",
                    code="no_stream_mapper", detail=f"Name one under targets.{ex.info.target}.routes.{route.inbound}.stream.")
            await self._relay(ex, resp, send)
        elif stream:
            await self._emit_stream(plan, ex, self._events(resp, route, ctx), ctx, send)
        else:
            answer = await self._answer(ex, resp, route, ctx)
            if plan.stream and route.inbound in (CHAT, COMPLETION) and isinstance(answer, dict):
                # Asked for a stream, given a whole answer (the route has no stream mapper): the answer as a stream.
                kind = "chat" if route.inbound == CHAT else "completion"
                await self._emit_stream(plan, ex, _aiter(stream_of(answer, kind, plan.json)), ctx, send)
            else:
                await self._emit_answer(plan, ex, resp.status, answer, ctx, send)

    async def _spread(self, plan: Plan, ex: Exchange, spread: Spread, send: Send) -> None:
        responses, ctxs = spread.responses, spread.ctxs
        ex.prompt = ctxs[0].prompt
        failed = next((i for i, r in enumerate(responses) if r.status >= 400), None)
        if failed is not None:
            await self._error(plan, ex, responses[failed], spread.route, ctxs[failed], send)
        elif all(is_stream(r) for r in responses):
            streams = [self._events(r, spread.route, c) for r, c in zip(responses, ctxs, strict=True)]
            await self._emit_stream(plan, ex, merge_streams(streams, spread.prompts), ctxs[0], send)
        else:
            answers = await asyncio.gather(*(self._answer(ex, r, spread.route, c) for r, c in zip(responses, ctxs, strict=True)))
            await self._emit_answer(plan, ex, 200, merge_answers(answers, spread.prompts), ctxs[0], send)

    def _events(self, resp: UpstreamResponse, route: Route, ctx: MapContext | None) -> AsyncIterator[Any]:
        """The upstream's stream as OpenAI events: through the route's stream mapper, or parsed as they are."""
        events = _checked(sse.events(resp.chunks(), route.stream_format))
        if route.stream is not None:
            assert ctx is not None
            return run_stream_mapper(route.stream, events, ctx)
        return events

    async def _answer(self, ex: Exchange, resp: UpstreamResponse, route: Route, ctx: MapContext | None) -> Any:
        data = await resp.read(self.max_answer)
        ex.t_ready = time.perf_counter()
        parsed = upstream_json(data, ex.info.target or "?")
        if route.answer is not None:
            assert ctx is not None
            return await call_mapper(route.answer, parsed, ctx)
        return parsed

    async def _relay(self, ex: Exchange, resp: UpstreamResponse, send: Send) -> None:
        """Bytes in, bytes out, each chunk as it arrives."""
        headers = response_headers(resp.headers, keep_length=True)
        chunks = resp.chunks()
        first = await anext(chunks, b"")
        ex.t_ready = time.perf_counter()
        headers.append((b"x-mooltiproxy-overhead-ms", ex.overhead_ms()))
        await send({"type": "http.response.start", "status": resp.status, "headers": headers})
        stream = is_stream(resp)
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
                if tape is not None and tape.spool is not None and tape.spool.behind:
                    await tape.spool.drained()  # a big answer's file is behind: its next piece waits (spooling.py)
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

    async def _emit_answer(self, plan: Plan, ex: Exchange, status: int, answer: Any, ctx: MapContext | None, send: Send) -> None:
        fmt = toolcalls.wanted(ctx) if ctx is not None else None
        if fmt is not None and ctx is not None:  # tools offered to a template that renders them: the calls the model wrote
            answer = toolcalls.in_answer(answer, fmt, toolcalls.single(ctx))
        if ex.tape is not None:
            ex.tape.answer = answer
        if plan.front is not None and plan.front.answer is not None:
            assert ctx is not None
            answer = await call_mapper(plan.front.answer, answer, ctx)
        ex.done = True
        await send_json(ex, status, answer, send)

    async def _emit_stream(self, plan: Plan, ex: Exchange, events: AsyncIterator[Any], ctx: MapContext | None, send: Send) -> None:
        """Events written in the front's framing (OpenAI's without one). The status line waits for the first event,
        so an error the upstream reports before any token still becomes a proper HTTP error."""
        fmt = toolcalls.wanted(ctx) if ctx is not None else None
        if fmt is not None and ctx is not None:
            events = toolcalls.in_stream(events, fmt, toolcalls.single(ctx))
        if ex.tape is not None:
            events = ex.tape.tap(events)
        front = plan.front
        frame: Callable[[Any], bytes] = sse.frame
        done = sse.DONE
        if front is not None:
            frame, done = front.frame, front.done
            if front.stream is not None:
                assert ctx is not None
                events = run_stream_mapper(front.stream, events, ctx)
        started = False
        self.metrics.streams += 1
        try:
            async for event in events:
                if event.__class__ is RecordOnly:
                    continue  # for the record, which is not being kept: nobody else reads it
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
            if ex.tape is not None:
                ex.tape.delivered = True
        except ProxyError as exc:
            if not started:
                raise
            log.warning("request %s: stream ended by an error: %s", ex.info.id, exc.full_message())
            if ex.tape is not None:
                ex.tape.cut(exc.message)
            event = front.error_event(exc, ex.info.administrator) if front is not None else sse.frame(exc.body(ex.info.administrator))
            await send({"type": "http.response.body", "body": event, "more_body": True})
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

    async def _error(self, plan: Plan, ex: Exchange, resp: UpstreamResponse, route: Route, ctx: MapContext | None, send: Send) -> None:
        """The upstream's own error: its status kept, its message carried through (translated where a
        route or front speaks another API)."""
        data = await resp.read(MAX_ERROR_BODY)
        ex.t_ready = time.perf_counter()
        if ex.tape is not None:
            ex.tape.error = data.decode("utf-8", "replace")[:2000]
        front = plan.front
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
            await send_json(ex, resp.status, parsed, send, extra)
            return
        headers = response_headers(resp.headers, keep_length=False)
        headers.append((b"content-length", str(len(data)).encode()))
        headers.append((b"x-mooltiproxy-overhead-ms", ex.overhead_ms()))
        ex.done = True
        await send({"type": "http.response.start", "status": resp.status, "headers": headers})
        await send({"type": "http.response.body", "body": data})


async def _checked(events: AsyncIterator[Any]) -> AsyncGenerator[Any, None]:
    try:
        async for event in events:
            yield event
    except sse.NotJSON as exc:
        raise UpstreamError(f"The upstream's stream could not be read: {exc}.", code="upstream_bad_stream") from None


async def _aiter(items: list[Any]) -> AsyncGenerator[Any, None]:
    for item in items:
        yield item


def _length(resp: UpstreamResponse) -> int:
    for k, v in resp.headers:
        if k == b"content-length":
            return int(v) if v.isdigit() else -1
    return -1


def is_stream(resp: UpstreamResponse) -> bool:
    for k, v in resp.headers:
        if k == b"content-type":
            return v.lower().startswith(_STREAM_TYPES)
    return False


async def send_json(ex: Exchange | None, status: int, answer: Any, send: Send, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    body = orjson.dumps(answer)
    headers = [*_JSON_HEADERS, (b"content-length", str(len(body)).encode())]
    if ex is not None:
        headers.append((b"x-mooltiproxy-overhead-ms", ex.overhead_ms()))
    if extra:
        headers.extend(extra)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
