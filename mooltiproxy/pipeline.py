"""One exchange end to end: read the body, pick target and route, map, send upstream, map back, answer.

Bytes that need no translation are relayed as they arrive, never buffered whole. Translation happens
only where a route names a mapper. The client going away cancels the upstream request at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

import orjson
from starlette.types import Receive, Scope, Send

from . import sse
from .context import RequestInfo
from .errors import BadRequest, ClientGone, MapperFailed, MethodNotAllowed, PayloadTooLarge, ProxyError, UpstreamError
from .mapping import MapContext, Mapper
from .router import Router
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
_OWN_PATHS = {"/health": "GET", "/v1/models": "GET"}


class Exchange:
    """The state of one request as it travels; what the access log and the recorder read."""

    __slots__ = (
        "body",
        "client_gone",
        "ctx",
        "done",
        "info",
        "json",
        "route",
        "scope",
        "status",
        "stream",
        "t_ready",
        "t_sent",
        "target",
    )

    def __init__(self, info: RequestInfo, scope: Scope, body: bytes, parsed: Any) -> None:
        self.info = info
        self.scope = scope
        self.body = body
        self.json = parsed
        self.target: Target | None = None
        self.route: Route | None = None
        self.ctx: MapContext | None = None
        self.stream = False
        self.t_sent = 0.0
        self.t_ready = 0.0
        self.done = False
        self.client_gone = False
        self.status = 0

    def overhead_ms(self) -> bytes:
        """Time spent in the proxy so far, the upstream's own time taken out."""
        now = time.perf_counter()
        upstream = (self.t_ready - self.t_sent) if self.t_sent else 0.0
        return b"%.3f" % ((now - self.info.start - upstream) * 1000)


