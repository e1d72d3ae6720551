"""Target presets: what ``type:`` fills in — the routes of a backend API and the options it accepts.

A preset route maps an inbound (OpenAI-dialect) path onto the backend's path with the built-in mappers
of ``mappers/<type>.py``. A target's own ``routes:`` are merged over these key by key.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import voluptuous as vol

from ..config.load import RouteConfig
from ..config.validators import boolean, integer, optional_text


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
    headers: dict[str, str] = field(default_factory=dict)  # header sent upstream → the option holding its value


def _mapped(api: str, kind: str, path: str, *, stream_path: str | None = None, stream_format: str | None = None) -> RouteConfig:
    """A route translated by ``mappers/<api>.py``'s ``<kind>_request``, ``_answer``, ``_stream`` and ``error``."""
    return RouteConfig(path=path, stream_path=stream_path, request=f"{api}.{kind}_request", answer=f"{api}.{kind}_answer",
                       stream=f"{api}.{kind}_stream", error=f"{api}.error", stream_format=stream_format)


_PASS = RouteConfig()

PRESETS: dict[str, Preset] = {
    "openai": Preset(
        routes={
            "/v1/chat/completions": _PASS,
            "/v1/completions": _PASS,
            "/v1/embeddings": _PASS,
            "/v1/rerank": _PASS,  # Jina / Cohere style, as vLLM and Infinity serve it; relayed, not recorded
            "/v1/models": RouteConfig(method="GET"),
        },
        options={
            "model": Option(optional_text, None, "model name sent upstream when a front's client names none (TGI /generate)"),
        },
    ),
    "tgi": Preset(
        routes={
            "/v1/chat/completions": _mapped("tgi", "chat", "/generate", stream_path="/generate_stream"),
            "/v1/completions": _mapped("tgi", "completion", "/generate", stream_path="/generate_stream"),
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
    "anthropic": Preset(
        routes={
            "/v1/chat/completions": _mapped("anthropic", "chat", "/v1/messages"),
            "/v1/completions": _mapped("anthropic", "completion", "/v1/messages"),
            "/v1/messages": _PASS,
            "/v1/messages/count_tokens": _PASS,
            "/v1/models": RouteConfig(method="GET"),
        },
        options={
            "max_tokens": Option(integer(min=1), 4096, "max_tokens sent when the client gives none (Anthropic requires it)"),
            "anthropic_version": Option(optional_text, "2023-06-01", "the anthropic-version header sent upstream"),
        },
        auth="x-api-key",
        headers={"anthropic-version": "anthropic_version"},
    ),
    "ollama": Preset(
        routes={
            "/v1/chat/completions": _mapped("ollama", "chat", "/api/chat", stream_format="ndjson"),
            "/v1/completions": _mapped("ollama", "completion", "/api/generate", stream_format="ndjson"),
            "/v1/models": RouteConfig(method="GET", path="/api/tags", answer="ollama.models_answer"),
            "/api/chat": _PASS,
            "/api/generate": _PASS,
            "/api/tags": RouteConfig(method="GET"),
        },
        options={
            "raw_prompt": Option(boolean, False, "render chats with the target's prompter and send them to /api/generate raw"),
            "keep_alive": Option(optional_text, None, "how long Ollama keeps the model loaded, e.g. 5m"),
            "num_ctx": Option(vol.Any(None, integer(min=1)), None, "context window size sent in options"),
        },
    ),
    "llamacpp": Preset(
        routes={
            "/v1/chat/completions": _mapped("llamacpp", "chat", "/completion"),
            "/v1/completions": _mapped("llamacpp", "completion", "/completion"),
            "/completion": _PASS,
            "/props": RouteConfig(method="GET"),
        },
        options={
            "cache_prompt": Option(boolean, True, "let llama-server reuse the KV cache of a shared prompt prefix"),
        },
        needs_prompter=True,
    ),
    "kobold": Preset(
        routes={
            "/v1/chat/completions": _mapped("kobold", "chat", "/api/v1/generate", stream_path="/api/extra/generate/stream"),
            "/v1/completions": _mapped("kobold", "completion", "/api/v1/generate", stream_path="/api/extra/generate/stream"),
            "/api/v1/generate": _PASS,
            "/api/v1/model": RouteConfig(method="GET"),
        },
        options={
            "max_length": Option(integer(min=1), 512, "tokens to generate when the client sets no max_tokens"),
            "max_context_length": Option(vol.Any(None, integer(min=1)), None, "the model's context length, sent when set"),
        },
        needs_prompter=True,
    ),
}
