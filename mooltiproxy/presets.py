"""Target presets: what ``type:`` fills in — the routes of a backend API and the options it accepts.

A preset route maps an inbound (OpenAI-dialect) path onto the backend's path with the built-in mappers
of ``mappers/<type>.py``. A target's own ``routes:`` are merged over these key by key.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .config import RouteConfig


@dataclass(frozen=True)
class Option:
    validate: Callable[[Any], Any]
    default: Any
    doc: str


@dataclass(frozen=True)
class Preset:
    routes: dict[str, RouteConfig]
    options: dict[str, Option] = field(default_factory=dict)
    needs_prompter: bool = False
    auth: str = "bearer"  # how the target's key is sent: "bearer" (Authorization) or "x-api-key"


_PASS = RouteConfig()

PRESETS: dict[str, Preset] = {
    "openai": Preset(
        routes={
            "/v1/chat/completions": _PASS,
            "/v1/completions": _PASS,
            "/v1/embeddings": _PASS,
            "/v1/models": RouteConfig(method="GET"),
        },
    ),
}
