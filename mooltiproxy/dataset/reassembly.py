"""Streams put back together: OpenAI chunks, or the raw SSE bytes that carry them, into the whole answer.

What comes out has the shape of a non-streamed answer (``choices[].message`` with ``content``,
``reasoning_content`` and ``tool_calls``, ``finish_reason``, ``usage``), so the recorder treats streamed
and plain exchanges alike. Whether the stream ended properly is tracked too: a chat stream that never
reached a ``finish_reason`` (or ``[DONE]`` on a relayed stream) was cut short.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Any, Protocol

import orjson

from ..translate.sse import SSEParser

_DONE: dict[str, Any] = {}  # OpenAI's closing ``data: [DONE]``, told apart by identity


class StreamReassembler(Protocol):
    """Puts one API's event stream back together: fed the relayed bytes (``feed``) or the events (``add``)."""

    done: bool
    error: str | None

    def feed(self, data: bytes) -> None: ...

    def add(self, event: dict[str, Any]) -> None: ...

    def answer(self) -> dict[str, Any]: ...

    @property
    def finished(self) -> bool: ...

    @property
    def truncated(self) -> bool: ...


def _json_events(parser: SSEParser, data: bytes) -> Iterator[dict[str, Any]]:
    """The JSON objects the bytes complete, and ``_DONE`` for ``[DONE]``; what is not a JSON object is skipped."""
    for _, payload in parser.feed(data):
        if payload == b"[DONE]":
            yield _DONE
            continue
        try:
            event = orjson.loads(payload)
        except orjson.JSONDecodeError:
            continue
        if isinstance(event, dict):
            yield event


class _Budget:
    """How much text a record of one answer keeps (``dataset.max_text``); past it, text is dropped and the answer
    is marked truncated. Pieces are joined every few hundred, so a long stream costs its text, not a Python
    object per token."""

    __slots__ = ("left", "truncated")

    def __init__(self, limit: int | None) -> None:
        self.left = limit
        self.truncated = False

    def append(self, pieces: list[str], piece: str) -> None:
        if self.left is not None:
            if len(piece) > self.left:
                piece = piece[: self.left]
                self.truncated = True
            self.left -= len(piece)
            if not piece:
                return
        pieces.append(piece)
        if len(pieces) >= 256:
            pieces[:] = ["".join(pieces)]


class _Choice:
    __slots__ = ("content", "finish_reason", "reasoning", "role", "tool_calls")

    def __init__(self) -> None:
        self.content: list[str] = []
        self.reasoning: list[str] = []
        self.tool_calls: dict[int, dict[str, Any]] = {}
        self.finish_reason: str | None = None
        self.role = "assistant"


class Reassembler:
    """Feed it chunk dicts (``add``) or raw bytes (``feed``); ``answer()`` is the whole answer so far."""

    __slots__ = ("_budget", "_choices", "_kind", "_parser", "done", "error", "head", "usage")

    def __init__(self, kind: str = "chat", limit: int | None = None) -> None:
        self._kind = kind
        self._budget = _Budget(limit)
        self._choices: dict[int, _Choice] = {}
        self._parser: SSEParser | None = None
        self.usage: dict[str, Any] | None = None
        self.head: dict[str, Any] = {}
        self.done = False  # [DONE] seen (relayed OpenAI streams)
        self.error: str | None = None

    def feed(self, data: bytes) -> None:
        """Raw SSE bytes as they were relayed: events split across reads or several in one read."""
        if self._parser is None:
            self._parser = SSEParser(self._budget.left)
        for event in _json_events(self._parser, data):
            if event is _DONE:
                self.done = True
            else:
                self.add(event)

    def add(self, chunk: dict[str, Any]) -> None:
        if "error" in chunk and not chunk.get("choices"):
            err = chunk["error"]
            self.error = str(err.get("message") if isinstance(err, dict) else err)
            return
        if not self.head:
            self.head = {k: chunk[k] for k in ("id", "model", "created") if k in chunk}
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        for c in chunk.get("choices") or ():
            if not isinstance(c, dict):
                continue
            choice = self._choices.get(c.get("index", 0))
            if choice is None:
                choice = self._choices[c.get("index", 0)] = _Choice()
            if c.get("finish_reason"):
                choice.finish_reason = c["finish_reason"]
            if self._kind != "chat":
                if isinstance(c.get("text"), str):
                    self._budget.append(choice.content, c["text"])
                continue
            delta = c.get("delta") or {}
            if isinstance(delta.get("content"), str):
                self._budget.append(choice.content, delta["content"])
            reasoning = delta.get("reasoning_content") or delta.get("reasoning")
            if isinstance(reasoning, str):
                self._budget.append(choice.reasoning, reasoning)
            for call in delta.get("tool_calls") or ():
                self._tool_call(choice, call)

    @staticmethod
    def _tool_call(choice: _Choice, fragment: dict[str, Any]) -> None:
        """Tool calls arrive in fragments: the first with id and name, then pieces of the arguments."""
        index = fragment.get("index", len(choice.tool_calls))
        call = choice.tool_calls.get(index)
        if call is None:
            call = choice.tool_calls[index] = {"id": None, "type": "function", "function": {"name": "", "arguments": ""}}
        if fragment.get("id"):
            call["id"] = fragment["id"]
        function = fragment.get("function") or {}
        if function.get("name"):
            call["function"]["name"] += function["name"]
        if isinstance(function.get("arguments"), str):
            call["function"]["arguments"] += function["arguments"]

    @property
    def truncated(self) -> bool:
        """Text was left out: past ``dataset.max_text``, or in an event longer than that."""
        return self._budget.truncated or bool(self._parser and self._parser.overflowed)

    @property
    def finished(self) -> bool:
        """Every choice reached its finish_reason: the answer is whole."""
        return bool(self._choices) and all(c.finish_reason for c in self._choices.values())

    def answer(self) -> dict[str, Any]:
        choices = []
        for index in sorted(self._choices):
            c = self._choices[index]
            if self._kind == "chat":
                message: dict[str, Any] = {"role": c.role, "content": "".join(c.content)}
                if c.reasoning:
                    message["reasoning_content"] = "".join(c.reasoning)
                if c.tool_calls:
                    message["tool_calls"] = [c.tool_calls[i] for i in sorted(c.tool_calls)]
                choices.append({"index": index, "message": message, "finish_reason": c.finish_reason})
            else:
                choices.append({"index": index, "text": "".join(c.content), "finish_reason": c.finish_reason})
        answer = {**self.head, "choices": choices}
        if self.usage is not None:
            answer["usage"] = self.usage
        return answer


