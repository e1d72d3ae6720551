"""Fronts in use: the APIs the proxy answers in besides OpenAI's, as the backends declare them, with their
mappers resolved once. A request to a front's path rides on the OpenAI route its front names; a target
that has a route for that path itself (a TGI target and ``/generate``) is used directly instead."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ..backends import registry
from ..backends.spec import Backend
from ..errors import ProxyError
from ..translate.mapping import Mapper, mapper


@dataclass(frozen=True)
class FrontRoute:
    path: str
    base: str  # the OpenAI route it rides on
    request: Mapper
    answer: Mapper | None
    stream: Mapper | None
    error: Mapper | None
    frame: Callable[[Any], bytes]
    done: bytes
    error_body: Callable[[ProxyError, bool], Any]

    def error_event(self, exc: ProxyError, full: bool) -> bytes:
        """An error inside a stream whose status line is gone, in the front's own shape."""
        return self.frame(self.error_body(exc, full))


def build_fronts(backends: Iterable[Backend]) -> dict[str, FrontRoute]:
    out = {}
    for path, front in registry.fronts(backends).items():
        out[path] = FrontRoute(
            path=path, base=front.base, request=mapper(front.request, kind="request"),
            answer=mapper(front.answer, kind="answer") if front.answer else None,
            stream=mapper(front.stream, kind="stream") if front.stream else None,
            error=mapper(front.error, kind="error") if front.error else None,
            frame=front.frame, done=front.done, error_body=front.error_body,
        )
    return out
