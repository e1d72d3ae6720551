"""A stub llama.cpp ``llama-server``: ``/completion`` checked and answered as the real server does
(errors as ``{"error": {"code", "message", "type"}}``, a prompt longer than the context refused, the
SSE stream of ``data: {json}`` events whose last one has ``"stop": true``, no ``[DONE]``).

It is stricter than llama-server in one way that catches translation bugs: a field the server would
ignore (a misspelt name) or read as its default (a wrong type) is refused, and ``prompt`` must be a
string, as the proxy always renders one.

Its "model" replays ``reply`` piece by piece and stops as llama-server does: at a stop word (left out
of ``content``; ``stop_type: word``), at ``n_predict`` (``limit``), or at the end of the reply (``eos``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from . import first_chars

NUMBERS = {"temperature", "top_p", "min_p", "typical_p", "repeat_penalty", "presence_penalty", "frequency_penalty", "mirostat_tau",
           "mirostat_eta", "dynatemp_range", "dynatemp_exponent", "dry_multiplier", "dry_base", "xtc_probability", "xtc_threshold"}
INTEGERS = {"n_predict", "top_k", "repeat_last_n", "seed", "n_keep", "n_probs", "min_keep", "mirostat", "id_slot", "n_cmpl",
            "dry_allowed_length", "dry_penalty_last_n", "t_max_predict_ms", "n_indent"}
BOOLEANS = {"stream", "cache_prompt", "ignore_eos", "return_tokens", "timings_per_token", "return_progress", "post_sampling_probs"}
OTHERS = {"prompt", "stop", "grammar", "json_schema", "logit_bias", "samplers", "response_fields", "lora", "dry_sequence_breakers"}


class Invalid(Exception):
    def __init__(self, message: str, kind: str = "invalid_request_error", **extra: Any) -> None:
        super().__init__(message)
        self.kind = kind
        self.extra = extra


@dataclass
class LlamaCppStub:
    reply: list[str] = field(default_factory=lambda: ["Hello", " there", ",", " friend", "."])
    n_ctx: int = 4096  # in words of the prompt, standing in for tokens
    fail: tuple[int, str, str] | None = None  # (status, type, message) for every request while set
    stream_error_after: int | None = None
    seen: list[dict[str, Any]] = field(default_factory=list)

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/completion", self.completion, methods=["POST"]), Route("/props", self.props, methods=["GET"])])

    async def props(self, request: Request) -> Response:
        return JSONResponse({"default_generation_settings": {"n_ctx": self.n_ctx}, "total_slots": 1, "model_path": "stub.gguf",
                             "chat_template": "", "build_info": "b6000-stub"})

    async def completion(self, request: Request) -> Response:
        try:
            body = json.loads(await request.body())
        except ValueError as exc:
            return _error(400, "invalid_request_error", f"[json.exception.parse_error.101] parse error: {exc}")
        self.seen.append(body)
        try:
            self._validate(body)
        except Invalid as exc:
            return _error(400, exc.kind, str(exc), **exc.extra)
        if self.fail:
            return _error(*self.fail)
        events = self._events(body)
        if body.get("stream"):
            return StreamingResponse(self._sse(events), media_type="text/event-stream")
        final = dict(events[-1])
        final["content"] = "".join(e["content"] for e in events)
        return JSONResponse(final)

    def _validate(self, body: Any) -> None:
        if not isinstance(body, dict):
            raise Invalid("stub: the body must be a JSON object")
        unknown = set(body) - NUMBERS - INTEGERS - BOOLEANS - OTHERS
        if unknown:
            raise Invalid(f"stub: unknown field {sorted(unknown)[0]!r} (llama-server would ignore it silently)")
        if "prompt" not in body:
            raise Invalid('"prompt" must be provided')
        if not isinstance(body["prompt"], str):
            raise Invalid("stub: 'prompt' must be a string (the proxy always sends a rendered one)")
        for key, value in body.items():
            if key in NUMBERS and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise Invalid(f"stub: '{key}' must be a number (llama-server would quietly use its default)")
            if key in INTEGERS and (isinstance(value, bool) or not isinstance(value, int)):
                raise Invalid(f"stub: '{key}' must be an integer (llama-server would quietly use its default)")
            if key in BOOLEANS and not isinstance(value, bool):
                raise Invalid(f"stub: '{key}' must be a boolean (llama-server would quietly use its default)")
        if not (body.get("seed", -1) == -1 or 0 <= body["seed"] <= 2**32 - 1):
            raise Invalid("stub: 'seed' must be -1 or fit in 32 bits")
        stop = body.get("stop", [])
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise Invalid("stub: 'stop' must be a list of strings")
        if "json_schema" in body and not isinstance(body["json_schema"], dict):
            raise Invalid("stub: 'json_schema' must be an object")
        words = len(body["prompt"].split())
        if words > self.n_ctx:
            raise Invalid("the request exceeds the available context size, try increasing it", kind="exceed_context_size_error",
                          n_prompt_tokens=words, n_ctx=self.n_ctx)

    def _events(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        """One event per token, then the last with ``stop: true`` and the stats (its content empty, as when streaming)."""
        limit = body.get("n_predict", -1)
        pieces, stop_type, word = _generate(self.reply, limit if limit >= 0 else 10**9, body.get("stop") or [])
        prompt_tokens = len(body["prompt"].split())
        events = [{"index": 0, "content": p, "tokens": [i], "stop": False, "id_slot": 0, "tokens_predicted": i + 1,
                   "tokens_evaluated": prompt_tokens} for i, p in enumerate(pieces)]
        events.append({"index": 0, "content": "", "tokens": [], "id_slot": 0, "stop": True, "model": "stub.gguf",
                       "tokens_predicted": len(pieces) + (stop_type == "eos"), "tokens_evaluated": prompt_tokens,
                       "generation_settings": {"n_predict": limit, "temperature": body.get("temperature", 0.8)},
                       "prompt": body["prompt"], "has_new_line": False, "truncated": False, "stop_type": stop_type,
                       "stopping_word": word, "tokens_cached": prompt_tokens + len(pieces),
                       "timings": {"prompt_n": prompt_tokens, "predicted_n": len(pieces), "predicted_per_second": 42.0}})
        return events

    async def _sse(self, events: list[dict[str, Any]]) -> AsyncIterator[bytes]:
        for i, event in enumerate(events):
            if self.stream_error_after is not None and i == self.stream_error_after:
                err = {"code": 500, "message": "Compute error.", "type": "server_error"}
                yield b"data: " + json.dumps({"error": err}).encode() + b"\n\n"
                return
            yield b"data: " + json.dumps(event).encode() + b"\n\n"
            await asyncio.sleep(0)


def _generate(reply: list[str], limit: int, stops: list[str]) -> tuple[list[str], str, str]:
    """Pieces sent, stop_type and stopping_word. A stop word ends the text and is left out; llama-server
    holds back what could be the start of one, so no piece ever shows part of it."""
    out: list[str] = []
    for piece in reply:
        if len(out) == limit:
            return out, "limit", ""
        out.append(piece)
        text = "".join(out)
        hits = sorted((text.find(s), s) for s in stops if s in text)
        if hits:
            return first_chars(out, hits[0][0]), "word", hits[0][1]
    return out, "eos", ""


def _error(status: int, kind: str, message: str, **extra: Any) -> Response:
    return JSONResponse({"error": {"code": status, "message": message, "type": kind, **extra}}, status_code=status)
