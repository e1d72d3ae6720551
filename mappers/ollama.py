"""Ollama: OpenAI chat and completions onto ``/api/chat`` and ``/api/generate``, and ``/api/tags`` as an
OpenAI model list.

Chats go to ``/api/chat`` as messages: image parts (data URIs only) become base64 ``images``, an
assistant's tool calls carry their ``arguments`` as objects, a tool result names its function in
``tool_name``. With the target option ``raw_prompt`` they are rendered by the target's prompter instead
and sent to ``/api/generate`` with ``raw: true``. Completions always go to ``/api/generate`` raw, the
prompt as given. Sampling fields go into ``options`` under Ollama's names; ``stream`` is always set,
as Ollama streams unless told not to. Ollama leaves stop strings out of its text, so nothing is cut
here. Its NDJSON stream becomes OpenAI chunks: ``thinking`` as ``reasoning_content``, tool calls whole
(with ``parallel_tool_calls: false``, the first call only).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

from mooltiproxy import Fanout, MapContext, MappingError, UpstreamError, UpstreamStatus
from mooltiproxy import helpers as oa
from mooltiproxy.backends import Backend, Option, RouteSpec, boolean, integer, maybe, optional_text

from . import llamacpp

FINISH = {"stop": "stop", "length": "length"}
THINK_LEVELS = ("low", "medium", "high")
# OpenAI's reasoning_effort onto Ollama's think; Ollama knows three levels, so the ends fold inwards.
REASONING_EFFORT: dict[str, bool | str] = {"none": False, "minimal": "low", "low": "low", "medium": "medium", "high": "high",
                                           "xhigh": "high"}
# Sampling fields a client may send (e.g. with extra_body) that Ollama has as options: (option, low, high).
EXTRA_INTEGERS = {**llamacpp.EXTRA_INTEGERS, "num_ctx": "num_ctx"}
SAMPLING = llamacpp.SAMPLING  # Ollama runs llama.cpp: the same sampler names in its options
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant", "tool": "tool"}
# OpenAI fields that change what is generated and that Ollama has no place for: refused by name, never dropped.
# ``logprobs`` and a ``tool_choice`` that demands a call (on /api/chat) are refused where they are read. The fields
# that change nothing generated — ``user``, ``metadata``, ``store``, ``service_tier`` — label, keep or bill an exchange,
# and are left out.
UNSUPPORTED = ("logit_bias", "prediction", "audio", "web_search_options", "functions", "function_call")
API = "Ollama's API"


# -------------------------------------------------------------------------------- OpenAI → Ollama


def chat_request(body: dict[str, Any], ctx: MapContext) -> dict[str, Any] | Fanout:
    """``/v1/chat/completions`` → ``/api/chat``, or ``/api/generate`` raw when the target renders prompts itself."""
    out = _common(body, ctx, oa.CHAT)
    if ctx.target.options.get("raw_prompt"):
        prompt, _ = oa.chat_prompt(body, ctx)
        ctx.upstream_path = "/api/generate"
        ctx.state["raw"] = True
        out.update(prompt=prompt, raw=True)
        _set_format(out, body, oa.answer_schema(body, ctx, "Ollama"))
    else:
        _set_format(out, body, oa.response_schema(body.get("response_format"), "Ollama"))
        ctx.stop = oa.stops_of(body)
        out["messages"] = _messages(body)
        tools = _tools(body, ctx)
        if tools:
            out["tools"] = tools
    return _with_options([out], body, ctx)


def completion_request(body: dict[str, Any], ctx: MapContext) -> dict[str, Any] | Fanout:
    """``/v1/completions`` → ``/api/generate`` with the prompt sent raw; a list of prompts, one call each."""
    oa.refuse_unsupported(body, ctx, ("echo",), API)
    oa.refuse_best_of(body, ctx, API)
    prompts, _ = oa.completion_prompts(body, ctx)
    out = _common(body, ctx, oa.COMPLETION)
    _set_format(out, body, oa.response_schema(body.get("response_format"), "Ollama"))
    suffix = body.get("suffix")
    if suffix:
        if not isinstance(suffix, str):
            raise MappingError("'suffix' must be a string.", param="suffix")
        # Only the model's own template knows its fill-in-the-middle tokens, so a suffix turns raw off.
        out["suffix"] = suffix
    else:
        out["raw"] = True
    return _with_options([{**out, "prompt": p} for p in prompts], body, ctx)


def _common(body: dict[str, Any], ctx: MapContext, kind: str) -> dict[str, Any]:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise MappingError("'model' is required: name the Ollama model to run, e.g. llama3.2.", param="model")
    oa.refuse_unsupported(body, ctx, UNSUPPORTED, API)
    if oa.logprobs_asked(body, kind) is not None:  # completions' logprobs 0 asks for each token's own logprob too
        raise MappingError(f"'logprobs' cannot be honoured by target '{ctx.target.name}': the proxy does not read Ollama's "
                           "token probabilities yet. Send the request without it.", param="logprobs")
    out: dict[str, Any] = {"model": model, "stream": ctx.stream}
    think = _think(body)
    if think is not None:
        out["think"] = think
    keep_alive = body.get("keep_alive", ctx.target.options.get("keep_alive"))
    if keep_alive is not None:
        if isinstance(keep_alive, bool) or not isinstance(keep_alive, (str, int, float)):
            raise MappingError("'keep_alive' must be a duration such as \"5m\" or a number of seconds.", param="keep_alive")
        out["keep_alive"] = keep_alive
    return out


def _with_options(bodies: list[dict[str, Any]], body: dict[str, Any], ctx: MapContext) -> dict[str, Any] | Fanout:
    """Each body with its ``options``, ``n`` times over: Ollama has no ``n``, so ``n`` answers take ``n``
    calls, and a given seed counts up, or every call would give the same answer."""
    options = _options(body, ctx)

    def call(base: dict[str, Any], i: int) -> dict[str, Any]:
        opts = dict(options)
        if i and isinstance(opts.get("seed"), int):
            opts["seed"] += i
        return {**base, "options": opts}

    return oa.per_choice(bodies, oa.n_of(body), call)


def _options(body: dict[str, Any], ctx: MapContext) -> dict[str, Any]:
    """Ollama ``options``: the target's, then the client's own ``options``, then the OpenAI fields (which win)."""
    opts: dict[str, Any] = {}
    if ctx.target.options.get("num_ctx") is not None:
        opts["num_ctx"] = ctx.target.options["num_ctx"]
    native = body.get("options")
    if native is not None:
        if not isinstance(native, dict):
            raise MappingError("'options' must be an object of Ollama options.", param="options")
        opts.update(native)
    max_tokens = oa.max_tokens_of(body)
    if max_tokens is not None:
        opts["num_predict"] = max_tokens
    opts.update(oa.numbers(body, SAMPLING))
    opts.update(oa.integers(body, EXTRA_INTEGERS))
    seed = oa.integer(body, "seed")
    if seed is not None:
        opts["seed"] = seed
    if ctx.stop:
        opts["stop"] = list(ctx.stop)
    return opts


def _set_format(out: dict[str, Any], body: dict[str, Any], schema: dict[str, Any] | None) -> None:
    """Ollama's ``format``: "json" for any JSON object, else the schema."""
    if schema is None:
        return
    fmt = body.get("response_format")
    plain = isinstance(fmt, dict) and fmt.get("type") == "json_object" and schema == {"type": "object"}
    out["format"] = "json" if plain else schema


