"""Fronts: other APIs the proxy answers in, each riding on an OpenAI route of the target.

A front translates its own request into the OpenAI shape, lets the target's route do the rest, and
translates the OpenAI answer, stream or error back. A target that has a route for the front's path
itself (a TGI target and ``/generate``) is used directly instead.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..translate.mapping import Mapper, resolve


@dataclass(frozen=True)
class Front:
    path: str
    base: str  # the OpenAI-dialect route the front rides on
    request: Mapper
    answer: Mapper | None
    stream: Mapper | None
    error: Mapper | None
    framing: str  # how events are written to the client: see sse.FRAMINGS


_TGI = ("/v1/completions", "tgi.front_request", "tgi.front_answer", "tgi.front_stream", "tgi.front_error", "tgi")
_SPECS = {
    "/generate": _TGI,
    "/generate_stream": _TGI,
    "/": _TGI,  # TGI's compat route, which the text-generation client posts to
    "/v1/messages": ("/v1/chat/completions", "anthropic.front_request", "anthropic.front_answer", "anthropic.front_stream",
                     "anthropic.front_error", "anthropic"),
}

# APIs the recorder reads when their bytes are relayed untranslated (a Messages request to an Anthropic
# target): their request and answer, turned into the OpenAI shape a record is made from.
DIALECTS = {"/v1/messages": ("anthropic.to_openai_request", "anthropic.to_openai_answer")}


@dataclass(frozen=True)
class Dialect:
    request: Callable[[Any], dict[str, Any]]
    answer: Callable[[Any], dict[str, Any]]


def load_dialects() -> dict[str, Dialect]:
    return {path: Dialect(_function(request), _function(answer)) for path, (request, answer) in DIALECTS.items()}


def _function(name: str) -> Callable[[Any], Any]:
    module, _, attr = name.rpartition(".")
    return getattr(importlib.import_module(f"mooltiproxy.mappers.{module}"), attr)  # type: ignore[no-any-return]


def load_fronts() -> dict[str, Front]:
    fronts = {}
    for path, (base, request, answer, stream, error, framing) in _SPECS.items():
        fronts[path] = Front(
            path=path,
            base=base,
            request=resolve(request, kind="request"),
            answer=resolve(answer, kind="answer") if answer else None,
            stream=resolve(stream, kind="stream") if stream else None,
            error=resolve(error, kind="error") if error else None,
            framing=framing,
        )
    return fronts
