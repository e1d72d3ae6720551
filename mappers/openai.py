"""Any OpenAI-compatible server (vLLM, TabbyAPI, llama.cpp's /v1, text-generation-webui, OpenAI itself):
the OpenAI paths passed through as they are, body, unknown fields, query string and streamed bytes alike."""

from __future__ import annotations

from mooltiproxy.backends import Backend, Option, RouteSpec, optional_text

from .responses import FRONT as RESPONSES

BACKEND = Backend(
    name="openai",
    doc="any OpenAI-compatible server, passed through untouched",
    routes={
        "/v1/chat/completions": RouteSpec(),
        "/v1/completions": RouteSpec(),
        "/v1/embeddings": RouteSpec(),
        "/v1/rerank": RouteSpec(),  # Jina / Cohere style, as vLLM and Infinity serve it; relayed, not recorded
        "/v1/models": RouteSpec.get(),
        # TGI's GET /info for a TGI client in front of this server (the rest of TGI's API is the tgi type's front)
        "/info": RouteSpec(path="/v1/models", method="GET", answer="mooltiproxy.mappers.tgi:front_info"),
    },
    options={
        "model": Option(optional_text, None, "model name sent upstream when a front's client names none (TGI /generate)"),
    },
    # OpenAI's Responses API, answered by the proxy over any target's chat completions (a target whose routes: has
    # /v1/responses gets it relayed instead)
    fronts=(RESPONSES,),
)
