"""What one request is to do, decided once before anything goes upstream: the settings it runs on, the
target and route, the front it came through (its request already in the OpenAI shape), the targets to
fall back on, whether it streams and is recorded, the character card, the checked address of a dynamic
host. A ``Plan`` does not change; what does (timings, the tape) is the ``Exchange``'s."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, NamedTuple

import orjson
from starlette.types import Scope

from ..backends.spec import Dialect
from ..config.model import DynamicHost
from ..errors import BadRequest, Forbidden, MethodNotAllowed
from ..http.context import RequestInfo
from ..routing.fronts import FrontRoute
from ..routing.targets import Route, Target
from ..translate.characters import Card
from ..translate.mapping import MapContext, call_mapper

if TYPE_CHECKING:
    from ..state.settings import Settings

log = logging.getLogger("mooltiproxy")

CHAT, COMPLETION = "/v1/chat/completions", "/v1/completions"  # the OpenAI routes recorded (besides the dialects')


class Asked(NamedTuple):
    """What a request's headers ask of the proxy (read once, in one pass over them)."""

    target: str | None  # the `target` header
    character: str | None  # x-character
    record: bool  # x-mooltiproxy-record: off opts out
    length: int | None  # content-length
    conversation: str | None  # x-mooltiproxy-conversation: the client's name for the conversation, for the record

    @classmethod
    def of(cls, scope: Scope) -> Asked:
        target = character = length = conversation = None
        record = True
        for name, value in scope["headers"]:
            if name == b"target":
                target = value.decode("latin-1").strip()
            elif name == b"content-length":
                length = int(value) if value.isdigit() else None
            elif name == b"x-character":
                character = value.decode("latin-1").strip()
            elif name == b"x-mooltiproxy-record":
                record = value.strip().lower() not in (b"off", b"0", b"false", b"no")
            elif name == b"x-mooltiproxy-conversation":
                conversation = value.decode("latin-1").strip() or None
        return cls(target, character, record, length, conversation)


# A NamedTuple: immutable as a frozen dataclass, built per request at a tuple's cost (a frozen dataclass sets
# each field through object.__setattr__, a measurable part of a request on S2's near-free upstream).
class Plan(NamedTuple):
    settings: Settings
    target: Target  # the one chosen; the first of the candidates
    route: Route
    front: FrontRoute | None
    candidates: tuple[tuple[Target, Route], ...]  # the target, then the fallbacks the key may use
    body: bytes  # what goes upstream where nothing translates
    json: Any  # the request parsed, in the OpenAI shape once a front has translated it
    stream: bool
    character: Card | None
    connect_to: str | None  # a dynamic host's checked address, connected to in place of its name
    front_state: Mapping[str, Any]  # what the front's request mapper noted for its answer mapper
    recorded_as: str | None  # the endpoint its record is made as; None: not recorded
    dialect: Dialect | None  # how its relayed bytes are read for the record, in another API than OpenAI's
    dynamic_host: DynamicHost | None  # the dynamic: host it goes to, whose address ``complete`` checks
    conversation: str | None  # the conversation the client named, for the record

    @property
    def pending(self) -> bool:
        """Whether ``complete`` has something to do (a front to apply, an address to check)."""
        return self.front is not None or self.dynamic_host is not None

    def mapped(self, route: Route) -> bool:
        """Whether anything translates on this route: a mapper, or the front it came through."""
        return self.front is not None or route.request is not None or route.answer is not None or route.stream is not None \
            or route.error is not None

    def context(self, info: RequestInfo, target: Target, route: Route, path: str) -> MapContext:
        """The MapContext of one attempt on ``target``."""
        return MapContext(target=target, path=route.inbound if self.front is not None else path,
                          model=self.json.get("model") if isinstance(self.json, dict) else None, request_id=info.id,
                          stream=self.stream, prompter=target.prompter, character=self.character, request=self.json,
                          state=dict(self.front_state))