def _think(body: dict[str, Any]) -> bool | str | None:
    """Ollama's ``think`` from its own field (sent with extra_body) or from OpenAI's ``reasoning_effort``."""
    think = body.get("think")
    if think is not None:
        if isinstance(think, bool):
            return think
        if think in THINK_LEVELS:
            return str(think)
        raise MappingError("'think' must be true, false, \"low\", \"medium\" or \"high\".", param="think")
    effort = body.get("reasoning_effort")
    if effort is None:
        return None
    if effort not in REASONING_EFFORT:
        raise MappingError(f"'reasoning_effort' must be one of {', '.join(REASONING_EFFORT)}, not {effort!r}.", param="reasoning_effort")
    return REASONING_EFFORT[effort]


# ------------------------------------------------------------------------------------------ messages


def _messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    names: dict[str, str] = {}  # tool_call_id → function name, so a tool result can say which tool it answers
    return [_message(m, i, names) for i, m in enumerate(oa.messages_of(body))]


def _message(m: dict[str, Any], i: int, names: dict[str, str]) -> dict[str, Any]:
    role = ROLES.get(m["role"])
    if role is None:
        raise MappingError(f"messages[{i}] has role '{m['role']}'; Ollama takes system, user, assistant and tool messages.",
                           param=f"messages[{i}].role")
    text, images = _content(m.get("content"), i)
    out: dict[str, Any] = {"role": role, "content": text}
    if images:
        out["images"] = images
    if role == "assistant":
        calls = _calls_to_ollama(m.get("tool_calls"), i, names)
        if calls:
            out["tool_calls"] = calls
        if isinstance(m.get("reasoning_content"), str) and m["reasoning_content"]:
            out["thinking"] = m["reasoning_content"]
    elif role == "tool":
        name = names.get(str(m.get("tool_call_id")))
        if name:
            out["tool_name"] = name
    return out


