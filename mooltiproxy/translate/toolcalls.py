"""Tool calls in a model's own words, made OpenAI ``tool_calls``: for a chat rendered by a prompter whose template
offers tools, the text the backend generated is read for the calls the model family writes.

Two families, each told by its template:

- ``hermes``: Hermes 2 Pro and Qwen2.5 (and the templates that copy them) put each call in
  ``<tool_call>{"name": …, "arguments": {…}}</tool_call>`` (what vLLM's ``hermes`` parser reads). A block that
  is not such JSON stays text. In a stream, text that may be the start of a call is held back until it is
  decided, each call goes out as one ``tool_calls`` delta; text said beside a call is kept.
- ``llama3_json``: Llama 3.1 / 3.2 answer a call with nothing but ``{"name": …, "parameters": {…}}`` (after an
  optional ``<|python_tag|>``; several separated by ``;``), what vLLM's ``llama3_json`` parser reads. An answer
  that opens with ``{`` is held back to its end and read whole; one that is not such JSON is sent as text.
- ``mistral``: Mistral 7B v0.3, Nemo, Small write ``[TOOL_CALLS]`` then a JSON list of ``{"name", "arguments"}``
  (what vLLM's ``mistral`` parser reads). A server that leaves special tokens out of its text (TGI does) sends
  the list alone, so an answer that opens with ``[`` is held back to its end and read whole as well. Their
  templates take only 9-character alphanumeric call ids: the ids of a conversation's calls are mapped to such
  ids as it is rendered (``short_id``, the same id always to the same short one, and a short one to itself),
  and the calls read back get short ids, so that a client sending them back sends what the model saw.

When ``tool_choice`` demands a call and the backend constrains generation by a JSON schema, the answer is
that call's ``{"name", "arguments"}`` alone, read as ``llama3_json`` is.

A choice that made a call ends with ``finish_reason: "tool_calls"``. With ``parallel_tool_calls: false`` only the
first call the model wrote is kept: the client asked to handle one at a time, and a model may write several.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from .mapping import MapContext

CHAT = "/v1/chat/completions"
HERMES, LLAMA3_JSON, MISTRAL = "hermes", "llama3_json", "mistral"
_MISTRAL_MARK = "[TOOL_CALLS]"
_ALNUM = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_PYTHON_TAG = "<|python_tag|>"
_OPEN, _CLOSE = "<tool_call>", "</tool_call>"
_BLOCK = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.S)


def format_of(source: str) -> str | None:
    """The tool-call format a template's model writes, from the template itself (None: it has none)."""
    if _OPEN in source:
        return HERMES
    if _MISTRAL_MARK in source:
        return MISTRAL
    if '"parameters": ' in source and "ipython" in source:
        return LLAMA3_JSON
    return None


def wanted(ctx: MapContext) -> str | None:
    """The format to read calls in, when this exchange offered tools to a template that renders them."""
    request, prompter = ctx.request, ctx.prompter
    if ctx.path != CHAT or prompter is None or not isinstance(request, dict) or not request.get("tools"):
        return None
    if request.get("tool_choice") == "none":
        return None
    if ctx.state.get("forced_call"):  # generation was held to one call's JSON (helpers.answer_schema): read it whole
        return LLAMA3_JSON
    fmt: str | None = prompter.tool_format
    return fmt


def wants_short_ids(source: str) -> bool:
    """Whether a template refuses call ids that are not 9 characters long (Mistral's)."""
    return "length != 9" in source