class Pipeline:
    """The ASGI app behind every proxied path."""

    def __init__(self, router: Router, client: Callable[[], UpstreamClient], max_body: int) -> None:
        self.router = router
        self.client = client
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        info: RequestInfo = scope["mooltiproxy"]
        path, method = scope["path"], scope["method"]
        own = _OWN_PATHS.get(path)
        if own is not None and own != method and path != "/v1/models":
            raise MethodNotAllowed(f"{path} answers {own} only, not {method}.", headers=[("Allow", own)])

        target_header = None
        declared = None
        for name, value in scope["headers"]:
            if name == b"target":
                target_header = value.decode("latin-1").strip()
            elif name == b"content-length":
                declared = int(value) if value.isdigit() else None
        if path == "/v1/models" and method == "GET":
            chosen = self.router.pick_if_any(target_header)
            if chosen is None or path not in chosen.routes:
                ex = Exchange(info, scope, b"", None)
                await self._send_json(ex, 200, self.router.listing(), send)
                return
        body = await read_body(receive, self.max_body, declared)
        parsed = parse_json(body) if body else None

        model = parsed.get("model") if isinstance(parsed, dict) else None
        target, alias = self.router.pick(target_header, model if isinstance(model, str) else None)
        info.target = target.name
        route = target.route(path, method)
        if alias is not None and alias.model and isinstance(parsed, dict):
            parsed["model"] = alias.model
            body = orjson.dumps(parsed)

        ex = Exchange(info, scope, body, parsed)
        ex.target, ex.route = target, route
        ex.stream = isinstance(parsed, dict) and parsed.get("stream") is True
        await self._guarded(ex, receive, send)

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
        finally:
            watcher.cancel()

    async def _exchange(self, ex: Exchange, send: Send) -> None:
        target, route = ex.target, ex.route
        assert target is not None and route is not None
        body = ex.body
        headers = forward_headers(ex.scope["headers"], target.headers)
        if route.request is not None or route.answer is not None or route.stream is not None or route.error is not None:
            ex.ctx = MapContext(
                target=target,
                path=route.inbound,
                model=ex.json.get("model") if isinstance(ex.json, dict) else None,
                request_id=ex.info.id,
                stream=ex.stream,
                prompter=target.prompter,
                request=ex.json,
            )
        if route.request is not None:
            assert ex.ctx is not None
            if not isinstance(ex.json, dict):
                raise BadRequest(f"{route.inbound} needs a JSON object as its body.", code="invalid_json")
            body = orjson.dumps(await call_mapper(route.request, ex.json, ex.ctx))
            headers = [h for h in headers if h[0] != "content-type"]
            headers.append(("content-type", "application/json"))

        upstream_path = route.stream_path if ex.stream and route.stream_path else route.path
        qs = ex.scope.get("query_string")
        url = target.url + upstream_path + ("?" + qs.decode("latin-1") if qs else "")
        ex.t_sent = time.perf_counter()
        resp = await self.client().send(
            ex.scope["method"], url, headers, body, timeout=target.timeout, connect_timeout=target.connect_timeout,
            target=target.name,
        )
        ex.t_ready = time.perf_counter()
        try:
            if ex.ctx is not None:
                ex.ctx.upstream_status = resp.status
                ex.ctx.upstream_headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in resp.headers}
            content_type = _header(resp.headers, b"content-type")
            if resp.status >= 400:
                await self._error(ex, resp, send)
            elif content_type.startswith(_STREAM_TYPES) and route.stream is not None:
                await self._mapped_stream(ex, resp, send)
            elif route.answer is not None and not content_type.startswith(_STREAM_TYPES):
                await self._mapped_answer(ex, resp, send)
            else:
                await self._relay(ex, resp, send)
        finally:
            ex.info.upstream_ms = (time.perf_counter() - ex.t_sent) * 1000
            await resp.aclose()

    async def _relay(self, ex: Exchange, resp: UpstreamResponse, send: Send) -> None:
        """Bytes in, bytes out, each chunk as it arrives."""
        headers = response_headers(resp.headers, keep_length=True)
        chunks = resp.chunks()
        first = await anext(chunks, b"")
        ex.t_ready = time.perf_counter()
        headers.append((b"x-mooltiproxy-overhead-ms", ex.overhead_ms()))
        await send({"type": "http.response.start", "status": resp.status, "headers": headers})
        try:
            if first:
                await send({"type": "http.response.body", "body": first, "more_body": True})
            async for chunk in chunks:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except UpstreamError as exc:
            log.warning("request %s: %s", ex.info.id, exc.message)
            if _header(resp.headers, b"content-type").startswith(b"text/event-stream"):
                await send({"type": "http.response.body", "body": sse.frame(exc.body()), "more_body": True})
        ex.done = True
        await send({"type": "http.response.body", "body": b""})

    async def _mapped_answer(self, ex: Exchange, resp: UpstreamResponse, send: Send) -> None:
        route, ctx = ex.route, ex.ctx
        assert route is not None and route.answer is not None and ctx is not None
        data = await resp.read()
        ex.t_ready = time.perf_counter()
        answer = await call_mapper(route.answer, upstream_json(data, ex), ctx)
        await self._send_json(ex, resp.status, answer, send)

    async def _mapped_stream(self, ex: Exchange, resp: UpstreamResponse, send: Send) -> None:
        """Upstream events → stream mapper → OpenAI events; the status line waits for the first event,
        so an error the upstream reports before any token still becomes a proper HTTP error."""
        route, ctx = ex.route, ex.ctx
        assert route is not None and route.stream is not None and ctx is not None
        events = _stream_mapper(route.stream, sse.events(resp.chunks(), route.stream_format), ctx)
        started = False
        try:
            async for event in events:
                if not started:
                    ex.t_ready = time.perf_counter()
                    await self._start_stream(ex, send)
                    started = True
                await send({"type": "http.response.body", "body": sse.frame(event), "more_body": True})
            if not started:
                await self._start_stream(ex, send)
                started = True
            await send({"type": "http.response.body", "body": sse.DONE, "more_body": True})
        except ProxyError as exc:
            if not started:
                raise
            log.warning("request %s: stream ended by an error: %s", ex.info.id, exc.message)
            await send({"type": "http.response.body", "body": sse.frame(exc.body()), "more_body": True})
        finally:
            await events.aclose()
        ex.done = True
        await send({"type": "http.response.body", "body": b""})

    async def _start_stream(self, ex: Exchange, send: Send) -> None:
        headers = [*_SSE_HEADERS, (b"x-mooltiproxy-overhead-ms", ex.overhead_ms())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})

    async def _error(self, ex: Exchange, resp: UpstreamResponse, send: Send) -> None:
        """The upstream's own error: its status kept, its message carried through."""
        route = ex.route
        assert route is not None
        data = await resp.read()
        ex.t_ready = time.perf_counter()
        if route.error is not None and ex.ctx is not None:
            try:
                parsed: Any = orjson.loads(data)
            except orjson.JSONDecodeError:
                parsed = data.decode("utf-8", "replace")
            answer = await call_mapper(route.error, parsed, ex.ctx)
            extra = [(k, v) for k, v in resp.headers if k == b"retry-after"]
            await self._send_json(ex, resp.status, answer, send, extra)
            return
        headers = response_headers(resp.headers, keep_length=False)
        headers.append((b"content-length", str(len(data)).encode()))
        headers.append((b"x-mooltiproxy-overhead-ms", ex.overhead_ms()))
        ex.done = True
        await send({"type": "http.response.start", "status": resp.status, "headers": headers})
        await send({"type": "http.response.body", "body": data})

    async def _send_json(
        self, ex: Exchange, status: int, answer: Any, send: Send, extra: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        body = orjson.dumps(answer)
        headers = [*_JSON_HEADERS, (b"content-length", str(len(body)).encode()), (b"x-mooltiproxy-overhead-ms", ex.overhead_ms())]
        if extra:
            headers.extend(extra)
        ex.done = True
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


async def _stream_mapper(mapper: Mapper, events: AsyncIterator[Any], ctx: MapContext) -> AsyncGenerator[Any, None]:
    """Run a stream mapper, turning its failures into ``ProxyError`` the way ``call_mapper`` does."""
    gen = mapper.stream(_checked(events), ctx)
    try:
        async for event in gen:
            yield event
    except ProxyError:
        raise
    except Exception as exc:
        raise mapper_failed(mapper, exc) from None
    finally:
        aclose = getattr(gen, "aclose", None)
        if aclose is not None:
            await aclose()


async def _checked(events: AsyncIterator[Any]) -> AsyncIterator[Any]:
    try:
        async for event in events:
            yield event
    except sse.NotJSON as exc:
        raise UpstreamError(f"The upstream's stream could not be read: {exc}.", code="upstream_bad_stream") from None


async def call_mapper(mapper: Mapper, body: Any, ctx: MapContext) -> Any:
    """Call a mapper; ``MappingError`` (and any ``ProxyError``) passes through, anything else is the mapper's bug."""
    try:
        return await mapper(body, ctx)
    except ProxyError:
        raise
    except Exception as exc:
        raise mapper_failed(mapper, exc) from None


def mapper_failed(mapper: Mapper, exc: Exception) -> MapperFailed:
    log.error("mapper %s failed", mapper.name, exc_info=exc)
    return MapperFailed(
        f"The mapper '{mapper.name}' failed with {type(exc).__name__}: {exc}. This is a bug in the mapper; "
        f"the proxy's log has its traceback."
    )


async def read_body(receive: Receive, limit: int, declared: int | None) -> bytes:
    """The whole request body, refused with 413 as soon as it is known to be over ``limit``."""
    if declared is not None and declared > limit:
        raise _too_large(limit)
    message = await receive()
    body: bytes = message.get("body", b"")
    if not message.get("more_body"):
        if len(body) > limit:
            raise _too_large(limit)
        return body
    parts = [body]
    size = len(body)
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone("The client disconnected while sending its request.")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        parts.append(chunk)
        if not message.get("more_body"):
            return b"".join(parts)


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"The request body is larger than the proxy accepts ({limit} bytes; server.max_body).")


def parse_json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(
            f"The request body is not valid JSON ({exc}). Send a JSON object with Content-Type: application/json.",
            code="invalid_json",
        ) from None


def upstream_json(data: bytes, ex: Exchange) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        target = ex.target.name if ex.target else "?"
        raise UpstreamError(
            f"The upstream of target '{target}' answered with something that is not JSON: {data[:100]!r}.",
            code="upstream_bad_answer",
        ) from None


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes:
    for k, v in headers:
        if k == name:
            return v.lower()
    return b""