def _content(content: Any, i: int) -> tuple[str, list[str]]:
    """A message's text and its images (base64, as Ollama takes them)."""
    if content is None:
        return "", []
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list):
        raise MappingError(f"messages[{i}].content must be a string or a list of parts.", param=f"messages[{i}].content")
    texts: list[str] = []
    images: list[str] = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "image_url":
            images.append(_image(part.get("image_url"), i))
        else:
            raise MappingError(f"messages[{i}] has a content part of type {kind!r}; Ollama takes text and image_url parts.",
                               param=f"messages[{i}].content")
    return "".join(texts), images


def _image(image: Any, i: int) -> str:
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str):
        raise MappingError(f"messages[{i}] has an image_url part without a url.", param=f"messages[{i}].content")
    if not url.startswith("data:"):
        # Ollama takes image bytes, not links; fetching arbitrary URLs on a client's behalf is not the proxy's to do.
        raise MappingError(f"messages[{i}] links an image by URL; Ollama takes the image itself, so send it as a data URI "
                           "(data:image/png;base64,...).", param=f"messages[{i}].content")
    header, sep, data = url.partition(",")
    if not sep or not header.endswith(";base64"):
        raise MappingError(f"messages[{i}] has an image data URI that is not base64 (data:image/png;base64,...).",
                           param=f"messages[{i}].content")
    try:
        base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise MappingError(f"messages[{i}] has an image whose base64 data is damaged.", param=f"messages[{i}].content") from None
    return data


def _calls_to_ollama(calls: Any, i: int, names: dict[str, str]) -> list[dict[str, Any]]:
    if not calls:
        return []
    if not isinstance(calls, list):
        raise MappingError(f"messages[{i}].tool_calls must be a list.", param=f"messages[{i}].tool_calls")
    out = []
    for j, call in enumerate(calls):
        where = f"messages[{i}].tool_calls[{j}]"
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise MappingError(f"{where} must be {{type: function, function: {{name, arguments}}}}.", param=where)
        args = fn.get("arguments") or "{}"
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except ValueError:
                raise MappingError(f"{where}.function.arguments is not valid JSON.", param=where) from None
        if not isinstance(args, dict):
            raise MappingError(f"{where}.function.arguments must be a JSON object; Ollama takes arguments as an object.", param=where)
        if isinstance(call.get("id"), str):
            names[call["id"]] = fn["name"]
        out.append({"function": {"name": fn["name"], "arguments": args}})
    return out


