"""OpenAI's Responses API (``POST /v1/responses``) in front of any target, on its chat completions route: a
Responses request becomes a chat, the chat's answer and stream become a ``response`` object and its typed events.

What is translated:

- ``input`` as a string or a list of items: messages (``input_text``, ``output_text``, ``input_image``,
  ``refusal`` parts), ``function_call`` and ``function_call_output`` items; ``instructions`` as the system
  message. ``reasoning`` items (the model's earlier thinking) are left out, as chat APIs take none back.
- ``max_output_tokens``, ``temperature``, ``top_p``, ``top_logprobs``, ``parallel_tool_calls``, function
  ``tools`` and ``tool_choice``, ``text.format`` (``json_object``, ``json_schema``) → ``response_format``,
  ``text.verbosity``, ``reasoning.effort`` → ``reasoning_effort``. Sampler fields of chat completions that some
  servers take (``seed``, ``stop``, ``top_k``, ``min_p``, ``frequency_penalty``, ``presence_penalty``,
  ``repetition_penalty``) pass on as they are (``extra_body``).
- Refused with a 400 that names the field: hosted tools (web search, file search, code interpreter…), an
  ``item_reference``, files, ``background``, ``conversation``, ``prompt``, ``truncation: "auto"``,
  ``max_tool_calls`` and an ``include`` other than ``message.output_text.logprobs``; any field the API does not
  have, as OpenAI refuses it.
- ``store``, ``previous_response_id``, ``metadata``, ``user``, ``service_tier``, ``prompt_cache_key`` and
  ``safety_identifier`` change nothing that is generated: the proxy's stored responses (``proxy/stored.py``)
  handle the first two, the others are echoed or left out.

The answer's ``output`` holds, in order, a ``reasoning`` item (where the backend returns reasoning), the
``message`` (its text as one ``output_text`` part) and one ``function_call`` item per call; ``status`` is
``incomplete`` with the reason when the answer was cut by the token limit or a content filter. The stream's
events follow the documented order with a ``sequence_number`` counting from 0; an upstream failure mid-stream
is a ``response.failed`` event, then an ``error`` event.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from typing import Any

from mooltiproxy import MapContext, MappingError
from mooltiproxy.backends import Front
from mooltiproxy.errors import ProxyError
from mooltiproxy.translate import sse

PATH = "/v1/responses"
CHAT = "/v1/chat/completions"

# Fields a Responses request may have; anything else is refused as OpenAI refuses it.
ECHOED = ("model", "instructions", "max_output_tokens", "temperature", "top_p", "parallel_tool_calls", "previous_response_id",
          "store", "metadata", "user", "tool_choice", "tools", "text", "reasoning", "truncation", "top_logprobs", "service_tier")
IGNORED = ("stream", "stream_options", "input", "include", "prompt_cache_key", "safety_identifier")
SAMPLERS = ("seed", "stop", "top_k", "min_p", "frequency_penalty", "presence_penalty", "repetition_penalty")
REFUSED = {"background": "running a response in the background", "conversation": "the Conversations API",
           "prompt": "stored prompt templates", "max_tool_calls": "a cap on the calls to hosted tools"}
LOGPROBS = "message.output_text.logprobs"
FINISH = {"length": "max_output_tokens", "content_filter": "content_filter"}


# ----------------------------------------------------------------------------------- Responses → chat


def front_request(body: Any, ctx: MapContext) -> dict[str, Any]:
    """A Responses request → an OpenAI chat request; what the answer echoes is kept in ``ctx.state``."""
    if not isinstance(body, dict):
        raise MappingError("A Responses request is a JSON object with an 'input'.", param=None)
    known = {*ECHOED, *IGNORED, *SAMPLERS, *REFUSED}
    for name in body:
        if name not in known:
            raise MappingError(f"Unknown parameter: '{name}'.", param=name)
    for name, what in REFUSED.items():
        if body.get(name) not in (None, False):
            raise MappingError(f"'{name}' ({what}) is not something this proxy offers; send the request without it.", param=name)
    include = body.get("include") or []
    if not isinstance(include, list) or any(i != LOGPROBS for i in include):
        raise MappingError(f"'include' may hold only \"{LOGPROBS}\" here.", param="include")
    if body.get("truncation") not in (None, "disabled"):
        raise MappingError("'truncation' may only be \"disabled\": the proxy does not shorten a conversation to fit.",
                           param="truncation")
    out: dict[str, Any] = {"messages": _messages(body.get("input"), body.get("instructions"))}
    if body.get("model") is not None:
        out["model"] = body["model"]
    for ours, theirs in (("max_output_tokens", "max_tokens"), ("temperature", "temperature"), ("top_p", "top_p"),
                         ("parallel_tool_calls", "parallel_tool_calls"), *((s, s) for s in SAMPLERS)):
        if body.get(ours) is not None:
            out[theirs] = body[ours]
    top = body.get("top_logprobs")
    if top is not None or LOGPROBS in include:
        out["logprobs"] = True
        if top:
            out["top_logprobs"] = top
    tools = body.get("tools")
    if tools:
        out["tools"] = [_tool(t, i) for i, t in enumerate(tools if isinstance(tools, list) else [tools])]
    if body.get("tool_choice") is not None:
        out["tool_choice"] = _tool_choice(body["tool_choice"])
    text = body.get("text")
    if text is not None:
        if not isinstance(text, dict):
            raise MappingError("'text' must be an object such as {\"format\": {\"type\": \"text\"}}.", param="text")
        fmt = _format(text.get("format"))
        if fmt is not None:
            out["response_format"] = fmt
        if text.get("verbosity") is not None:
            out["verbosity"] = text["verbosity"]
    reasoning = body.get("reasoning")
    if isinstance(reasoning, dict) and reasoning.get("effort") is not None:
        out["reasoning_effort"] = reasoning["effort"]
    if body.get("stream") is True:
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    ctx.state["responses"] = {k: body[k] for k in ECHOED if k in body}
    ctx.state["responses_id"] = "resp_" + os.urandom(24).hex()
    return out


def _messages(items: Any, instructions: Any) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    if instructions:
        if not isinstance(instructions, str):
            raise MappingError("'instructions' must be a string.", param="instructions")
        messages.append({"role": "system", "content": instructions})
    if isinstance(items, str):
        return [*messages, {"role": "user", "content": items}]
    if not isinstance(items, list) or not items:
        raise MappingError("'input' must be a string or a non-empty list of items.", param="input")
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise MappingError(f"input[{i}] must be an object.", param=f"input[{i}]")
        kind = item.get("type", "message")
        if kind == "message":
            messages.append(_message(item, i))
        elif kind == "function_call":
            for field in ("call_id", "name", "arguments"):
                if not isinstance(item.get(field), str):
                    raise MappingError(f"input[{i}] (a function_call) needs '{field}', a string.", param=f"input[{i}].{field}")
            call = {"id": item["call_id"], "type": "function", "function": {"name": item["name"], "arguments": item["arguments"]}}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":  # calls made in the same turn, or beside its text
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            if not isinstance(item.get("call_id"), str):
                raise MappingError(f"input[{i}] (a function_call_output) needs 'call_id', a string.", param=f"input[{i}].call_id")
            output = item.get("output")
            messages.append({"role": "tool", "tool_call_id": item["call_id"],
                             "content": output if isinstance(output, str) else _text(output, i)})
        elif kind == "reasoning":
            continue  # the model's earlier thinking: chat APIs take none back
        elif kind == "item_reference":
            raise MappingError(f"input[{i}] is an item_reference; send the item itself, or continue with previous_response_id.",
                               param=f"input[{i}]")
        else:
            raise MappingError(f"input[{i}] is a {kind!r} item, which is not something this proxy offers (it has function "
                               "tools only).", param=f"input[{i}].type")
    return messages


def _message(item: dict[str, Any], i: int) -> dict[str, Any]:
    role = item.get("role")
    if role not in ("user", "assistant", "system", "developer"):
        raise MappingError(f"input[{i}] has role {role!r}; a message is from the user, assistant, system or developer.",
                           param=f"input[{i}].role")
    role = "system" if role == "developer" else role  # what every chat backend and template knows
    content = item.get("content")
    if isinstance(content, str):
        return {"role": role, "content": content}
    if not isinstance(content, list):
        raise MappingError(f"input[{i}].content must be a string or a list of parts.", param=f"input[{i}].content")
    parts: list[dict[str, Any]] = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text", "text"):
            parts.append({"type": "text", "text": str(part.get("text", ""))})
        elif kind == "refusal":
            parts.append({"type": "text", "text": str(part.get("refusal", ""))})
        elif kind == "input_image":
            if not isinstance(part.get("image_url"), str):
                raise MappingError(f"input[{i}] has an image by file_id; send it as image_url (a URL or a data: URL).",
                                   param=f"input[{i}].content")
            image: dict[str, Any] = {"url": part["image_url"]}
            if part.get("detail") in ("low", "high"):
                image["detail"] = part["detail"]
            parts.append({"type": "image_url", "image_url": image})
        else:
            raise MappingError(f"input[{i}] has a content part of type {kind!r}, which cannot be sent on to a chat.",
                               param=f"input[{i}].content")
    if role == "assistant" or all(p["type"] == "text" for p in parts):
        return {"role": role, "content": "".join(p.get("text", "") for p in parts)}
    return {"role": role, "content": parts}


def _text(output: Any, i: int) -> str:
    if isinstance(output, list):
        return "".join(str(p.get("text", "")) for p in output if isinstance(p, dict) and p.get("type") in ("input_text", "output_text"))
    raise MappingError(f"input[{i}].output must be a string or a list of text parts.", param=f"input[{i}].output")


def _tool(tool: Any, i: int) -> dict[str, Any]:
    if not isinstance(tool, dict) or tool.get("type") != "function":
        kind = tool.get("type") if isinstance(tool, dict) else tool
        raise MappingError(f"tools[{i}] is a {kind!r} tool; only function tools reach a model through this proxy.",
                           param=f"tools[{i}]")
    if not isinstance(tool.get("name"), str):
        raise MappingError(f"tools[{i}] needs a 'name'.", param=f"tools[{i}].name")
    function = {k: tool[k] for k in ("name", "description", "parameters", "strict") if tool.get(k) is not None}
    return {"type": "function", "function": function}


def _tool_choice(choice: Any) -> Any:
    if choice in ("auto", "none", "required"):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise MappingError("'tool_choice' must be \"auto\", \"none\", \"required\" or {\"type\": \"function\", \"name\": …}.",
                       param="tool_choice")


def _format(fmt: Any) -> dict[str, Any] | None:
    if fmt is None or (isinstance(fmt, dict) and fmt.get("type") == "text"):
        return None
    if isinstance(fmt, dict) and fmt.get("type") == "json_object":
        return {"type": "json_object"}
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        if not isinstance(fmt.get("schema"), dict) or not isinstance(fmt.get("name"), str):
            raise MappingError("text.format of type json_schema needs a 'name' and a 'schema' object.", param="text.format")
        schema = {k: fmt[k] for k in ("name", "schema", "strict", "description") if fmt.get(k) is not None}
        return {"type": "json_schema", "json_schema": schema}
    raise MappingError("text.format must be {\"type\": \"text\"}, {\"type\": \"json_object\"} or a json_schema format.",
                       param="text.format")


# ----------------------------------------------------------------------------------- chat → Responses


def front_answer(body: dict[str, Any], ctx: MapContext) -> dict[str, Any]:
    """An OpenAI chat answer → a ``response`` object."""
    choice = (body.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    output: list[dict[str, Any]] = []
    if message.get("reasoning_content"):
        output.append(_reasoning_item(str(message["reasoning_content"])))
    text = message.get("content")
    if (isinstance(text, str) and text) or not message.get("tool_calls"):
        logprobs = _logprobs((choice.get("logprobs") or {}).get("content")) if _wants_logprobs(ctx) else None
        output.append(_message_item(text if isinstance(text, str) else "", logprobs, refusal=message.get("refusal")))
    for call in message.get("tool_calls") or ():
        output.append(_call_item(call))
    return _response(ctx, "completed", output, body.get("usage"), choice.get("finish_reason"), body.get("model"))


def _response(ctx: MapContext, status: str, output: list[dict[str, Any]], use: Any, finish: Any, model: Any,
              error: dict[str, Any] | None = None) -> dict[str, Any]:
    asked: dict[str, Any] = ctx.state.get("responses") or {}
    incomplete = FINISH.get(finish or "") if status == "completed" else None
    text: dict[str, Any] = asked["text"] if isinstance(asked.get("text"), dict) else {}
    return {
        "id": ctx.state.get("responses_id") or "resp_" + os.urandom(24).hex(), "object": "response",
        "created_at": ctx.state.setdefault("responses_created", int(time.time())),
        "status": "incomplete" if incomplete else status, "error": error,
        "incomplete_details": {"reason": incomplete} if incomplete else None,
        "instructions": asked.get("instructions"), "max_output_tokens": asked.get("max_output_tokens"),
        "model": asked.get("model") or model or "", "output": output,
        "parallel_tool_calls": asked.get("parallel_tool_calls", True), "previous_response_id": asked.get("previous_response_id"),
        "reasoning": {"effort": (asked.get("reasoning") or {}).get("effort"), "summary": None},
        "store": asked.get("store", True), "temperature": asked.get("temperature"),
        "text": {"format": text.get("format") or {"type": "text"}, **({"verbosity": text["verbosity"]} if text.get("verbosity") else {})},
        "tool_choice": asked.get("tool_choice", "auto"), "tools": asked.get("tools") or [], "top_p": asked.get("top_p"),
        "truncation": asked.get("truncation") or "disabled", "usage": _usage(use) if use is not None or status != "in_progress" else None,
        "user": asked.get("user"), "metadata": asked.get("metadata") or {},
        **({"top_logprobs": asked["top_logprobs"]} if asked.get("top_logprobs") is not None else {}),
    }


def _usage(use: Any) -> dict[str, Any]:
    use = use if isinstance(use, dict) else {}
    given, taken = use.get("prompt_tokens") or 0, use.get("completion_tokens") or 0
    cached = (use.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    reasoning = (use.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0
    return {"input_tokens": given, "input_tokens_details": {"cached_tokens": cached}, "output_tokens": taken,
            "output_tokens_details": {"reasoning_tokens": reasoning}, "total_tokens": use.get("total_tokens") or given + taken}


def _message_item(text: str, logprobs: list[dict[str, Any]] | None, *, status: str = "completed", item_id: str | None = None,
                  refusal: Any = None) -> dict[str, Any]:
    content: list[dict[str, Any]] = [] if status == "in_progress" else [_text_part(text, logprobs)]
    if refusal and status != "in_progress":
        content.append({"type": "refusal", "refusal": str(refusal)})
    return {"type": "message", "id": item_id or "msg_" + os.urandom(24).hex(), "status": status, "role": "assistant",
            "content": content}


def _text_part(text: str, logprobs: list[dict[str, Any]] | None) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs or []}


def _reasoning_item(text: str, item_id: str | None = None) -> dict[str, Any]:
    return {"type": "reasoning", "id": item_id or "rs_" + os.urandom(24).hex(), "summary": [],
            "content": [{"type": "reasoning_text", "text": text}]}


def _call_item(call: dict[str, Any], status: str = "completed", item_id: str | None = None) -> dict[str, Any]:
    fn = call.get("function") or {}
    return {"type": "function_call", "id": item_id or "fc_" + os.urandom(24).hex(),
            "call_id": call.get("id") or "call_" + os.urandom(12).hex(), "name": fn.get("name") or "",
            "arguments": fn.get("arguments") or "", "status": status}


def _wants_logprobs(ctx: MapContext) -> bool:
    return isinstance(ctx.request, dict) and bool(ctx.request.get("logprobs"))


def _logprobs(entries: Any) -> list[dict[str, Any]]:
    """Chat's ``logprobs.content`` → ``output_text.logprobs``: the same entries, ``bytes`` filled where missing."""
    def entry(e: dict[str, Any]) -> dict[str, Any]:
        token = str(e.get("token", ""))
        return {"token": token, "logprob": e.get("logprob"), "bytes": e.get("bytes") or list(token.encode())}

    return [{**entry(e), "top_logprobs": [entry(t) for t in e.get("top_logprobs") or () if isinstance(t, dict)]}
            for e in entries or () if isinstance(e, dict)]


