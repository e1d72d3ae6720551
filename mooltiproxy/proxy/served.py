"""The model an OpenAI-compatible target serves, asked of it once: for a front whose API names no model (TGI's
``/generate`` has none), the name to send is the one the server lists first on ``/v1/models`` — what vLLM,
llama.cpp and TGI's own OpenAI routes list for the one model they run — unless the target's ``options.model``
says otherwise. The answer is kept for the targets of one configuration (a reload builds new ones)."""

from __future__ import annotations

import logging
from collections.abc import Callable

import orjson

from ..routing.targets import Target
from ..upstream.client import UpstreamClient, read_whole

log = logging.getLogger("mooltiproxy")

MODELS = "/v1/models"
_MOST = 1 << 20  # a model list is small; an answer beyond this is not one


class ServedModels:
    def __init__(self, client: Callable[[], UpstreamClient]) -> None:
        self.client = client
        self._known: dict[int, tuple[Target, str]] = {}  # id(target) -> (the target, kept alive so the id stays its own; model)

    async def of(self, target: Target) -> str | None:
        """The first model the target lists; None when it cannot say (the request then goes without a name, which
        a one-model server takes as its own)."""
        known = self._known.get(id(target))
        if known is not None and known[0] is target:
            return known[1]
        route = target.routes.get(MODELS)
        if route is None or route.method != "GET":
            return None
        try:
            resp = await self.client().send("GET", target.url + route.path, list(target.upstream_headers(None)), b"",
                                            timeout=target.timeout, connect_timeout=target.connect_timeout, target=target.name,
                                            max_connections=target.max_connections)
            try:
                body = await read_whole(resp.chunks(), target.name, _MOST)
            finally:
                await resp.aclose()
            listed = orjson.loads(body).get("data") if resp.status == 200 else None
        except Exception as exc:  # an answer without a name is still an answer: the server may take none
            log.warning("target %s: could not ask %s for its model (%s); the request goes without one", target.name, MODELS, exc)
            return None
        model: str | None = next((m["id"] for m in listed or () if isinstance(m, dict) and isinstance(m.get("id"), str)), None)
        if model is None:
            log.warning("target %s: %s listed no model; the request goes without one", target.name, MODELS)
            return None
        if len(self._known) > 4096:  # targets of many reloads ago
            self._known.clear()
        self._known[id(target)] = (target, model)
        return model
