"""A stub Anthropic Messages API that validates requests as the real one does (key and version headers,
required max_tokens, roles alternating from a user turn, temperature within [0, 1], tool results
answering earlier tool uses) and answers with real shapes and the named-event stream.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

FIELDS = {"model", "messages", "max_tokens", "system", "stop_sequences", "temperature", "top_p", "top_k", "stream", "tools",
          "tool_choice", "metadata", "thinking", "service_tier"}


class Invalid(Exception):
    pass


@dataclass
class AnthropicStub:
    key: str = "sk-ant-test"
    reply: str = "Hello from Claude."
    tool_use: dict[str, Any] | None = None  # answer with this tool call instead of text
    fail: tuple[int, str, str] | None = None  # (status, error type, message)
    stream_error_after: int | None = None
    seen: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/v1/messages", self.messages, methods=["POST"]),
                                 Route("/v1/models", self.models, methods=["GET"])])

    async def models(self, request: Request) -> Response:
        return JSONResponse({"data": [{"type": "model", "id": "claude-stub", "display_name": "Claude Stub"}], "has_more": False})

    def _error(self, status: int, kind: str, message: str) -> Response:
        return JSONResponse({"type": "error", "error": {"type": kind, "message": message}, "request_id": "req_stub"}, status_code=status)

    def _validate(self, request: Request, body: Any) -> None:
        if request.headers.get("x-api-key") != self.key:
            raise Invalid("authentication_error:invalid x-api-key")
        if not request.headers.get("anthropic-version"):
            raise Invalid("invalid_request_error:anthropic-version: header is required")
        if "authorization" in request.headers:
            raise Invalid("invalid_request_error:unexpected authorization header")
        unknown = set(body) - FIELDS
        if unknown:
            raise Invalid(f"invalid_request_error:{sorted(unknown)[0]}: Extra inputs are not permitted")
        if not isinstance(body.get("max_tokens"), int):
            raise Invalid("invalid_request_error:max_tokens: Field required")
        if not 0 <= body.get("temperature", 1) <= 1:
            raise Invalid("invalid_request_error:temperature: Input should be less than or equal to 1")
        messages = body.get("messages") or []
        if not messages or messages[0]["role"] != "user":
            raise Invalid("invalid_request_error:messages: first message must use the \"user\" role")
        tool_ids: set[str] = set()
        for i, m in enumerate(messages):
            if m["role"] not in ("user", "assistant"):
                raise Invalid(f"invalid_request_error:messages.{i}.role: Input should be 'user' or 'assistant'")
            if i and messages[i - 1]["role"] == m["role"]:
                raise Invalid("invalid_request_error:messages: roles must alternate between \"user\" and \"assistant\"")
            for block in m["content"] if isinstance(m["content"], list) else []:
                if block["type"] == "tool_use":
                    tool_ids.add(block["id"])
                if block["type"] == "tool_result" and block["tool_use_id"] not in tool_ids:
                    raise Invalid("invalid_request_error:tool_result block(s) without a matching tool_use")

    async def messages(self, request: Request) -> Response:
        body = await request.json()
        self.seen.append(body)
        self.headers.append(dict(request.headers))
        try:
            try:
                self._validate(request, body)
            except (KeyError, TypeError, AttributeError, IndexError) as exc:  # a shape the API would refuse, as it does
                raise Invalid(f"invalid_request_error:the request does not have the Messages API's shape ({exc!r})") from None
        except Invalid as exc:
            kind, _, message = str(exc).partition(":")
            return self._error(401 if kind == "authentication_error" else 400, kind, message)
        if self.fail:
            return self._error(*self.fail)
        content: list[dict[str, Any]] = [{"type": "text", "text": self.reply}]
        stop = "end_turn"
        if self.tool_use:
            content = [{"type": "text", "text": "Let me check."}, {"type": "tool_use", **self.tool_use}]
            stop = "tool_use"
        for s in body.get("stop_sequences") or []:
            if s in self.reply:
                content = [{"type": "text", "text": self.reply.split(s)[0]}]
                stop = "stop_sequence"
        usage = {"input_tokens": 11, "output_tokens": 6}
        if body.get("stream"):
            return StreamingResponse(self._events(body, content, stop, usage), media_type="text/event-stream")
        return JSONResponse({"id": "msg_stub", "type": "message", "role": "assistant", "model": body["model"], "content": content,
                             "stop_reason": stop, "stop_sequence": None, "usage": usage})

    async def _events(self, body: dict[str, Any], content: list[dict[str, Any]], stop: str, usage: dict[str, int]) -> Any:
        def event(kind: str, data: dict[str, Any]) -> str:
            return f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n"

        yield event("message_start", {"message": {"id": "msg_stub", "type": "message", "role": "assistant", "model": body["model"],
                                                  "content": [], "stop_reason": None, "stop_sequence": None,
                                                  "usage": {"input_tokens": usage["input_tokens"], "output_tokens": 1}}})
        sent = 0
        for index, block in enumerate(content):
            if block["type"] == "text":
                yield event("content_block_start", {"index": index, "content_block": {"type": "text", "text": ""}})
                yield event("ping", {})
                words = block["text"].split(" ")
                for i, word in enumerate(words):
                    if self.stream_error_after is not None and sent == self.stream_error_after:
                        yield event("error", {"error": {"type": "overloaded_error", "message": "Overloaded"}})
                        return
                    sent += 1
                    yield event("content_block_delta", {"index": index, "delta": {"type": "text_delta",
                                                                                  "text": word + (" " if i < len(words) - 1 else "")}})
                    await asyncio.sleep(0)
            else:
                yield event("content_block_start", {"index": index, "content_block": {"type": "tool_use", "id": block["id"],
                                                                                      "name": block["name"], "input": {}}})
                args = json.dumps(block["input"])
                for piece in ("", args[: len(args) // 2], args[len(args) // 2:]):
                    yield event("content_block_delta", {"index": index, "delta": {"type": "input_json_delta", "partial_json": piece}})
            yield event("content_block_stop", {"index": index})
        yield event("message_delta", {"delta": {"stop_reason": stop, "stop_sequence": None},
                                      "usage": {"output_tokens": usage["output_tokens"]}})
        yield event("message_stop", {})
