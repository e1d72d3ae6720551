"""A stub KoboldAI API server: ``/api/v1/generate`` checked as KoboldAI United's schema checks it
(unknown fields, ``temperature`` > 0, ``max_length`` ≤ 512, ``rep_pen`` ≥ 1, ≤ 10 ``stop_sequence``…:
422 with ``{"detail": {field: [messages]}}``), and KoboldCpp's ``/api/extra/generate/stream``
(``event: message`` + ``data: {"token": ...}``, ended by closing the connection).

Two flavours of server:
- ``legacy`` — the KoboldAI API as specified and as older KoboldCpp streams it: the text keeps the
  stop sequence that ended it, and no finish reason or token counts are given;
- ``koboldcpp`` — today's KoboldCpp: stop sequences trimmed, ``finish_reason`` given (``stop`` for an
  end-of-sequence token, ``length`` for anything else, a stop sequence included), and the answer counts
  ``prompt_tokens`` / ``completion_tokens``; it also takes its own extra fields such as ``min_p``.

Its "model" replays ``reply`` piece by piece (one piece, one token) until a stop sequence shows up in
the text, ``max_length`` pieces have come, or the reply ends (an end-of-sequence token).
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

# KoboldAI United's GenerationInputSchema: field → (kind, low, high, low is exclusive).
SCHEMA: dict[str, tuple[str, float | None, float | None, bool]] = {
    "rep_pen": ("number", 1, None, False), "rep_pen_range": ("integer", 0, None, False), "rep_pen_slope": ("number", 0, None, False),
    "top_k": ("integer", 0, None, False), "top_a": ("number", 0, None, False), "top_p": ("number", 0, 1, False),
    "tfs": ("number", 0, 1, False), "typical": ("number", 0, 1, False), "temperature": ("number", 0, None, True),
    "max_length": ("integer", 1, 512, False), "max_context_length": ("integer", 1, None, False), "n": ("integer", 1, 5, False),
    "sampler_seed": ("integer", 0, 2**64 - 1, False),
}
BOOLEANS = {"use_memory", "use_story", "use_authors_note", "use_world_info", "use_userscripts", "disable_output_formatting",
            "frmttriminc", "frmtrmblln", "frmtrmspch", "singleline", "disable_input_formatting", "frmtadsnsp", "quiet",
            "sampler_full_determinism"}
OTHERS = {"prompt", "soft_prompt", "sampler_order", "stop_sequence"}
KOBOLDCPP_EXTRAS = {"min_p", "trim_stop", "dynatemp_range", "presence_penalty", "mirostat", "grammar", "ban_eos_token"}


@dataclass
class KoboldStub:
    flavor: str = "legacy"  # or "koboldcpp"
    reply: list[str] = field(default_factory=lambda: ["Hello", " there", ",", " friend", "."])
    fail: tuple[int, str, str] | None = None  # (status, type, message) for every request while set
    stream_error_after: int | None = None  # KoboldCpp ends a failed generation with finish_reason "error"
    seen: list[dict[str, Any]] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)

    def app(self) -> Starlette:
        return Starlette(routes=[
            Route("/api/v1/generate", self.generate, methods=["POST"]),
            Route("/api/extra/generate/stream", self.stream, methods=["POST"]),
            Route("/api/v1/model", self.model, methods=["GET"]),
        ])

    async def model(self, request: Request) -> Response:
        return JSONResponse({"result": "koboldcpp/stub-7b"})

    async def generate(self, request: Request) -> Response:
        body, refusal = await self._read(request)
        if refusal is not None:
            return refusal
        pieces, reason = self._generate(body)
        result: dict[str, Any] = {"text": "".join(pieces)}
        if self.flavor == "koboldcpp":
            result.update(finish_reason=reason, logprobs=None, prompt_tokens=len(body["prompt"].split()), completion_tokens=len(pieces))
        return JSONResponse({"results": [result]})

    async def stream(self, request: Request) -> Response:
        body, refusal = await self._read(request)
        if refusal is not None:
            return refusal
        pieces, reason = self._generate(body)
        return StreamingResponse(self._events(pieces, reason), media_type="text/event-stream",
                                 headers={"x-accel-buffering": "no", "cache-control": "no-cache"})

    async def _read(self, request: Request) -> tuple[dict[str, Any], Response | None]:
        self.paths.append(request.url.path)
        try:
            body = json.loads(await request.body())
        except ValueError:
            return {}, _detail(400, "The request body is not valid JSON.", "bad_request")
        self.seen.append(body)
        problems = self._validate(body)
        if problems:
            return body, JSONResponse({"detail": problems}, status_code=422)
        if self.fail:
            status, kind, message = self.fail
            return body, _detail(status, message, kind)
        return body, None

    def _validate(self, body: Any) -> dict[str, list[str]]:
        """marshmallow's messages for the schema's checks."""
        if not isinstance(body, dict):
            return {"_schema": ["Invalid input type."]}
        problems: dict[str, list[str]] = {}
        known = set(SCHEMA) | BOOLEANS | OTHERS | (KOBOLDCPP_EXTRAS if self.flavor == "koboldcpp" else set())
        for key in set(body) - known:
            problems[key] = ["Unknown field."]
        if not isinstance(body.get("prompt"), str):
            problems["prompt"] = ["Missing data for required field."] if "prompt" not in body else ["Not a valid string."]
        for key, (kind, low, high, exclusive) in SCHEMA.items():
            if key in body:
                message = _check(body[key], kind, low, high if not (key == "max_length" and self.flavor == "koboldcpp") else None,
                                 exclusive)
                if message:
                    problems[key] = [message]
        stops = body.get("stop_sequence")
        if stops is not None:
            if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
                problems["stop_sequence"] = ["Not a valid list."]
            elif len(stops) > 10:
                problems["stop_sequence"] = ["Longer than maximum length 10."]
        for key in BOOLEANS & set(body):
            if not isinstance(body[key], bool):
                problems[key] = ["Not a valid boolean."]
        return problems

    def _generate(self, body: dict[str, Any]) -> tuple[list[str], str]:
        """The pieces sent and KoboldCpp's finish_reason for them."""
        limit = body.get("max_length", 80)
        stops = body.get("stop_sequence") or []
        out: list[str] = []
        for piece in self.reply:
            if len(out) == limit:
                return out, "length"
            out.append(piece)
            text = "".join(out)
            hits = [i for i in (text.find(s) for s in stops) if i != -1]
            if hits:
                # A stop sequence ends the generation: the legacy API keeps it (and the rest of its token),
                # KoboldCpp trims it and calls the stop "length", as it does for everything but an EOS token.
                return (first_chars(out, min(hits)) if self.flavor == "koboldcpp" else out), "length"
        return out, "stop"

    async def _events(self, pieces: list[str], reason: str) -> AsyncIterator[bytes]:
        for i, piece in enumerate(pieces):
            if self.stream_error_after is not None and i == self.stream_error_after:
                yield _event({"token": "", "finish_reason": "error"})
                return
            yield _event({"token": piece, "finish_reason": None} if self.flavor == "koboldcpp" else {"token": piece})
            await asyncio.sleep(0)
        # KoboldCpp's last event comes when the generation is done, its token often empty; then it closes.
        yield _event({"token": "", "finish_reason": reason} if self.flavor == "koboldcpp" else {"token": ""})


def _check(value: Any, kind: str, low: float | None, high: float | None, exclusive: bool) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind == "integer" and not isinstance(value, int)):
        return "Not a valid integer." if kind == "integer" else "Not a valid number."
    too_low = low is not None and (value <= low if exclusive else value < low)
    if too_low or (high is not None and value > high):
        if exclusive:
            return f"Must be greater than {low:g}."
        if high is None:
            return f"Must be greater than or equal to {low:g}."
        return f"Must be greater than or equal to {low:g} and less than or equal to {high:g}."
    return None


def _event(data: dict[str, Any]) -> bytes:
    return b"event: message\ndata: " + json.dumps(data).encode() + b"\n\n"


def _detail(status: int, message: str, kind: str) -> Response:
    return JSONResponse({"detail": {"msg": message, "type": kind}}, status_code=status)