def short_id(call_id: Any) -> Any:
    """A call id as Mistral's templates take it: 9 alphanumeric characters, derived from the id (so a call and
    its result stay paired), an id of that form kept as it is."""
    if not isinstance(call_id, str) or (len(call_id) == 9 and call_id.isascii() and call_id.isalnum()):
        return call_id
    number = int.from_bytes(hashlib.blake2b(call_id.encode(), digest_size=8).digest(), "big")
    return "".join(_ALNUM[(number // 62 ** i) % 62] for i in range(9))


def single(ctx: MapContext) -> bool:
    """Whether the request asked for one call at most (``parallel_tool_calls: false``)."""
    return isinstance(ctx.request, dict) and ctx.request.get("parallel_tool_calls") is False


def _call(name: str, arguments: Any, fmt: str = HERMES) -> dict[str, Any]:
    text = arguments if isinstance(arguments, str) else orjson.dumps(arguments if arguments is not None else {}).decode()
    call_id = short_id(os.urandom(12).hex()) if fmt == MISTRAL else "call_" + os.urandom(12).hex()
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": text}}


def parse(text: str, fmt: str = HERMES) -> tuple[str, list[dict[str, Any]]]:
    """The text without its calls, and the calls (OpenAI's form), in the order written."""
    if fmt == LLAMA3_JSON:
        return _parse_json(text)
    if fmt == MISTRAL:
        return _parse_mistral(text)
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


def _parse_json(text: str) -> tuple[str, list[dict[str, Any]]]:
    """Llama 3's calls: the whole answer is one JSON call, or several separated by ``;``; else it is text."""
    body = text.strip().removeprefix(_PYTHON_TAG).strip()
    if not body.startswith("{"):
        return text, []
    calls = []
    for part in body.split(";") if not _loads(body) else [body]:
        call = _loads(part.strip())
        if not isinstance(call, dict) or not isinstance(call.get("name"), str) or not isinstance(
                call.get("parameters", call.get("arguments", {})), dict):
            return text, []
        calls.append(_call(call["name"], call.get("parameters", call.get("arguments"))))
    return "", calls


def _parse_mistral(text: str) -> tuple[str, list[dict[str, Any]]]:
    """Mistral's calls: ``[TOOL_CALLS]`` and a JSON list of calls (the text before it kept), or the list alone."""
    at = text.find(_MISTRAL_MARK)
    before, body = (text[:at], text[at + len(_MISTRAL_MARK):]) if at >= 0 else ("", text)
    if at < 0 and not body.lstrip().startswith("["):
        return text, []
    listed = _loads(body.strip())
    if isinstance(listed, dict):
        listed = [listed]
    if not isinstance(listed, list) or not listed or not all(
            isinstance(c, dict) and isinstance(c.get("name"), str) for c in listed):
        return text, []
    return before.strip(), [_call(c["name"], c.get("arguments", c.get("parameters")), MISTRAL) for c in listed]


def _loads(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return None


def in_answer(answer: Any, fmt: str = HERMES, one: bool = False) -> Any:
    """A chat answer with the calls its choices' text holds made ``tool_calls``."""
    if not isinstance(answer, dict):
        return answer
    for choice in answer.get("choices") or ():
        message = choice.get("message") if isinstance(choice, dict) else None
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            continue
        if fmt == HERMES and _OPEN not in message["content"]:
            continue
        if fmt == MISTRAL and _MISTRAL_MARK not in message["content"] and not message["content"].lstrip().startswith("["):
            continue
        text, calls = parse(message["content"], fmt)
        if one:
            calls = calls[:1]
        if calls:
            message["content"] = text or None
            message["tool_calls"] = [*(message.get("tool_calls") or ()), *calls]
            choice["finish_reason"] = "tool_calls"
    return answer


class _Choice:
    __slots__ = ("calls", "held", "inside", "started")

    def __init__(self) -> None:
        self.held = ""  # text not sent yet: the possible start of a call, or a call being written
        self.inside = False
        self.calls = 0
        self.started = False  # llama3_json: whether the answer's first non-blank text has been seen


def _partial(text: str, mark: str = _OPEN) -> int:
    """How many characters at the end of ``text`` could be the start of ``mark``."""
    for n in range(min(len(mark) - 1, len(text)), 0, -1):
        if mark.startswith(text[-n:]):
            return n
    return 0


async def in_stream(events: AsyncIterator[Any], fmt: str = HERMES, one: bool = False) -> AsyncIterator[Any]:
    """Chat chunks with the calls their text holds sent as ``tool_calls`` deltas."""
    feed = {HERMES: _feed, LLAMA3_JSON: _feed_json, MISTRAL: _feed_mistral}[fmt]
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
                pieces = feed(state, piece)
                rest = {k: v for k, v in delta.items() if k != "content"}
                if rest.get("role") or choice.get("finish_reason"):
                    pieces.insert(0, rest)
            else:
                pieces = [delta]
            if choice.get("finish_reason") and (state.held or state.inside):
                if fmt != HERMES:  # the answer held back from where a call may begin: calls, or text after all
                    text, calls = parse(state.held, fmt)
                    if text or not calls:
                        pieces.append({"content": text})
                    for call in calls:
                        pieces.append({"tool_calls": [{"index": state.calls, **call}]})
                        state.calls += 1
                else:  # a call left unclosed, or text held back: it was text after all
                    pieces.append({"content": (_OPEN if state.inside else "") + state.held})
                state.held, state.inside = "", False
            if one:  # calls after the first are not the client's to see (their deltas become empty ones)
                pieces = [{} if any(c.get("index", 0) > 0 for c in d.get("tool_calls") or ()) else d for d in pieces]
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


def _feed_json(state: _Choice, piece: str) -> list[dict[str, Any]]:
    """Llama 3: an answer whose first non-blank text opens a JSON object (or the python tag) is held to its end."""
    if state.inside:
        state.held += piece
        return []
    if state.started:
        return [{"content": piece}]
    text = state.held + piece
    first = text.lstrip()
    if not first:
        state.held = text
        return []
    state.started = True
    state.held = ""
    if first.startswith("{") or first.startswith(_PYTHON_TAG) or _PYTHON_TAG.startswith(first):
        state.inside, state.held = True, text
        return []
    return [{"content": text}]


def _feed_mistral(state: _Choice, piece: str) -> list[dict[str, Any]]:
    """Mistral: from ``[TOOL_CALLS]`` on, or all of an answer opening with ``[``, the text is held to its end."""
    if state.inside:
        state.held += piece
        return []
    text = state.held + piece
    state.held = ""
    if not state.started:
        if not text.lstrip():
            state.held = text
            return []
        state.started = True
        if text.lstrip().startswith("["):  # the marker, or the list of calls without it
            state.inside, state.held = True, text
            return []
    at = text.find(_MISTRAL_MARK)
    if at >= 0:
        state.inside, state.held = True, text[at:]
        return [{"content": text[:at]}] if at else []
    keep = _partial(text, _MISTRAL_MARK)
    state.held = text[len(text) - keep:]
    return [{"content": text[: len(text) - keep]}] if len(text) > keep else []


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