def _tools(body: dict[str, Any], ctx: MapContext) -> list[dict[str, Any]] | None:
    tools = body.get("tools")
    if tools is None:
        return None
    if not isinstance(tools, list) or not all(
            isinstance(t, dict) and t.get("type") == "function" and isinstance(t.get("function"), dict)
            and isinstance(t["function"].get("name"), str) for t in tools):
        raise MappingError("'tools' must be a list of {type: function, function: {name, description, parameters}} objects.",
                           param="tools")
    choice = body.get("tool_choice")
    if choice == "none":
        return None
    if choice not in (None, "auto"):
        raise MappingError(f"'tool_choice' demands a call, and target '{ctx.target.name}' cannot be made to call a tool: "
                           "Ollama's /api/chat takes 'tool_choice' \"auto\" or \"none\" only. Send one of those, or give the "
                           "target a prompter and its raw_prompt option (a JSON schema then holds the answer to a call).",
                           param="tool_choice")
    return tools


# -------------------------------------------------------------------------------- Ollama → OpenAI


def chat_answer(body: dict[str, Any], ctx: MapContext) -> dict[str, Any]:
    _check(body, ctx)
    text, thinking, calls = _pieces(body, ctx)
    calls = calls[:_calls_allowed(ctx)]
    finish = "tool_calls" if calls else FINISH.get(body.get("done_reason") or "", "stop")
    answer = oa.answer(ctx, oa.CHAT, [(text, finish)], _usage(body))
    message = answer["choices"][0]["message"]
    if thinking:
        message["reasoning_content"] = thinking
    if calls:
        message["tool_calls"] = [_call_to_openai(c, i) for i, c in enumerate(calls)]
        message["content"] = text or None
    return answer


def completion_answer(body: dict[str, Any], ctx: MapContext) -> dict[str, Any]:
    _check(body, ctx)
    text = body.get("response") or ""
    return oa.answer(ctx, oa.COMPLETION, [(text, FINISH.get(body.get("done_reason") or "", "stop"))], _usage(body))


def _check(body: Any, ctx: MapContext) -> None:
    if not isinstance(body, dict) or not ("message" in body or "response" in body):
        raise UpstreamError(f"The upstream of target '{ctx.target.name}' answered without 'message' or 'response': "
                            "is it an Ollama server?")


def _pieces(event: dict[str, Any], ctx: MapContext) -> tuple[str, str, list[dict[str, Any]]]:
    """Text, thinking and tool calls of one answer or stream line, from ``/api/chat`` or raw ``/api/generate``."""
    if ctx.state.get("raw"):
        return event.get("response") or "", event.get("thinking") or "", []
    message = event.get("message") or {}
    return message.get("content") or "", message.get("thinking") or "", message.get("tool_calls") or []


def _calls_allowed(ctx: MapContext) -> int | None:
    """How many of the calls a model made may reach the client: with ``parallel_tool_calls: false``, the first only.
    Ollama has no such switch, so a model may still call several tools at once; the client asked to handle one."""
    request = ctx.request if isinstance(ctx.request, dict) else {}
    return 1 if request.get("parallel_tool_calls") is False else None


def _call_to_openai(call: dict[str, Any], index: int, *, streamed: bool = False) -> dict[str, Any]:
    fn = call.get("function") or {}
    out: dict[str, Any] = {"id": call.get("id") or oa.new_id("call"), "type": "function",
                           "function": {"name": fn.get("name", ""), "arguments": json.dumps(fn.get("arguments") or {})}}
    if streamed:
        out["index"] = index
    return out


def _usage(body: dict[str, Any]) -> dict[str, int]:
    return oa.usage(int(body.get("prompt_eval_count") or 0), int(body.get("eval_count") or 0))


async def chat_stream(events: AsyncIterator[Any], ctx: MapContext) -> AsyncIterator[dict[str, Any]]:
    async for chunk in _stream(events, ctx, oa.CHAT):
        yield chunk


async def completion_stream(events: AsyncIterator[Any], ctx: MapContext) -> AsyncIterator[dict[str, Any]]:
    async for chunk in _stream(events, ctx, oa.COMPLETION):
        yield chunk