def make(settings: Settings, info: RequestInfo, scope: Scope, asked: Asked, body: bytes, parsed: Any, *, recording: bool) -> Plan:
    """The plan for a request whose body has arrived (``parsed``: its JSON, if any). What needs waiting for (a
    front's translation of the request, a dynamic host's address) is ``complete``'s: ``Plan.pending`` says
    whether there is any, and the common request, which has none, takes no coroutine for it."""
    path, method = scope["path"], scope["method"]
    dynamic = settings.dynamic
    destination = dynamic.match(path, method, scope.get("raw_path")) if dynamic.claims(path) else None
    front = None
    if destination is not None:  # POST /{host}/{path}: a host from the dynamic: list, relayed as it is
        target, route = destination.target, destination.route
        info.target = target.name
        may_use(info, target)
    else:
        model = parsed.get("model") if isinstance(parsed, dict) else None
        target, alias = settings.router.pick(asked.target, model if isinstance(model, str) else None, info.key_targets)
        info.target = target.name
        may_use(info, target)
        route, front = _route(settings, target, path, method)
        if alias is not None and alias.model and isinstance(parsed, dict):
            parsed["model"] = alias.model
            body = orjson.dumps(parsed)
    info.route = route.inbound
    dialect = settings.dialects.get(route.inbound)
    recorded = recording and asked.record and (route.inbound in (CHAT, COMPLETION) or dialect is not None)
    return Plan(settings, target, route, front, _candidates(settings, info, target, route), body, parsed,
                isinstance(parsed, dict) and parsed.get("stream") is True, target.pick_character(asked.character), None, _NOTHING,
                route.inbound if recorded else None, dialect, destination.host if destination is not None else None, asked.conversation)


async def complete(plan: Plan, info: RequestInfo, path: str, served: Callable[[Target], Awaitable[str | None]]) -> Plan:
    """The plan with what had to be waited for: the front's request in the OpenAI shape (once, whichever target ends
    up answering), named for the model the target serves when the front's API names none (``served``), and a dynamic
    host's checked address."""
    if plan.dynamic_host is not None:
        plan = plan._replace(connect_to=await plan.settings.dynamic.address(plan.dynamic_host))
    if plan.front is not None:
        parsed = plan.json
        ctx = MapContext(target=plan.target, path=path, model=parsed.get("model") if isinstance(parsed, dict) else None,
                         request_id=info.id, stream=plan.stream, prompter=plan.target.prompter, character=plan.character,
                         request=parsed)
        parsed = await call_mapper(plan.front.request, parsed, ctx)
        if isinstance(parsed, dict) and not parsed.get("model"):
            model = await served(plan.target)
            if model is not None:
                parsed["model"] = model
        plan = plan._replace(json=parsed, body=orjson.dumps(parsed), stream=isinstance(parsed, dict) and parsed.get("stream") is True,
                             front_state=ctx.state)
    return plan


_NOTHING: Mapping[str, Any] = MappingProxyType({})


def _route(settings: Settings, target: Target, path: str, method: str) -> tuple[Route, FrontRoute | None]:
    """The target's own route for the path, else a front riding on one of its OpenAI routes."""
    if path not in target.routes:
        front = settings.fronts.get(path)
        if front is not None and front.base in target.routes:
            if method != "POST":
                raise MethodNotAllowed(f"{path} answers POST only, not {method}.", headers=[("Allow", "POST")])
            return target.routes[front.base], front
    return target.route(path, method), None


def _candidates(settings: Settings, info: RequestInfo, target: Target, route: Route) -> tuple[tuple[Target, Route], ...]:
    """The chosen target, then its fallbacks that serve the same route and that the request's key may use
    (a fallback is no way around a key's ``targets:``; one it may not use is passed over, and logged)."""
    out = [(target, route)]
    allowed = info.key_targets
    for name in target.config.fallbacks if target.config is not None else ():
        fallback = settings.router.targets.get(name)
        other = fallback.routes.get(route.inbound) if fallback is not None else None
        if fallback is None or other is None or other.method != route.method:
            continue
        if allowed is not None and name not in allowed:
            log.info("request %s: fallback %s passed over: the key '%s' may not use it", info.id, name, info.key_name)
            continue
        out.append((fallback, other))
    return tuple(out)


def may_use(info: RequestInfo, target: Target) -> None:
    if info.key_targets is not None and target.name not in info.key_targets:
        raise Forbidden(
            f"The key '{info.key_name}' may not use target '{target.name}'; it may use: {', '.join(sorted(info.key_targets)) or 'none'}.",
            code="target_not_allowed",
        )


def json_object(plan: Plan, route: Route) -> dict[str, Any]:
    """The request as a JSON object, which a request mapper needs."""
    if not isinstance(plan.json, dict):
        raise BadRequest(f"{route.inbound} needs a JSON object as its body.", code="invalid_json")
    return plan.json
