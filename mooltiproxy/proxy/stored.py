"""``/v1/responses`` with memory: a response is stored under its id for the key that made it (``store``, true
unless the request or ``responses.store`` says otherwise), ``previous_response_id`` continues from one — its input
and output laid before the new input, as OpenAI does (its ``instructions`` are not carried over) — and
``GET`` / ``DELETE /v1/responses/{id}`` and ``GET /v1/responses/{id}/input_items`` read and remove them.

The translation itself is the Responses front's (``mappers/responses.py``), in the pipeline; this layer only
rewrites the request's ``input`` and keeps what is answered: the ``response`` object of a JSON answer, or the one
in a stream's ``response.completed`` event. A target that speaks the Responses API itself (its ``routes:`` has
``/v1/responses``) keeps its own responses: its requests pass untouched.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import BadRequest, MethodNotAllowed, NotFound
from ..http.bodies import read_body
from ..http.context import RequestInfo
from ..state.responses import ResponseStore
from .respond import send_json

PATH = "/v1/responses"
_PREFIX = PATH + "/"
_COMPLETED = b"event: response.completed\n"


class StoredResponses:
    def __init__(self, pipeline: ASGIApp, store: ResponseStore, max_body: int, enabled: Callable[[], bool]) -> None:
        self.pipeline = pipeline
        self.store = store
        self.max_body = max_body
        self.enabled = enabled  # responses.store of the running settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path, method = scope["path"], scope["method"]
        info: RequestInfo = scope["mooltiproxy"]
        if path == PATH:
            if method != "POST":
                raise MethodNotAllowed(f"{PATH} answers POST only, not {method}.", headers=[("Allow", "POST")])
            await self._create(scope, receive, send, info)
            return
        rest = path[len(_PREFIX):].split("/")
        if len(rest) == 2 and rest[1] == "input_items" and method == "GET":
            doc = await self._doc(info, rest[0])
            items = doc.get("input") or []
            await send_json(None, 200, {"object": "list", "data": items, "first_id": items[0]["id"] if items else None,
                                        "last_id": items[-1]["id"] if items else None, "has_more": False}, send)
        elif len(rest) == 1 and method == "GET":
            await send_json(None, 200, (await self._doc(info, rest[0]))["response"], send)
        elif len(rest) == 1 and method == "DELETE":
            if not await self.store.delete(_owner(info), rest[0]):
                raise _missing(rest[0])
            await send_json(None, 200, {"id": rest[0], "object": "response", "deleted": True}, send)
        elif len(rest) == 2 and rest[1] == "cancel":
            raise BadRequest("Only responses made in the background can be cancelled, and this proxy makes none there.",
                             code="not_cancellable")
        else:
            raise NotFound(f"There is no {method} {path} here: stored responses are read with GET {PATH}/{{id}} (and "
                           f"/input_items) and removed with DELETE {PATH}/{{id}}.", code="route_not_found")

    async def _doc(self, info: RequestInfo, response_id: str, param: str | None = None) -> dict[str, Any]:
        raw = await self.store.get(_owner(info), response_id)
        if raw is None:
            raise _missing(response_id, param)
        doc: dict[str, Any] = orjson.loads(raw)
        return doc

    async def _create(self, scope: Scope, receive: Receive, send: Send, info: RequestInfo) -> None:
        body = await read_body(receive, self.max_body, _length(scope))
        try:
            request = orjson.loads(body)
        except orjson.JSONDecodeError:
            request = None
        if not isinstance(request, dict) or self._native(scope, info, request):
            await self.pipeline(scope, _replay(body, receive), send)  # the pipeline says what is wrong with it, or relays it
            return
        items = _items(request.get("input"))
        previous = request.get("previous_response_id")
        if previous is not None:
            if not isinstance(previous, str):
                raise BadRequest("'previous_response_id' must be the id of a response, a string.", param="previous_response_id")
            doc = await self._doc(info, previous, "previous_response_id")
            prior = [item for item in doc["response"].get("output") or () if isinstance(item, dict)]
            request["input"] = items = [*doc.get("input", ()), *prior, *items]
            body = orjson.dumps(request)
        if not (self.enabled() and request.get("store", True) is not False):
            await self.pipeline(_with_length(scope, len(body)), _replay(body, receive), send)
            return
        kept = _Kept()
        await self.pipeline(_with_length(scope, len(body)), _replay(body, receive), kept.watch(send))
        response = kept.response()
        if response is not None and isinstance(response.get("id"), str) and response.get("status") != "failed":
            await self.store.put(_owner(info), response["id"], orjson.dumps({"input": items, "response": response}))

    def _native(self, scope: Scope, info: RequestInfo, request: dict[str, Any]) -> bool:
        """Whether the target this request goes to speaks the Responses API itself."""
        header = next((v.decode("latin-1").strip() for k, v in scope["headers"] if k == b"target"), None)
        model = request.get("model")
        try:
            target, _ = info.settings.router.pick(header, model if isinstance(model, str) else None, info.key_targets)
        except Exception:
            return False  # the pipeline answers the same question with its error
        return PATH in target.routes


class _Kept:
    """What went back to the client, watched for the ``response`` object to store: a JSON answer's body, or a stream's
    ``response.completed`` event (the rest of the stream passes unread)."""

    def __init__(self) -> None:
        self.status = 0
        self.stream = False
        self.parts: list[bytes] = []
        self.tail = b""
        self.completed: bytes | None = None

    def watch(self, send: Send) -> Send:
        async def watching(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.status = message["status"]
                self.stream = any(k == b"content-type" and v.startswith(b"text/event-stream") for k, v in message.get("headers", ()))
            elif message["type"] == "http.response.body" and self.status == 200:
                self._take(message.get("body", b""))
            await send(message)

        return watching

    def _take(self, chunk: bytes) -> None:
        if not self.stream:
            self.parts.append(chunk)
            return
        if self.completed is not None or not chunk:
            return
        text = self.tail + chunk
        at = text.find(_COMPLETED)
        if at < 0:
            self.tail = text[-len(_COMPLETED):]  # an event name cut between two chunks
            return
        self.tail = b""
        self.parts = [text[at:]]
        self.completed = b""

    def response(self) -> dict[str, Any] | None:
        data = b"".join(self.parts)
        try:
            if self.stream:
                line = next((ln for ln in data.split(b"\n") if ln.startswith(b"data:")), None)
                event = orjson.loads(line[5:]) if line is not None else None
                found = event.get("response") if isinstance(event, dict) else None
            else:
                found = orjson.loads(data) if data else None
        except orjson.JSONDecodeError:
            return None
        return found if isinstance(found, dict) and found.get("object") == "response" else None


def _items(given: Any) -> list[dict[str, Any]]:
    """The request's input as the list of items it is stored as (a string is one user message), each with an id."""
    items = [{"type": "message", "role": "user", "content": given}] if isinstance(given, str) else (
        [dict(i) for i in given if isinstance(i, dict)] if isinstance(given, list) else [])
    for item in items:
        if "id" not in item:
            item["id"] = ("msg_" if item.get("type", "message") == "message" else "item_") + os.urandom(24).hex()
    return items


def _owner(info: RequestInfo) -> str:
    """Who may read a stored response: the proxy's key that made it, or in passthrough mode the client's own key."""
    if info.client_key:
        return "client:" + hashlib.sha256(info.client_key.encode()).hexdigest()
    return "key:" + (info.key_name or "")


def _missing(response_id: str, param: str | None = None) -> NotFound:
    return NotFound(f"No response with id '{response_id}' is stored for this key (responses are kept for the key that made "
                    "them, for responses.retention).", code="response_not_found", param=param)


def _length(scope: Scope) -> int | None:
    for k, v in scope["headers"]:
        if k == b"content-length":
            return int(v) if v.isdigit() else None
    return None


def _with_length(scope: Scope, length: int) -> Scope:
    """The scope with the rewritten body's length: changed in place, as the server's protocol keeps reading flags the
    pipeline sets on this very scope (whether the request may be cancelled)."""
    headers = [(k, v) for k, v in scope["headers"] if k != b"content-length"]
    headers.append((b"content-length", str(length).encode()))
    scope["headers"] = headers
    return scope


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that gives the (rewritten) body once, then what the client sends (its leaving)."""
    given = False

    async def replay() -> Message:
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