async def _stream(events: AsyncIterator[Any], ctx: MapContext, kind: str) -> AsyncIterator[dict[str, Any]]:
    """Ollama's NDJSON lines → OpenAI chunks; the line with ``done: true`` closes the answer."""
    chunks = oa.Chunks(ctx, kind)
    started = False
    calls = 0
    allowed = _calls_allowed(ctx)
    async for event in events:
        if not isinstance(event, dict):
            continue
        if "error" in event:
            raise UpstreamStatus(str(event["error"]), status=500, code="ollama_error")
        if not started:
            # Only now, with a first line in hand, is it sure the model is generating.
            yield chunks.role()
            started = True
        if kind == oa.CHAT:
            text, thinking, tool_calls = _pieces(event, ctx)
        else:
            text, thinking, tool_calls = event.get("response") or "", "", []
        if thinking:
            yield chunks.delta({"reasoning_content": thinking})
        if text:
            yield chunks.text(text)
        if allowed is not None:
            tool_calls = tool_calls[:max(allowed - calls, 0)]
        if tool_calls:
            yield chunks.delta({"tool_calls": [_call_to_openai(c, calls + j, streamed=True) for j, c in enumerate(tool_calls)]})
            calls += len(tool_calls)
        if event.get("done"):
            yield chunks.finish("tool_calls" if calls else FINISH.get(event.get("done_reason") or "", "stop"))
            use = chunks.usage(_usage(event))
            if use is not None:
                yield use
            return
    raise UpstreamError(f"The upstream of target '{ctx.target.name}' ended its stream before the line with \"done\": true.",
                        code="upstream_stream_broken")


def error(body: Any, ctx: MapContext) -> dict[str, Any]:
    """Ollama's ``{"error": "..."}`` (or a bare text) → OpenAI error body."""
    message = _error_text(body)
    if not message.strip():
        message = f"The upstream of target '{ctx.target.name}' answered {ctx.upstream_status} without a message."
    return {"error": {"message": message.strip(), "type": "upstream_error", "param": None, "code": None}}


def _error_text(body: Any) -> str:
    if isinstance(body, dict):
        return str(body.get("error") or "")
    return body if isinstance(body, str) else ""


# ------------------------------------------------------------------------------------------ models


def models_answer(body: Any, ctx: MapContext) -> dict[str, Any]:
    """``/api/tags`` → an OpenAI model list, owned by the namespace of each name (``library`` when none)."""
    models = body.get("models") if isinstance(body, dict) else None
    if not isinstance(models, list):
        raise UpstreamError(f"The upstream of target '{ctx.target.name}' answered /api/tags without 'models': is it an Ollama server?")
    data = []
    for m in models:
        if not isinstance(m, dict):
            continue
        name = str(m.get("name") or m.get("model") or "")
        owner = name.split("/")[-2] if "/" in name else "library"
        data.append({"id": name, "object": "model", "created": _epoch(m.get("modified_at")), "owned_by": owner})
    return {"object": "list", "data": data}


def _epoch(stamp: Any) -> int:
    """Seconds since the epoch of Ollama's RFC 3339 time; its nanoseconds are cut to what Python reads."""
    if not isinstance(stamp, str):
        return 0
    try:
        return int(datetime.fromisoformat(re.sub(r"(\.\d{6})\d+", r"\1", stamp.replace("Z", "+00:00"))).timestamp())
    except ValueError:
        return 0


# ------------------------------------------------------------------------------------- the declaration

BACKEND = Backend(
    name="ollama",
    doc="Ollama's /api/chat and /api/generate, NDJSON streams",
    routes={
        "/v1/chat/completions": RouteSpec("/api/chat", request=chat_request, answer=chat_answer, stream=chat_stream, error=error,
                                          stream_format="ndjson"),
        "/v1/completions": RouteSpec("/api/generate", request=completion_request, answer=completion_answer, stream=completion_stream,
                                     error=error, stream_format="ndjson"),
        "/v1/models": RouteSpec("/api/tags", method="GET", answer=models_answer),
        "/api/chat": RouteSpec(),
        "/api/generate": RouteSpec(),
        "/api/tags": RouteSpec.get(),
    },
    options={
        "raw_prompt": Option(boolean, False, "render chats with the target's prompter and send them to /api/generate raw"),
        "keep_alive": Option(optional_text, None, "how long Ollama keeps the model loaded, e.g. 5m"),
        "num_ctx": Option(maybe(integer(min=1)), None, "context window size sent in options"),
    },
)