# ------------------------------------------------------------------------------------------ the stream


class _Events:
    """The stream's events, numbered as they go out, and the items of the output as they open and close."""

    def __init__(self, ctx: MapContext) -> None:
        self.ctx = ctx
        self.seq = 0
        self.output: list[dict[str, Any]] = []
        self.open: dict[str, Any] | None = None  # the item being written
        self.text: list[str] = []
        self.logprobs: list[dict[str, Any]] = []
        self.calls: dict[int, dict[str, Any]] = {}  # chat's tool call index -> its item

    def event(self, kind: str, **fields: Any) -> dict[str, Any]:
        out = {"type": kind, "sequence_number": self.seq, **fields}
        self.seq += 1
        return out

    def item_event(self, kind: str, item: dict[str, Any], **fields: Any) -> dict[str, Any]:
        return self.event(kind, item_id=item["id"], output_index=self.output.index(item), **fields)

    def begin(self, item: dict[str, Any]) -> list[dict[str, Any]]:
        out = self.close()
        self.output.append(item)
        self.open = item
        self.text = []
        out.append(self.event("response.output_item.added", output_index=len(self.output) - 1, item=dict(item)))
        if item["type"] == "message":
            out.append(self.item_event("response.content_part.added", item, content_index=0, part=_text_part("", None)))
        elif item["type"] == "reasoning":
            out.append(self.item_event("response.content_part.added", item, content_index=0,
                                       part={"type": "reasoning_text", "text": ""}))
        return out

    def close(self) -> list[dict[str, Any]]:
        item, self.open = self.open, None
        if item is None:
            return []
        out = []
        text = "".join(self.text)
        if item["type"] == "message":
            part = _text_part(text, self.logprobs)
            out.append(self.item_event("response.output_text.done", item, content_index=0, text=text, logprobs=self.logprobs))
            out.append(self.item_event("response.content_part.done", item, content_index=0, part=part))
            item.update(status="completed", content=[part])
        elif item["type"] == "reasoning":
            part = {"type": "reasoning_text", "text": text}
            out.append(self.item_event("response.reasoning_text.done", item, content_index=0, text=text))
            out.append(self.item_event("response.content_part.done", item, content_index=0, part=part))
            item["content"] = [part]
        else:
            item.update(arguments=text, status="completed")
            out.append(self.item_event("response.function_call_arguments.done", item, arguments=text, name=item["name"]))
        out.append(self.event("response.output_item.done", output_index=self.output.index(item), item=dict(item)))
        return out


