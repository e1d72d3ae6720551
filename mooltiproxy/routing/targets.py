"""Runtime targets: a target's config joined with its backend's declaration, its mappers resolved, its key read.

``build_targets`` runs once per config load (``mooltiproxy.load``), and every problem it finds is
reported together with the file's own, each under the config path that caused it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

import voluptuous as vol

from ..backends import registry
from ..backends.spec import Backend, Option, RouteSpec
from ..config.model import Config, TargetConfig
from ..config.validators import did_you_mean, format_path
from ..errors import BadRequest, MethodNotAllowed, NotFound
from ..translate.characters import Card, CardError, load_card
from ..translate.mapping import Mapper, MapperLookupError, mapper
from ..translate.prompting import Prompter, PrompterError, load_prompter, preset_names


@dataclass(frozen=True, slots=True)
class Route:
    """One inbound path of a target: where it goes upstream and which mappers translate it."""

    inbound: str
    method: str
    path: str
    stream_path: str | None = None
    request: Mapper | None = None
    answer: Mapper | None = None
    stream: Mapper | None = None
    error: Mapper | None = None
    stream_format: str = "sse"

    @property
    def passthrough(self) -> bool:
        return self.request is None and self.answer is None and self.stream is None


@dataclass(frozen=True)
class Target:
    name: str
    type: str
    url: str
    timeout: float
    connect_timeout: float
    headers: tuple[tuple[str, str], ...]  # sent upstream on every request (the target's key among them)
    routes: dict[str, Route]
    options: Mapping[str, Any] = field(default_factory=dict)
    prompter: Prompter | None = None
    character: Card | None = None  # laid into every chat, unless a request picks another
    characters: Mapping[str, Card] = field(default_factory=dict)  # what the x-character header may pick
    user_name: str = "User"
    config: TargetConfig | None = None
    auth: str = "bearer"  # how a key is sent upstream: bearer (Authorization) or x-api-key
    forward_client_key: bool = False  # auth.mode passthrough: the client's own key goes upstream in place of ours
    max_connections: int = 1024  # requests in flight to the upstream at once
    backend: Backend | None = None  # what its type declares (None for a dynamic host)

    def upstream_headers(self, client_key: str | None) -> tuple[tuple[str, str], ...]:
        """The headers sent upstream on every request, with the client's key in place of the target's when forwarded."""
        if not (self.forward_client_key and client_key):
            return self.headers
        return (*(h for h in self.headers if h[0] not in ("authorization", "x-api-key")), auth_header(self.auth, client_key))

    def pick_character(self, name: str | None) -> Card | None:
        """The card for a request with this ``x-character`` header (None: the target's own)."""
        if not name:
            return self.character
        card = self.characters.get(name)
        if card is None:
            allowed = ", ".join(self.characters) or "none"
            raise BadRequest(
                f"Character '{name}' (x-character header) is not one target '{self.name}' offers{did_you_mean(name, self.characters)}; "
                f"it offers: {allowed}.",
                param="x-character",
            )
        return card

    def route(self, path: str, method: str) -> Route:
        route = self.routes.get(path)
        if route is None:
            known = ", ".join(sorted(self.routes)) or "none"
            raise NotFound(
                f"Target '{self.name}' has no route for {path}. Its routes: {known}.", code="route_not_found"
            )
        if method != route.method:
            raise MethodNotAllowed(
                f"Target '{self.name}' serves {path} with {route.method}, not {method}.", headers=[("Allow", route.method)]
            )
        return route


def auth_header(style: str, key: str) -> tuple[str, str]:
    """A key as an upstream expects it: ``x-api-key: …`` (Anthropic) or ``Authorization: Bearer …``."""
    return ("x-api-key", key) if style == "x-api-key" else ("authorization", f"Bearer {key}")


def build_targets(config: Config) -> tuple[dict[str, Target], list[str]]:
    """The config's targets as the proxy runs them (mappers imported, prompters compiled, cards read), and every
    problem found, each under the config path that caused it."""
    problems: list[str] = []
    targets = {}
    for name, tc in config.targets.items():
        target = _build_target(config, tc, problems)
        if target is not None:
            targets[name] = target
    return targets, problems


def _build_target(config: Config, tc: TargetConfig, problems: list[str]) -> Target | None:
    at = ["targets", tc.name]
    try:
        backend = registry.find(tc.type, config.base_dir)
    except registry.BackendLookupError as exc:
        problems.append(f"{format_path([*at, 'type'])}: {exc}")
        return None

    headers: list[tuple[str, str]] = []
    if tc.api_key:
        headers.append(auth_header(backend.auth, tc.api_key))
    own_code = any(getattr(rc, kind) for rc in tc.routes.values() for kind in _MAPPER_KINDS)
    options = _options(tc, backend.options, at, problems, open_ended=own_code)
    headers.extend((name, str(options[option])) for name, option in backend.headers.items() if options.get(option) is not None)
    headers.extend((k.lower(), v) for k, v in tc.headers.items())

    character = _card(config, tc.character, [*at, "character"], problems) if tc.character else None
    characters = {name: _card(config, path, [*at, "characters", name], problems) for name, path in tc.characters.items()}
    prompter = None
    try:
        prompter = load_prompter(tc.prompter, base_dir=config.base_dir, extra_stop=tc.stop)
    except PrompterError as exc:
        problems.append(f"{format_path([*at, 'prompter'])}: {exc}")
    else:
        if prompter is None and (backend.needs_prompter or options.get("raw_prompt")):
            problems.append(
                f"{format_path([*at, 'prompter'])}: type {tc.type}{' with raw_prompt' if options.get('raw_prompt') else ''} "
                f"takes one prompt string, so chat messages need a prompter "
                f"to lay them out; name one of {', '.join(preset_names())}, a .jinja file or a tokenizer_config.json"
            )

    merged = dict(backend.routes)
    for path, user in tc.routes.items():
        base = merged.get(path, RouteSpec())
        merged[path] = replace(base, **{f.name: getattr(user, f.name) for f in fields(user) if getattr(user, f.name) is not None})
    routes: dict[str, Route] = {}
    for path, spec in merged.items():
        route_at = [*at, "routes", path]
        mappers: dict[str, Mapper | None] = {}
        for kind in _MAPPER_KINDS:
            ref = getattr(spec, kind)
            mappers[kind] = None
            if ref:
                try:
                    mappers[kind] = mapper(ref, kind=kind, base_dir=config.base_dir)
                except MapperLookupError as exc:
                    problems.append(f"{format_path([*route_at, kind])}: {exc}")
        routes[path] = Route(inbound=path, method=spec.method, path=spec.path or path, stream_path=spec.stream_path,
                             stream_format=spec.stream_format, **mappers)
    return Target(
        name=tc.name,
        type=tc.type,
        url=tc.url,
        timeout=tc.timeout or config.server.timeout,
        connect_timeout=config.server.connect_timeout,
        headers=tuple(headers),
        routes=routes,
        options=options,
        prompter=prompter,
        character=character,
        characters={k: v for k, v in characters.items() if v is not None},
        user_name=tc.user_name,
        config=tc,
        auth=backend.auth,
        forward_client_key=tc.forward_client_key,
        max_connections=tc.max_connections,
        backend=backend,
    )


_MAPPER_KINDS = ("request", "answer", "stream", "error")
_STREAMED = ("/v1/chat/completions", "/v1/completions")


def notes(target: Target) -> list[str]:
    """What ``mooltiproxy check`` tells about a target that runs but may not do what its author expects."""
    out = []
    for path, route in target.routes.items():
        if path in _STREAMED and route.answer is not None and route.stream is None:
            out.append(f"targets.{target.name}.routes.{path}: no stream mapper; a \"stream\": true request gets the whole answer "
                       f"as one event stream once it is complete")
    declared = target.backend.options if target.backend is not None else {}
    for key in target.options:
        if key not in declared:
            out.append(f"targets.{target.name}.options.{key}: not an option of type {target.type}; passed to the target's own "
                       f"mappers as it is")
    return out


def _card(config: Config, path: str, at: list[str], problems: list[str]) -> Card | None:
    try:
        return load_card(config.resolve_path(path))
    except CardError as exc:
        problems.append(f"{format_path(at)}: {exc}")
        return None


def _options(tc: TargetConfig, known: Mapping[str, Option], at: list[str], problems: list[str], *,
             open_ended: bool) -> dict[str, Any]:
    """The target's options, validated by its type's declarations. A target whose own routes name mappers may also
    carry options its type does not know, for those mappers to read (``ctx.target.options``), as they are."""
    out = {name: opt.default for name, opt in known.items()}
    for key, value in tc.options.items():
        opt = known.get(key)
        if opt is None and open_ended:
            out[key] = value
            continue
        if opt is None:
            names = ", ".join(known) or "none"
            problems.append(
                f"{format_path([*at, 'options', key])}: unknown option for type {tc.type}{did_you_mean(key, known)}; "
                f"its options: {names}"
            )
            continue
        try:
            out[key] = opt.validate(value)
        except vol.Invalid as exc:
            problems.append(f"{format_path([*at, 'options', key])}: {exc.msg}")
    return out
