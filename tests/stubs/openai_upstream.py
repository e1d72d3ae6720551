"""A stub OpenAI-compatible server: answers chat, completions, embeddings and models, and remembers
every request it got. A request steers it with an extra ``stub`` field in the body (which the proxy
passes through untouched): ``{"status": 429, "error": "...", "chunks": [...], "delay": 0.05,
"headers": {...}, "drop_after": 2, "sleep": 1.0, "message": {...whole answer message...},
"finish_reason": "tool_calls", "n": 2, "raw": "<SSE text sent as is>", "bytewise": true}``.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route


@dataclass
class Seen:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: Any


@dataclass
class OpenAIStub:
    name: str = "stub"
    seen: list[Seen] = field(default_factory=list)
    finished_streams: int = 0
    cancelled_streams: int = 0
    stream_finished_at: float = 0.0
    fail: tuple[int, str] | None = None  # (status, message) for every request while set
    fail_next: list[tuple[int, dict[str, str]]] = field(default_factory=list)  # (status, headers), one per request

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/v1/chat/completions", self.chat, methods=["POST"]),
                Route("/v1/completions", self.completions, methods=["POST"]),
                Route("/v1/embeddings", self.embeddings, methods=["POST"]),
                Route("/v1/models", self.models, methods=["GET"]),
                Route("/{path:path}", self.other, methods=["GET", "POST"]),
            ]
        )

    async def _remember(self, request: Request) -> Any:
        raw = await request.body()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode(errors="replace")
        self.seen.append(Seen(request.method, request.url.path, request.url.query, dict(request.headers), body))
        return body

    async def _steer(self, body: Any) -> Response | None:
        if not isinstance(body, dict):
            return None
        if self.fail_next:
            status, headers = self.fail_next.pop(0)
            return JSONResponse({"error": {"message": f"{self.name} failed with {status}", "type": "stub_error", "param": None,
                                           "code": None}}, status_code=status, headers=headers)
        if self.fail:
            return JSONResponse({"error": {"message": self.fail[1], "type": "stub_error", "param": None, "code": None}},
                                status_code=self.fail[0])
        stub = body.get("stub") if isinstance(body, dict) else None
        if not stub:
            return None
        if stub.get("sleep"):
            await asyncio.sleep(stub["sleep"])
        if stub.get("status"):
            return JSONResponse(
                {"error": {"message": stub.get("error", "stub error"), "type": "stub_error", "param": None, "code": "stub"}},
                status_code=stub["status"],
                headers=stub.get("headers"),
            )
        return None

    async def chat(self, request: Request) -> Response:
        body = await self._remember(request)
        if not isinstance(body, dict) or not isinstance(body.get("messages", []), list) or not all(
                isinstance(m, dict) for m in body.get("messages", [])):
            return _invalid("messages must be a list of objects")  # as a real server refuses what it cannot read
        steered = await self._steer(body)
        if steered is not None:
            return steered
        last = body["messages"][-1].get("content") if body.get("messages") else ""
        text = f"{self.name} says: {last}"
        stub = body.get("stub") or {}
        if stub.get("raw"):
            return StreamingResponse(self._raw(stub["raw"].encode(), stub.get("bytewise", False)), media_type="text/event-stream")
        if body.get("stream"):
            pieces = stub.get("chunks") or [text[i : i + 5] for i in range(0, len(text), 5)]
            return StreamingResponse(self._chat_stream(body, pieces, stub), media_type="text/event-stream")
        message = stub.get("message") or {"role": "assistant", "content": text}
        n = stub.get("n", 1)
        return JSONResponse(
            {
                "id": "chatcmpl-stub",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model", "m"),
                "choices": [{"index": i, "message": message if i == 0 else {"role": "assistant", "content": f"{text} ({i})"},
                             "finish_reason": stub.get("finish_reason", "stop"), "logprobs": None} for i in range(n)],
                "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
            }
        )

    async def _raw(self, data: bytes, bytewise: bool) -> Any:
        """Exactly these bytes, in one write or one write per byte (each flushed to the socket on its own)."""
        if not bytewise:
            yield data
            return
        for i in range(len(data)):
            yield data[i : i + 1]
            await asyncio.sleep(0)

    async def _chat_stream(self, body: dict[str, Any], pieces: list[str], stub: dict[str, Any]) -> Any:
        base = {"id": "chatcmpl-stub", "object": "chat.completion.chunk", "created": 1, "model": body.get("model", "m")}
        try:
            for i, piece in enumerate(pieces):
                if stub.get("drop_after") is not None and i == stub["drop_after"]:
                    raise ConnectionResetError("stub drops the stream")
                delta = {"role": "assistant", "content": piece} if i == 0 else {"content": piece}
                yield "data: " + json.dumps({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}) + "\n\n"
                if stub.get("delay"):
                    await asyncio.sleep(stub["delay"])
            yield "data: " + json.dumps({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}) + "\n\n"
            yield "data: [DONE]\n\n"
            self.finished_streams += 1
            self.stream_finished_at = time.monotonic()
        except asyncio.CancelledError:
            self.cancelled_streams += 1
            raise

    async def completions(self, request: Request) -> Response:
        body = await self._remember(request)
        if not isinstance(body, dict):
            return _invalid("the body must be an object")
        steered = await self._steer(body)
        if steered is not None:
            return steered
        text = f"{self.name} continues: {body.get('prompt')}"
        if body.get("stream"):
            async def gen() -> Any:
                for piece in (text[:6], text[6:]):
                    choice = {"index": 0, "text": piece, "finish_reason": None, "logprobs": None}
                    event = {"id": "cmpl-stub", "object": "text_completion", "created": 1, "model": "m", "choices": [choice]}
                    yield "data: " + json.dumps(event) + "\n\n"
                yield "data: [DONE]\n\n"
            return StreamingResponse(gen(), media_type="text/event-stream")
        return JSONResponse(
            {
                "id": "cmpl-stub",
                "object": "text_completion",
                "created": 1,
                "model": body.get("model", "m"),
                "choices": [{"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}],
                "usage": {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5},
            }
        )

    async def embeddings(self, request: Request) -> Response:
        body = await self._remember(request)
        if not isinstance(body, dict) or not isinstance(body.get("input"), (str, list)):
            return _invalid("input must be a string or a list")
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        return JSONResponse(
            {
                "object": "list",
                "data": [{"object": "embedding", "index": i, "embedding": [0.1, 0.2, float(len(s))]} for i, s in enumerate(inputs)],
                "model": body.get("model", "m"),
                "usage": {"prompt_tokens": 1, "total_tokens": 1},
            }
        )

    async def models(self, request: Request) -> Response:
        await self._remember(request)
        return JSONResponse({"object": "list", "data": [{"id": f"{self.name}-model", "object": "model", "created": 0, "owned_by": "stub"}]})

    async def other(self, request: Request) -> Response:
        await self._remember(request)
        return JSONResponse({"path": request.url.path, "query": request.url.query})


def _invalid(message: str) -> Response:
    return JSONResponse({"error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}}, status_code=400)
