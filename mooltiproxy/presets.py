"""Target presets: what ``type:`` fills in — the routes of a backend API and the options it accepts.

A preset route maps an inbound (OpenAI-dialect) path onto the backend's path with the built-in mappers
of ``mappers/<type>.py``. A target's own ``routes:`` are merged over these key by key.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .config import RouteConfig
from .validators import integer, optional_text


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
        options={
            "model": Option(optional_text, None, "model name sent upstream when a front's client names none (TGI /generate)"),
        },
    ),
    "tgi": Preset(
        routes={
            "/v1/chat/completions": RouteConfig(
                path="/generate", stream_path="/generate_stream",
                request="tgi.chat_request", answer="tgi.chat_answer", stream="tgi.chat_stream", error="tgi.error",
            ),
            "/v1/completions": RouteConfig(
                path="/generate", stream_path="/generate_stream",
                request="tgi.completion_request", answer="tgi.completion_answer", stream="tgi.completion_stream", error="tgi.error",
            ),
            "/generate": _PASS,
            "/generate_stream": _PASS,
            "/": _PASS,
            "/info": RouteConfig(method="GET"),
        },
        options={
            "max_stop_sequences": Option(integer(min=1), 4, "the server's --max-stop-sequences"),
            "max_best_of": Option(integer(min=1), 2, "the server's --max-best-of"),
        },
        needs_prompter=True,
    ),
}
