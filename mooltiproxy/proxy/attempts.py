"""Getting an answer from upstream: the planned target, again on a failure if it allows retries, then its
fallbacks, until one answers without a connect error, a 5xx or a 429, or nothing is left (its failure is
then the answer); several calls at once when a request mapper fans out."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import orjson

from ..errors import BadRequest, UpstreamError
from ..ops.metrics import Metrics
from ..routing.targets import Route, Target
from ..translate.mapping import Fanout, MapContext, call_mapper
from ..upstream.client import RawHeaderView, UpstreamClient, UpstreamResponse, forward_headers
from .cooldowns import Cooldowns
from .exchange import Exchange
from .plan import Plan, json_object

log = logging.getLogger("mooltiproxy")

MAX_RETRY_WAIT = 30.0  # longest Retry-After honoured before moving on to a fallback


@dataclass(slots=True)
class Answer:
    """One upstream response to answer with (its status may be an error the client is to get)."""

    resp: UpstreamResponse
    target: Target
    route: Route
    ctx: MapContext | None  # None where nothing translates


@dataclass(slots=True)
class Spread:
    """The responses of a request a mapper fanned out: one call per prompt and choice, answered as one."""

    responses: list[UpstreamResponse]
    ctxs: list[MapContext]
    prompts: int  # distinct prompts among the calls (usage counts each once)
    target: Target
    route: Route


class Attempts:
    def __init__(self, client: Callable[[], UpstreamClient], cooldowns: Cooldowns, metrics: Metrics, max_fanout: int) -> None:
        self.client = client
        self.cooldowns = cooldowns
        self.metrics = metrics
        self.max_fanout = max_fanout

    async def run(self, plan: Plan, ex: Exchange) -> Answer | Spread:
        """Each candidate in turn (the planned target, then its fallbacks), each with its retries. One loop in one
        coroutine: every await of a coroutine of its own costs each request again."""
        candidates = plan.candidates
        final = len(candidates) - 1
        for i, (target, route) in enumerate(candidates):
            left = self.cooldowns.cooling(target.name)
            if left and i != final:
                ex.tried.append(f"{target.name} (cooling down, {left:.0f} s left)")
                continue
            tc = target.config
            retries = tc.retries if tc is not None else 0
            attempt = 0
            while True:
                ex.info.target = target.name
                ctx = plan.context(ex.info, target, route, ex.scope["path"]) if plan.mapped(route) else None
                bodies, headers = await self._prepare(plan, ex, route, ctx)
                if len(bodies) > self.max_fanout:
                    raise BadRequest(
                        f"This request needs {len(bodies)} calls to target '{target.name}', which answers one prompt and one "
                        f"choice per call (a list of prompts times n), and the proxy makes at most {self.max_fanout} for one "
                        f"request (server.max_fanout). Send fewer prompts or a smaller n per request.",
                        code="too_many_upstream_calls")
                if len(bodies) > 1:
                    assert ctx is not None
                    return await self._spread(plan, ex, target, route, ctx, bodies, headers)  # several calls at once: no retry
                resp: UpstreamResponse | None = None
                failure: UpstreamError | None = None
                try:
                    resp = await self._send(plan, ex, target, route, ctx, bodies[0], headers)
                except UpstreamError as exc:
                    failure = exc
                if resp is not None and resp.status < 500 and resp.status != 429:
                    self.cooldowns.succeeded(target.name)
                    if ex.tried:
                        log.info("request %s answered by target %s after: %s", ex.info.id, target.name, ", ".join(ex.tried))
                    return Answer(resp, target, route, ctx)
                wait = _retry_after(resp) if resp is not None else None
                if wait is None:
                    wait = (tc.retry_backoff if tc is not None else 0.5) * 2 ** attempt
                again = attempt < retries and wait <= MAX_RETRY_WAIT
                self.metrics.failed(target.name)
                if tc is not None:
                    self.cooldowns.failed(target.name, after=tc.cooldown_after, cooldown=tc.cooldown)
                if not again and i == final:
                    if failure is not None:  # nothing left to try: this failure is the answer
                        raise failure
                    assert resp is not None
                    return Answer(resp, target, route, ctx)
                what = failure.code if failure is not None else str(resp.status if resp is not None else "?")
                ex.tried.append(f"{target.name} ({what})")
                log.warning("request %s: target %s failed (%s); %s", ex.info.id, target.name, what,
                            f"trying again in {wait:g} s" if again else "trying the next target")
                if resp is not None:
                    await resp.aclose()
                if not again:
                    break  # on to the next target
                await asyncio.sleep(wait)
                attempt += 1
        raise AssertionError("the last candidate answers or raises")

    async def _prepare(self, plan: Plan, ex: Exchange, route: Route, ctx: MapContext | None) -> tuple[list[bytes], list[tuple[str, str]]]:
        """The upstream bodies (several when a mapper fans out) and headers for one attempt."""
        target = ctx.target if ctx is not None else plan.target
        headers = forward_headers(ex.scope["headers"], target.upstream_headers(ex.info.client_key))
        bodies = [plan.body]
        if route.request is not None:
            assert ctx is not None
            out = await call_mapper(route.request, json_object(plan, route), ctx)
            bodies = [orjson.dumps(b) for b in out] if isinstance(out, Fanout) else [orjson.dumps(out)]
            if isinstance(out, Fanout):
                ctx.state["fanout_prompts"] = out.prompts
        if route.request is not None or plan.front is not None:
            headers = [h for h in headers if h[0] != "content-type"]
            headers.append(("content-type", "application/json"))
        return bodies, headers

    async def _send(self, plan: Plan, ex: Exchange, target: Target, route: Route, ctx: MapContext | None, body: bytes,
                    headers: list[tuple[str, str]]) -> UpstreamResponse:
        upstream_path = (ctx.upstream_path if ctx is not None else None) or (
            route.stream_path if plan.stream and route.stream_path else route.path)
        qs = ex.scope.get("query_string")
        url = target.url + upstream_path + ("?" + qs.decode("latin-1") if qs else "")
        if not ex.t_sent:
            ex.t_sent = time.perf_counter()
        pinned = {"connect_to": plan.connect_to} if plan.connect_to else {}
        resp = await self.client().send(
            ex.scope["method"], url, headers, body, timeout=target.timeout, connect_timeout=target.connect_timeout,
            target=target.name, max_connections=target.max_connections, **pinned,
        )
        ex.t_ready = time.perf_counter()
        # The upstream's time starts when the request's last byte left (the client knows it), not before
        # the proxy had built and written it.
        ex.t_sent = getattr(resp, "written_at", 0.0) or ex.t_sent
        if ctx is not None:
            ctx.upstream_status = resp.status
            ctx.upstream_headers = RawHeaderView(resp.headers)
        return resp

    async def _spread(self, plan: Plan, ex: Exchange, target: Target, route: Route, ctx: MapContext, bodies: list[bytes],
                      headers: list[tuple[str, str]]) -> Spread:
        """Several calls at once, each with its own copy of the context (the upstream's status and headers)."""
        ctxs = [replace(ctx) for _ in bodies]
        calls = [asyncio.ensure_future(self._send(plan, ex, target, route, c, b, headers)) for c, b in zip(ctxs, bodies, strict=True)]
        try:
            responses = list(await asyncio.gather(*calls))
        except BaseException:
            for call in calls:
                if call.done() and not call.cancelled() and call.exception() is None:
                    await call.result().aclose()
                else:
                    call.cancel()
            raise
        return Spread(responses, ctxs, int(ctx.state.get("fanout_prompts", len(bodies))), target, route)


def _retry_after(resp: UpstreamResponse) -> float | None:
    for k, v in resp.headers:
        if k == b"retry-after":
            try:
                return max(0.0, float(v))
            except ValueError:
                return None  # an HTTP date: rare from model servers, and the backoff serves
    return None