async def front_stream(events: AsyncIterator[dict[str, Any]], ctx: MapContext) -> AsyncIterator[dict[str, Any]]:
    """OpenAI chat chunks → the Responses event stream."""
    out = _Events(ctx)
    started = False
    finish = model = None
    use: Any = None
    logprobs = _wants_logprobs(ctx)
    try:
        async for chunk in events:
            if not started:
                started = True
                model = chunk.get("model")
                snapshot = _response(ctx, "in_progress", [], None, None, model)
                yield out.event("response.created", response=snapshot)
                yield out.event("response.in_progress", response=snapshot)
            if isinstance(chunk.get("usage"), dict):
                use = chunk["usage"]
            for choice in chunk.get("choices") or ():
                if choice.get("index", 0) != 0:
                    continue  # a Responses answer has one choice; n is not a Responses field
                delta = choice.get("delta") or {}
                if choice.get("finish_reason"):
                    finish = choice["finish_reason"]
                thinking = delta.get("reasoning_content")
                if thinking:
                    item = out.open
                    if item is None or item["type"] != "reasoning":
                        item = _reasoning_item("", None) | {"content": []}
                        for e in out.begin(item):
                            yield e
                    out.text.append(thinking)
                    yield out.item_event("response.reasoning_text.delta", item, content_index=0, delta=thinking)
                piece = delta.get("content")
                if piece and (out.open is None or out.open["type"] != "message") and not piece.strip():
                    continue  # blank text between calls (a template's newlines) opens no message of its own
                if piece:
                    item = out.open
                    if item is None or item["type"] != "message":
                        out.logprobs = []
                        item = _message_item("", None, status="in_progress")
                        for e in out.begin(item):
                            yield e
                    out.text.append(piece)
                    tokens = _logprobs((choice.get("logprobs") or {}).get("content")) if logprobs else []
                    out.logprobs += tokens
                    yield out.item_event("response.output_text.delta", item, content_index=0, delta=piece, logprobs=tokens)
                for call in delta.get("tool_calls") or ():
                    i = call.get("index", 0)
                    item = out.calls.get(i)
                    if item is None:
                        item = _call_item({"id": call.get("id"), "function": {"name": (call.get("function") or {}).get("name")}},
                                          status="in_progress")
                        out.calls[i] = item
                        for e in out.begin(item):
                            yield e
                    elif out.open is not item:
                        raise ProxyError("The upstream interleaved the arguments of parallel tool calls; the Responses stream "
                                         "cannot follow.", status=502, type="api_error", code="upstream_stream_unusual")
                    args = (call.get("function") or {}).get("arguments")
                    if args:
                        out.text.append(args)
                        yield out.item_event("response.function_call_arguments.delta", item, delta=args)
    except ProxyError as exc:
        if not started:
            raise  # nothing sent yet: the client gets the error with its status
        failed = _response(ctx, "failed", out.output, use, None, model, error={"code": exc.code or "server_error", "message": exc.message})
        yield out.event("response.failed", response=failed)
        exc.responses_sequence = out.seq  # type: ignore[attr-defined]  # read by _error_body: the error event's number
        raise
    if not started:
        return
    for e in out.close():
        yield e
    if not out.output:  # an empty answer is still a message, as the non-stream answer has one
        for e in out.begin(_message_item("", None, status="in_progress")) + out.close():
            yield e
    yield out.event("response.completed", response=_response(ctx, "completed", out.output, use, finish, model))


def frame(event: Any) -> bytes:
    """One event, named by its type, as the Responses API sends them."""
    return sse.frame_typed(event)


# ------------------------------------------------------------------------------------------ errors


def front_error(body: Any, ctx: MapContext) -> dict[str, Any]:
    """The upstream's OpenAI error is the Responses API's own shape already; other shapes are made into it."""
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return body
    message = body.get("error") if isinstance(body, dict) else body
    return {"error": {"message": str(message), "type": "api_error" if ctx.upstream_status >= 500 else "invalid_request_error",
                      "param": None, "code": None}}


def _error_body(exc: ProxyError, full: bool) -> dict[str, Any]:
    """The proxy's own error: OpenAI's error object; inside a stream (after ``response.failed``), the ``error`` event."""
    sequence = getattr(exc, "responses_sequence", None)
    message = exc.full_message() if full else exc.message
    if sequence is not None:
        return {"type": "error", "code": exc.code or exc.type, "message": message, "param": exc.param, "sequence_number": sequence}
    return exc.body(full)


FRONT = Front(paths=(PATH,), base=CHAT, request=front_request, answer=front_answer, stream=front_stream, error=front_error,
              frame=frame, done=b"", error_body=_error_body)
