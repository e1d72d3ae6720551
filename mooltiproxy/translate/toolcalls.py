"""Tool calls in a model's own words, made OpenAI ``tool_calls``: for a chat rendered by a prompter whose template
offers tools, the text the backend generated is read for the calls the model family writes.

One family so far, told by its template: Hermes 2 Pro and Qwen2.5 (and the templates that copy them) put each call
in ``<tool_call>{"name": …, "arguments": {…}}</tool_call>`` (the format vLLM's ``hermes`` tool parser reads). A
block that is not such JSON stays text, as the model wrote it. In a stream, text that may be the start of a call
is held back until it is decided, a whole call goes out as one ``tool_calls`` delta, and the choice ends with
``finish_reason: "tool_calls"``; text said beside a call is kept.
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator
from typing import Any

import orjson

from .mapping import MapContext

CHAT = "/v1/chat/completions"
HERMES = "hermes"
_OPEN, _CLOSE = "<tool_call>", "</tool_call>"
_BLOCK = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.S)


def format_of(source: str) -> str | None:
    """The tool-call format a template's model writes, from the template itself (None: it has none)."""
    return HERMES if _OPEN in source else None


def wanted(ctx: MapContext) -> str | None:
    """The format to read calls in, when this exchange offered tools to a template that renders them."""
    request, prompter = ctx.request, ctx.prompter
    if ctx.path != CHAT or prompter is None or not isinstance(request, dict) or not request.get("tools"):
        return None
    if request.get("tool_choice") == "none":
        return None
    return next((f for f in map(format_of, prompter.sources.values()) if f), None)


def _call(name: str, arguments: Any) -> dict[str, Any]:
    text = arguments if isinstance(arguments, str) else orjson.dumps(arguments if arguments is not None else {}).decode()
    return {"id": "call_" + os.urandom(12).hex(), "type": "function", "function": {"name": name, "arguments": text}}


def parse(text: str) -> tuple[str, list[dict[str, Any]]]:
    """The text without its calls, and the calls (OpenAI's form), in the order written."""
    calls: list[dict[str, Any]] = []

    def take(match: re.Match[str]) -> str:
        try:
            call = orjson.loads(match.group(1))
        except orjson.JSONDecodeError:
            return match.group(0)
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            return match.group(0)
        calls.append(_call(call["name"], call.get("arguments", call.get("parameters"))))
        return ""

    rest = _BLOCK.sub(take, text)
    return (rest.strip() if calls else rest), calls


def in_answer(answer: Any) -> Any:
    """A chat answer with the calls its choices' text holds made ``tool_calls``."""
    if not isinstance(answer, dict):
        return answer
    for choice in answer.get("choices") or ():
        message = choice.get("message") if isinstance(choice, dict) else None
        if not isinstance(message, dict) or not isinstance(message.get("content"), str) or _OPEN not in message["content"]:
            continue
        text, calls = parse(message["content"])
        if calls:
            message["content"] = text or None
            message["tool_calls"] = [*(message.get("tool_calls") or ()), *calls]
            choice["finish_reason"] = "tool_calls"
    return answer


class _Choice:
    __slots__ = ("calls", "held", "inside")

    def __init__(self) -> None:
        self.held = ""  # text not sent yet: the possible start of a call, or a call being written
        self.inside = False
        self.calls = 0


def _partial(text: str) -> int:
    """How many characters at the end of ``text`` could be the start of ``<tool_call>``."""
    for n in range(min(len(_OPEN) - 1, len(text)), 0, -1):
        if _OPEN.startswith(text[-n:]):
            return n
    return 0


async def in_stream(events: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """Chat chunks with the calls their text holds sent as ``tool_calls`` deltas."""
    choices: dict[int, _Choice] = {}
    async for event in events:
        if not isinstance(event, dict) or not event.get("choices"):
            yield event
            continue
        out = []
        for choice in event["choices"]:
            state = choices.setdefault(choice.get("index", 0), _Choice())
            delta = choice.get("delta") or {}
            piece = delta.get("content")
            pieces: list[dict[str, Any]] = []
            if isinstance(piece, str) and piece:
                pieces = _feed(state, piece)
                rest = {k: v for k, v in delta.items() if k != "content"}
                if rest.get("role") or choice.get("finish_reason"):
                    pieces.insert(0, rest)
            else:
                pieces = [delta]
            if choice.get("finish_reason") and (state.held or state.inside):
                # a call left unclosed, or text held back: it was text after all
                pieces.append({"content": (_OPEN if state.inside else "") + state.held})
                state.held, state.inside = "", False
            for k, d in enumerate(pieces):
                last = k == len(pieces) - 1
                finish = choice.get("finish_reason") if last else None
                if finish == "stop" and state.calls:
                    finish = "tool_calls"
                out.append({**choice, "delta": d, "finish_reason": finish, "logprobs": choice.get("logprobs") if last else None})
            if not pieces and choice.get("finish_reason"):
                out.append({**choice, "delta": {}, "finish_reason": "tool_calls" if state.calls else choice["finish_reason"]})
        for c in out:
            yield {**event, "choices": [c]}


def _feed(state: _Choice, piece: str) -> list[dict[str, Any]]:
    """The deltas a piece of text gives: text that is surely text, and each call once it is closed."""
    out: list[dict[str, Any]] = []
    text = state.held + piece
    state.held = ""
    while text:
        if state.inside:
            end = text.find(_CLOSE)
            if end < 0:
                state.held = text
                return out
            block = _OPEN + text[: end + len(_CLOSE)]
            _, calls = parse(block)
            if calls:
                for call in calls:
                    out.append({"tool_calls": [{"index": state.calls, **call}]})
                    state.calls += 1
            else:
                out.append({"content": block})  # not a call after all: the model's text
            state.inside = False
            text = text[end + len(_CLOSE):]
            continue
        start = text.find(_OPEN)
        if start >= 0:
            if text[:start]:
                out.append({"content": text[:start]})
            state.inside = True
            text = text[start + len(_OPEN):]
            continue
        keep = _partial(text)
        if text[: len(text) - keep]:
            out.append({"content": text[: len(text) - keep]})
        state.held = text[len(text) - keep:]
        return out
    return out