class _TypedStream(ABC):
    """What the reassemblers of relayed streams in another API than OpenAI's share: the text budget, the SSE parser,
    and whether the stream's last event (``done``) or an error event came. A subclass reads each event (``add``)."""

    __slots__ = ("_budget", "_parser", "done", "error")

    def __init__(self, limit: int | None = None) -> None:
        self._budget = _Budget(limit)
        self._parser = SSEParser(limit)
        self.done = False
        self.error: str | None = None

    @property
    def finished(self) -> bool:
        return self.done

    @property
    def truncated(self) -> bool:
        return self._budget.truncated or self._parser.overflowed

    def feed(self, data: bytes) -> None:
        for event in _json_events(self._parser, data):
            if event is not _DONE:
                self.add(event)

    @abstractmethod
    def add(self, event: dict[str, Any]) -> None:
        """Read one event of the stream into the answer being put back together."""


class MessagesReassembler(_TypedStream):
    """The same for the Anthropic Messages event stream (relayed to a client of an Anthropic target): the
    blocks put back together into the ``Message`` they add up to, in Anthropic's own shape (the recorder
    turns it into the OpenAI one, as it does a relayed non-streamed answer)."""

    __slots__ = ("_blocks", "_stop_reason", "_usage", "head")  # done: message_stop seen

    def __init__(self, limit: int | None = None) -> None:
        super().__init__(limit)
        self._blocks: dict[int, dict[str, Any]] = {}
        self._stop_reason: str | None = None
        self._usage: dict[str, Any] = {}
        self.head: dict[str, Any] = {}

    def add(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "message_start":
            message = event.get("message") or {}
            self.head = {"id": message.get("id"), "model": message.get("model")}
            self._usage.update(message.get("usage") or {})
        elif kind == "content_block_start":
            self._blocks[event.get("index", len(self._blocks))] = dict(event.get("content_block") or {})
        elif kind == "content_block_delta":
            block = self._blocks.setdefault(event.get("index", 0), {"type": "text"})
            delta = event.get("delta") or {}
            for field in ("text", "thinking", "partial_json"):
                if isinstance(delta.get(field), str):
                    self._budget.append(block.setdefault(f"_{field}", []), delta[field])
        elif kind == "message_delta":
            self._stop_reason = (event.get("delta") or {}).get("stop_reason") or self._stop_reason
            self._usage.update(event.get("usage") or {})
        elif kind == "message_stop":
            self.done = True
        elif kind == "error":
            self.error = str((event.get("error") or {}).get("message") or "error event")

    def answer(self) -> dict[str, Any]:
        content = []
        for index in sorted(self._blocks):
            block = {k: v for k, v in self._blocks[index].items() if not k.startswith("_")}
            for field in ("text", "thinking"):
                if f"_{field}" in self._blocks[index]:
                    block[field] = block.get(field, "") + "".join(self._blocks[index][f"_{field}"])
            partial = "".join(self._blocks[index].get("_partial_json", ()))
            if block.get("type") == "tool_use" and partial:
                try:
                    block["input"] = orjson.loads(partial)
                except orjson.JSONDecodeError:
                    block["input"] = {"partial_json": partial}
            content.append(block)
        return {**self.head, "type": "message", "role": "assistant", "content": content, "stop_reason": self._stop_reason,
                "usage": self._usage}


class GenerateReassembler(_TypedStream):
    """The same for TGI's ``/generate_stream`` (relayed to a client of a TGI target): the tokens' text put back
    together into the ``/generate`` answer they add up to, ``{generated_text, details}``, in TGI's own shape."""

    __slots__ = ("_text", "details")  # done: the last event (the one carrying generated_text) seen

    def __init__(self, limit: int | None = None) -> None:
        super().__init__(limit)
        self._text: list[str] = []
        self.details: dict[str, Any] = {}

    def add(self, event: dict[str, Any]) -> None:
        if "error" in event:
            self.error = str(event.get("error") or "error event")
            return
        token = event.get("token")
        if isinstance(token, dict) and not token.get("special") and isinstance(token.get("text"), str):
            self._budget.append(self._text, token["text"])
        if event.get("generated_text") is not None:
            self.done = True
            details = event.get("details")
            self.details = details if isinstance(details, dict) else {}

    def answer(self) -> dict[str, Any]:
        return {"generated_text": "".join(self._text), "details": self.details}
