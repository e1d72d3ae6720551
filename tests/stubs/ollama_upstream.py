"""A stub Ollama server: ``/api/chat``, ``/api/generate`` and ``/api/tags``, checking requests as Ollama
decodes them (Go types, option types, ``think`` values, raw mode's limits, unknown models → 404) and
answering in Ollama's shapes, streamed as NDJSON ending with a ``done: true`` line.

It is stricter than Ollama in two ways that catch translation bugs: a field Ollama would silently
ignore (a misspelt name) is refused, and ``stream`` must be present, because Ollama streams when it is
missing and the proxy always says which it wants.

Its "model" replays ``reply`` piece by piece (after ``thinking`` when asked to think, or ``tool_calls``
when tools are offered) and stops as Ollama does: at a stop string (left out of the text), at
``num_predict`` (``length``), or at the end of the reply.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from . import first_chars

CHAT_FIELDS = {"model", "messages", "tools", "format", "options", "stream", "keep_alive", "think"}
GENERATE_FIELDS = {"model", "prompt", "suffix", "images", "format", "options", "system", "template", "context", "stream", "raw",
                   "keep_alive", "think"}
MESSAGE_FIELDS = {"role", "content", "thinking", "images", "tool_calls", "tool_name"}
INT_OPTIONS = {"num_keep", "seed", "num_predict", "top_k", "repeat_last_n", "mirostat", "num_ctx", "num_batch", "num_gpu", "main_gpu",
               "num_thread"}
FLOAT_OPTIONS = {"top_p", "min_p", "typical_p", "temperature", "repeat_penalty", "presence_penalty", "frequency_penalty",
                 "mirostat_tau", "mirostat_eta"}
STAMP = "2025-06-01T12:00:00.123456789Z"


class Invalid(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class OllamaStub:
    models: list[str] = field(default_factory=lambda: ["llama3.2:latest", "hf.co/bartowski/Qwen3-8B-GGUF:Q4_K_M"])
    reply: list[str] = field(default_factory=lambda: ["Hello", " there", ",", " friend", "."])
    thinking: list[str] = field(default_factory=lambda: ["Let me", " think."])
    tool_calls: list[dict[str, Any]] = field(default_factory=list)  # answered instead of text when the request offers tools
    fail: tuple[int, str] | None = None  # (status, message) for every request while set
    stream_error_after: int | None = None
    seen: list[dict[str, Any]] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)

    def app(self) -> Starlette:
        return Starlette(routes=[
            Route("/api/chat", self.chat, methods=["POST"]),
            Route("/api/generate", self.generate, methods=["POST"]),
            Route("/api/tags", self.tags, methods=["GET"]),
        ])

    async def tags(self, request: Request) -> Response:
        self.paths.append(request.url.path)
        return JSONResponse({"models": [{"name": m, "model": m, "modified_at": STAMP, "size": 2019393189, "digest": "a80c4f17acd5",
                                         "details": {"format": "gguf", "family": "llama", "parameter_size": "3.2B"}}
                                        for m in self.models]})

    async def chat(self, request: Request) -> Response:
        return await self._serve(request, chat=True)

    async def generate(self, request: Request) -> Response:
        return await self._serve(request, chat=False)

    async def _serve(self, request: Request, *, chat: bool) -> Response:
        self.paths.append(request.url.path)
        try:
            body = json.loads(await request.body())
            self.seen.append(body)
            self._validate(body, chat)
        except ValueError as exc:
            return JSONResponse({"error": f"invalid character in JSON: {exc}"}, status_code=400)
        except Invalid as exc:
            return JSONResponse({"error": str(exc)}, status_code=exc.status)
        if self.fail:
            return JSONResponse({"error": self.fail[1]}, status_code=self.fail[0])
        lines = self._lines(body, chat)
        if body["stream"]:
            return StreamingResponse(self._ndjson(lines), media_type="application/x-ndjson")
        return JSONResponse(_whole(lines, chat))

    # ------------------------------------------------------------------------------------ checks

    def _validate(self, body: Any, chat: bool) -> None:
        if not isinstance(body, dict):
            raise Invalid("json: cannot unmarshal into Go value of type api.ChatRequest")
        unknown = set(body) - (CHAT_FIELDS if chat else GENERATE_FIELDS)
        if unknown:
            raise Invalid(f"stub: unknown field {sorted(unknown)[0]!r} (Ollama would ignore it silently)")
        if "stream" not in body or not isinstance(body["stream"], bool):
            raise Invalid("stub: 'stream' must be set to true or false (Ollama streams when it is missing)")
        model = body.get("model")
        if not model:
            raise Invalid("model is required")
        if model not in self.models and f"{model}:latest" not in self.models:
            raise Invalid(f'model "{model}" not found, try pulling it first', status=404)
        _options(body.get("options"))
        _think(body.get("think"))
        if "format" in body and body["format"] != "json" and not isinstance(body["format"], dict):
            raise Invalid(f"invalid format: {body['format']!r}")
        if "keep_alive" in body and (isinstance(body["keep_alive"], bool) or not isinstance(body["keep_alive"], (str, int, float))):
            raise Invalid(f"unsupported duration type: '{type(body['keep_alive']).__name__}'")
        if chat:
            _messages(body.get("messages"))
            _tools(body.get("tools"))
        else:
            if not isinstance(body.get("prompt", ""), str):
                raise Invalid("json: cannot unmarshal into Go struct field GenerateRequest.prompt of type string")
            if body.get("raw") and (body.get("template") or body.get("system") or body.get("context")):
                raise Invalid("raw mode does not support template, system, or context")
            _images(body.get("images"))

    # ----------------------------------------------------------------------------------- answers

    def _lines(self, body: dict[str, Any], chat: bool) -> list[dict[str, Any]]:
        """The NDJSON lines of the answer, the last one ``done``."""
        options = body.get("options") or {}
        limit = int(options.get("num_predict") or 0) or 100
        stops = options.get("stop") or []
        head = {"model": body["model"], "created_at": STAMP}
        lines: list[dict[str, Any]] = []
        if body.get("think"):
            lines += [_piece(head, chat, "", thinking=t) for t in self.thinking]
        pieces, reason = _generate(self.reply, limit, stops)
        if chat and body.get("tools") and self.tool_calls:
            lines.append({**head, "message": {"role": "assistant", "content": "", "tool_calls": self.tool_calls}, "done": False})
            pieces, reason = [], "stop"
        lines += [_piece(head, chat, p) for p in pieces]
        prompt_tokens = len(json.dumps(body.get("messages") or body.get("prompt")).split())
        last = {**head, "done": True, "done_reason": reason, "total_duration": 5043500667, "load_duration": 5025959,
                "prompt_eval_count": prompt_tokens, "prompt_eval_duration": 325953000,
                "eval_count": len(lines), "eval_duration": 4709213000}
        last.update({"message": {"role": "assistant", "content": ""}} if chat else {"response": ""})
        if not chat and not body.get("raw"):
            last["context"] = [1, 2, 3]
        return [*lines, last]

    async def _ndjson(self, lines: list[dict[str, Any]]) -> AsyncIterator[bytes]:
        for i, line in enumerate(lines):
            if self.stream_error_after is not None and i == self.stream_error_after:
                yield json.dumps({"error": "an error was encountered while running the model: unexpected EOF"}).encode() + b"\n"
                return
            yield json.dumps(line).encode() + b"\n"
            await asyncio.sleep(0)


def _piece(head: dict[str, Any], chat: bool, text: str, *, thinking: str = "") -> dict[str, Any]:
    if chat:
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if thinking:
            message["thinking"] = thinking
        return {**head, "message": message, "done": False}
    out = {**head, "response": text, "done": False}
    if thinking:
        out["thinking"] = thinking
    return out


def _generate(reply: list[str], limit: int, stops: list[str]) -> tuple[list[str], str]:
    """The pieces sent and the done_reason. A stop string ends the text and is left out of it; Ollama
    holds back what could be the start of one, so no piece ever shows part of it."""
    out: list[str] = []
    for piece in reply:
        if len(out) == limit:
            return out, "length"
        out.append(piece)
        text = "".join(out)
        hits = [i for i in (text.find(s) for s in stops) if i != -1]
        if hits:
            return first_chars(out, min(hits)), "stop"
    return out, "stop"


def _whole(lines: list[dict[str, Any]], chat: bool) -> dict[str, Any]:
    """The non-streamed answer: the last line with all the text in it."""
    last = dict(lines[-1])
    if chat:
        message: dict[str, Any] = {"role": "assistant", "content": "".join(ln["message"]["content"] for ln in lines)}
        thinking = "".join(ln["message"].get("thinking", "") for ln in lines)
        calls = [c for ln in lines for c in ln["message"].get("tool_calls", [])]
        if thinking:
            message["thinking"] = thinking
        if calls:
            message["tool_calls"] = calls
        last["message"] = message
    else:
        last["response"] = "".join(ln["response"] for ln in lines)
        thinking = "".join(ln.get("thinking", "") for ln in lines)
        if thinking:
            last["thinking"] = thinking
    return last


def _options(options: Any) -> None:
    """api.Options.FromMap: numbers for numeric options, a list of strings for stop."""
    if options is None:
        return
    if not isinstance(options, dict):
        raise Invalid("json: cannot unmarshal into Go struct field ChatRequest.options of type map[string]interface {}")
    for key, value in options.items():
        if key in INT_OPTIONS:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise Invalid(f'option "{key}" must be of type integer')
        elif key in FLOAT_OPTIONS:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise Invalid(f'option "{key}" must be of type float32')
        elif key == "stop":
            if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
                raise Invalid(f'option "{key}" must be of an array of strings')
        else:
            raise Invalid(f"stub: unknown option {key!r} (Ollama would log 'invalid option provided' and ignore it)")


def _think(think: Any) -> None:
    if think is None or isinstance(think, bool):
        return
    if think not in ("high", "medium", "low"):
        raise Invalid(f'invalid think value: "{think}" (must be "high", "medium", "low", true, or false)')


def _messages(messages: Any) -> None:
    if not isinstance(messages, list):
        raise Invalid("json: cannot unmarshal into Go struct field ChatRequest.messages of type []api.Message")
    for m in messages:
        if not isinstance(m, dict):
            raise Invalid("json: cannot unmarshal into Go value of type api.Message")
        unknown = set(m) - MESSAGE_FIELDS
        if unknown:
            raise Invalid(f"stub: unknown message field {sorted(unknown)[0]!r} (Ollama would ignore it silently)")
        if m.get("role") not in ("system", "user", "assistant", "tool"):
            raise Invalid(f"stub: message role {m.get('role')!r} is not one Ollama's templates know")
        for key in ("content", "thinking", "tool_name"):
            if key in m and not isinstance(m[key], str):
                raise Invalid(f"json: cannot unmarshal into Go struct field Message.messages.{key} of type string")
        _images(m.get("images"))
        for call in m.get("tool_calls") or []:
            fn = call.get("function") if isinstance(call, dict) else None
            if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                raise Invalid("json: cannot unmarshal into Go struct field Message.messages.tool_calls of type api.ToolCall")
            if not isinstance(fn.get("arguments"), dict):
                raise Invalid("json: cannot unmarshal into Go struct field ToolCallFunction.messages.tool_calls.function.arguments "
                              "of type api.ToolCallFunctionArguments")


def _images(images: Any) -> None:
    for image in images or []:
        try:
            base64.b64decode(image, validate=True)
        except (binascii.Error, TypeError, ValueError):
            raise Invalid("illegal base64 data at input byte 0") from None


def _tools(tools: Any) -> None:
    if tools is None:
        return
    if not isinstance(tools, list) or not all(isinstance(t, dict) and t.get("type") == "function"
                                              and isinstance((t.get("function") or {}).get("name"), str) for t in tools):
        raise Invalid("json: cannot unmarshal into Go struct field ChatRequest.tools of type api.Tools")
