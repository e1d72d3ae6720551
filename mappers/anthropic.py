"""The Anthropic Messages API both ways: OpenAI chat and completions onto ``/v1/messages``, and the
Messages API in front of any target (``POST /v1/messages`` on the proxy, translated to OpenAI chat).

Rules (protocols.md §3.6): system messages go to the top-level ``system``; consecutive messages of one
role are merged (the API requires alternation) and a conversation must open with a user turn, so one
is inserted when it does not; ``max_tokens`` is required, the target's ``max_tokens`` option fills it;
Anthropic's temperature tops out at 1, so higher OpenAI values are clamped; tool calls become
``tool_use`` blocks with parsed input, tool results ``tool_result`` blocks in a user turn.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any

import orjson

from mooltiproxy import MapContext, MappingError, UpstreamStatus
from mooltiproxy import helpers as oa
from mooltiproxy.backends import Backend, Dialect, Front, Option, RouteSpec, integer, optional_text
from mooltiproxy.dataset.reassembly import MessagesReassembler
from mooltiproxy.errors import ProxyError
from mooltiproxy.translate import sse

STOP_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls",
                "refusal": "content_filter", "pause_turn": "stop", "model_context_window_exceeded": "length"}
FINISH_TO_STOP = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "content_filter": "refusal",
                  "function_call": "tool_use"}
ERROR_STATUS = {"invalid_request_error": 400, "authentication_error": 401, "billing_error": 402, "permission_error": 403,
                "not_found_error": 404, "request_too_large": 413, "rate_limit_error": 429, "api_error": 500, "timeout_error": 504,
                "overloaded_error": 529}
STATUS_ERROR = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "not_found_error",
                413: "request_too_large", 429: "rate_limit_error", 529: "overloaded_error"}
# The user turn put first when a conversation opens with the assistant (the API requires a user turn first).
OPENING = "(The conversation begins.)"
# The Messages API's own request fields; any other field a client sends goes on to the target untouched.
MESSAGES_FIELDS = frozenset({"model", "messages", "max_tokens", "system", "stop_sequences", "temperature", "top_p", "top_k", "stream",
                             "tools", "tool_choice", "metadata", "thinking", "service_tier", "container", "output_config",
                             "inference_geo", "cache_control", "mcp_servers"})
# OpenAI fields that change what is generated and that the Messages API has no place for: refused by name, never
# dropped. ``response_format`` other than text, ``logprobs`` and ``n`` above 1 are refused where they are read. Of the
# fields that change nothing generated, ``user`` becomes ``metadata.user_id``; OpenAI's ``metadata``, ``store`` and
# ``service_tier`` label, keep or bill an exchange on OpenAI's side, and are left out.
UNSUPPORTED = ("presence_penalty", "frequency_penalty", "repetition_penalty", "logit_bias", "seed", "min_p", "typical_p",
               "reasoning_effort", "prediction", "audio", "web_search_options", "functions", "function_call")
COMPLETION_UNSUPPORTED = ("suffix", "echo", "best_of")
API = "the Anthropic Messages API"


# ------------------------------------------------------------------------------ OpenAI → Anthropic


def chat_request(body: dict[str, Any], ctx: MapContext) -> dict[str, Any]:
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for i, m in enumerate(oa.messages_of(body)):
        role = m["role"]
        if role in ("system", "developer"):
            system.append(oa_text(m.get("content"), i))
            continue
        if role == "user":
            blocks = _user_blocks(m.get("content"), i)
        elif role == "assistant":
            blocks = _assistant_blocks(m, i)
            role = "assistant"
        elif role == "tool":
            blocks = [{"type": "tool_result", "tool_use_id": str(m.get("tool_call_id") or ""), "content": oa_text(m.get("content"), i)}]
            role = "user"
        else:
            raise MappingError(f"messages[{i}] has the role '{role}', which the Anthropic API has no place for.", param=f"messages[{i}]")
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)  # the API requires alternating roles
        else:
            turns.append({"role": role, "content": blocks})
    if not turns or turns[0]["role"] != "user":
        turns.insert(0, {"role": "user", "content": [{"type": "text", "text": OPENING}]})
    out = _sampling(body, ctx, oa.CHAT)
    out["messages"] = turns
    if system:
        out["system"] = "\n\n".join(s for s in system if s)
    tools = body.get("tools")
    if tools:
        out["tools"] = [_tool(t, i) for i, t in enumerate(tools)]
        choice = _tool_choice(body.get("tool_choice"), body.get("parallel_tool_calls"))
        if choice is not None:
            out["tool_choice"] = choice
    return out


def completion_request(body: dict[str, Any], ctx: MapContext) -> dict[str, Any]:
    """A completions prompt as the one user turn: the Messages API has no raw text completion."""
    oa.refuse_unsupported(body, ctx, COMPLETION_UNSUPPORTED, API)
    prompts = oa.prompts_of(body)
    if len(prompts) != 1:
        raise MappingError(f"Target '{ctx.target.name}' takes one prompt per request (the Anthropic API answers one); send the "
                           "prompts one by one.", param="prompt")
    ctx.prompt = prompts[0]
    out = _sampling(body, ctx, oa.COMPLETION)
    out["messages"] = [{"role": "user", "content": prompts[0]}]
    return out


def _sampling(body: dict[str, Any], ctx: MapContext, kind: str) -> dict[str, Any]:
    oa.refuse_unsupported(body, ctx, UNSUPPORTED, API)
    if oa.n_of(body) > 1:
        raise MappingError(f"'n' above 1 cannot be honoured by target '{ctx.target.name}': the Anthropic API answers one choice "
                           "per request. Send n=1, or the request n times.", param="n")
    if oa.response_schema(body.get("response_format"), API) is not None:
        raise MappingError(f"'response_format' (a JSON answer) cannot be honoured by target '{ctx.target.name}': the proxy does "
                           "not translate it for the Anthropic API. Send the request without it, or ask for JSON in the "
                           "prompt.", param="response_format")
    if oa.logprobs_asked(body, kind) is not None:  # completions' logprobs 0 asks for each token's own logprob too
        raise MappingError(f"'logprobs' cannot be honoured by target '{ctx.target.name}': the Anthropic API gives no token "
                           "probabilities. Send the request without it.", param="logprobs")
    out: dict[str, Any] = {"model": body.get("model") or ctx.target.name,
                           "max_tokens": oa.max_tokens_of(body) or int(ctx.target.options.get("max_tokens", 4096))}
    temperature = oa.number(body, "temperature", 0, 2)
    if temperature is not None:
        out["temperature"] = min(temperature, 1.0)
    top_p = oa.number(body, "top_p", 0, 1)
    if top_p is not None and top_p < 1:
        out["top_p"] = top_p
    top_k = oa.integer(body, "top_k", 1)
    if top_k is not None:
        out["top_k"] = top_k
    stops = oa.stops_of(body)
    if stops:
        out["stop_sequences"] = stops
    if isinstance(body.get("user"), str):
        out["metadata"] = {"user_id": body["user"]}
    if body.get("stream"):
        out["stream"] = True
    return out


def oa_text(content: Any, index: int) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    raise MappingError(f"messages[{index}].content must be a string or a list of parts.", param=f"messages[{index}].content")


def _user_blocks(content: Any, index: int) -> list[dict[str, Any]]:
    if content is None or isinstance(content, str):
        return [{"type": "text", "text": content or ""}]
    if not isinstance(content, list):
        raise MappingError(f"messages[{index}].content must be a string or a list of parts.", param=f"messages[{index}].content")
    blocks = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            blocks.append({"type": "text", "text": str(part.get("text", ""))})
        elif kind == "image_url":
            blocks.append(_image((part.get("image_url") or {}).get("url", ""), index))
        else:
            raise MappingError(f"messages[{index}] has a content part of type {kind!r}, which cannot be sent to the Anthropic API.",
                               param=f"messages[{index}].content")
    return blocks


def _image(url: str, index: int) -> dict[str, Any]:
    if url.startswith("data:"):
        head, _, data = url.partition(",")
        media_type = head[5:].split(";")[0]
        if ";base64" not in head or not media_type.startswith("image/"):
            raise MappingError(f"messages[{index}] has an image data URI that is not base64 image data.", param=f"messages[{index}]")
        return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}
    return {"type": "image", "source": {"type": "url", "url": url}}


def _assistant_blocks(message: dict[str, Any], index: int) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    text = oa_text(message.get("content"), index)
    if text:
        blocks.append({"type": "text", "text": text})
    for call in message.get("tool_calls") or ():
        fn = call.get("function") or {}
        try:
            args = orjson.loads(fn.get("arguments") or "{}")
        except orjson.JSONDecodeError:
            raise MappingError(f"messages[{index}] has a tool call whose arguments are not JSON.", param=f"messages[{index}]") from None
        blocks.append({"type": "tool_use", "id": call.get("id") or f"toolu_{os.urandom(8).hex()}", "name": fn.get("name", ""),
                       "input": args})
    return blocks or [{"type": "text", "text": ""}]


def _tool(tool: Any, index: int) -> dict[str, Any]:
    fn = tool.get("function") if isinstance(tool, dict) else None
    if not isinstance(fn, dict) or not fn.get("name"):
        raise MappingError(f"tools[{index}] must be {{type: function, function: {{name, parameters}}}}.", param=f"tools[{index}]")
    out = {"name": fn["name"], "input_schema": fn.get("parameters") or {"type": "object", "properties": {}}}
    if fn.get("description"):
        out["description"] = fn["description"]
    return out


def _tool_choice(choice: Any, parallel: Any) -> dict[str, Any] | None:
    if choice is None and parallel is None:
        return None
    if isinstance(choice, dict):
        out: dict[str, Any] = {"type": "tool", "name": (choice.get("function") or {}).get("name", "")}
    else:
        out = {"type": {"auto": "auto", "required": "any", "none": "none", None: "auto"}.get(choice, "auto")}
    if parallel is False and out["type"] != "none":
        out["disable_parallel_tool_use"] = True
    return out


# ------------------------------------------------------------------------------ Anthropic → OpenAI


def chat_answer(body: dict[str, Any], ctx: MapContext) -> dict[str, Any]:
    message = message_of(body)
    finish = STOP_REASONS.get(body.get("stop_reason") or "", "stop")
    answer = oa.answer(ctx, oa.CHAT, [("", finish)], usage_of(body.get("usage")))
    answer["choices"][0]["message"] = message
    return answer


def completion_answer(body: dict[str, Any], ctx: MapContext) -> dict[str, Any]:
    text = message_of(body).get("content") or ""
    return oa.answer(ctx, oa.COMPLETION, [(text, STOP_REASONS.get(body.get("stop_reason") or "", "stop"))], usage_of(body.get("usage")))


def message_of(body: Any) -> dict[str, Any]:
    """An Anthropic ``Message``'s content blocks as one OpenAI assistant message."""
    texts, thinking, calls = [], [], []
    for block in body.get("content") or () if isinstance(body, dict) else ():
        kind = block.get("type")
        if kind == "text":
            texts.append(block.get("text", ""))
        elif kind == "thinking":
            thinking.append(block.get("thinking", ""))
        elif kind == "tool_use":
            calls.append({"id": block.get("id"), "type": "function",
                          "function": {"name": block.get("name", ""), "arguments": orjson.dumps(block.get("input") or {}).decode()}})
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts or not calls else None, "refusal": None}
    if thinking:
        message["reasoning_content"] = "".join(thinking)
    if calls:
        message["tool_calls"] = calls
    return message


def usage_of(use: Any) -> dict[str, int]:
    use = use if isinstance(use, dict) else {}
    prompt = sum(int(use.get(k) or 0) for k in ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens"))
    return oa.usage(prompt, int(use.get("output_tokens") or 0))


async def chat_stream(events: AsyncIterator[Any], ctx: MapContext) -> AsyncIterator[dict[str, Any]]:
    async for chunk in _stream(events, ctx, oa.CHAT):
        yield chunk


async def completion_stream(events: AsyncIterator[Any], ctx: MapContext) -> AsyncIterator[dict[str, Any]]:
    async for chunk in _stream(events, ctx, oa.COMPLETION):
        yield chunk


async def _stream(events: AsyncIterator[Any], ctx: MapContext, kind: str) -> AsyncIterator[dict[str, Any]]:
    """message_start … content_block_* … message_delta … message_stop → OpenAI chunks."""
    chunks = oa.Chunks(ctx, kind)
    blocks: dict[int, int] = {}  # Anthropic block index → OpenAI tool call index
    use: dict[str, Any] = {}
    finish = None
    async for event in events:
        kind_ = event.get("type") if isinstance(event, dict) else None
        if kind_ == "error":
            raise stream_error(event)
        if kind_ == "message_start":
            use.update((event.get("message") or {}).get("usage") or {})
            yield chunks.role()
        elif kind_ == "content_block_start":
            block = event.get("content_block") or {}
            if block.get("type") == "tool_use" and kind == oa.CHAT:
                blocks[event.get("index", 0)] = len(blocks)
                yield chunks.delta({"tool_calls": [{"index": blocks[event.get("index", 0)], "id": block.get("id"), "type": "function",
                                                    "function": {"name": block.get("name", ""), "arguments": ""}}]})
        elif kind_ == "content_block_delta":
            delta = event.get("delta") or {}
            if delta.get("type") == "text_delta" and delta.get("text"):
                yield chunks.text(delta["text"])
            elif delta.get("type") == "thinking_delta" and kind == oa.CHAT:
                yield chunks.delta({"reasoning_content": delta.get("thinking", "")})
            elif delta.get("type") == "input_json_delta" and event.get("index") in blocks:
                fragment = {"index": blocks[event["index"]], "function": {"arguments": delta.get("partial_json", "")}}
                yield chunks.delta({"tool_calls": [fragment]})
        elif kind_ == "message_delta":
            finish = STOP_REASONS.get((event.get("delta") or {}).get("stop_reason") or "", "stop")
            use.update(event.get("usage") or {})
        elif kind_ == "message_stop":
            yield chunks.finish(finish or "stop")
            final = chunks.usage(usage_of(use))
            if final is not None:
                yield final
            return
    raise UpstreamStatus(f"The upstream of target '{ctx.target.name}' ended its stream before message_stop.", status=502,
                         code="upstream_stream_broken")


def stream_error(event: dict[str, Any]) -> UpstreamStatus:
    err = event.get("error") or {}
    kind = str(err.get("type") or "api_error")
    return UpstreamStatus(str(err.get("message") or "The Anthropic API reported an error"), status=ERROR_STATUS.get(kind, 500), code=kind)


def error(body: Any, ctx: MapContext) -> dict[str, Any]:
    """Anthropic's ``{"type": "error", "error": {type, message}}`` → an OpenAI error body; the status is kept."""
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict):
        message, kind = str(err.get("message") or ""), str(err.get("type") or "api_error")
    else:
        message, kind = (body if isinstance(body, str) else ""), "api_error"
    return {"error": {"message": message or f"The upstream of target '{ctx.target.name}' answered {ctx.upstream_status}.",
                      "type": kind, "param": None, "code": kind}}


# ---------------------------------------------------------------------- the Messages API in front


# What each field of a Messages request must be, as the API itself checks, so a wrong type is a 400 that names it.
_NUMBER = (int, float)
FIELD_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "system": ((str, list), "a string or a list of text blocks"),
    "stop_sequences": ((list,), "a list of strings"),
    "temperature": (_NUMBER, "a number"),
    "top_p": (_NUMBER, "a number"),
    "top_k": ((int,), "a whole number"),
    "stream": ((bool,), "true or false"),
    "tools": ((list,), "a list of {name, description, input_schema}"),
    "tool_choice": ((dict,), "an object such as {\"type\": \"auto\"}"),
    "metadata": ((dict,), "an object"),
}


def _check_fields(body: dict[str, Any]) -> None:
    for name, (types, what) in FIELD_TYPES.items():
        value = body.get(name)
        if value is not None and (not isinstance(value, types) or (isinstance(value, bool) and bool not in types)):
            raise MappingError(f"'{name}' must be {what}.", param=name)
    if any(not isinstance(s, str) for s in body.get("stop_sequences") or ()):
        raise MappingError("'stop_sequences' must be a list of strings.", param="stop_sequences")
    for i, tool in enumerate(body.get("tools") or ()):
        if not isinstance(tool, dict) or not isinstance(tool.get("name"), str) or not isinstance(tool.get("input_schema", {}), dict):
            raise MappingError(f"tools[{i}] must be {{name, description, input_schema}} with a name and a JSON schema object.",
                               param=f"tools[{i}]")


def front_request(body: Any, ctx: MapContext) -> dict[str, Any]:
    """An Anthropic Messages request → an OpenAI chat request."""
    if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
        raise MappingError("A Messages request needs 'messages', a list of {role, content}.", param="messages")
    if not isinstance(body.get("max_tokens"), int) or isinstance(body.get("max_tokens"), bool):
        raise MappingError("A Messages request needs 'max_tokens', a whole number.", param="max_tokens")
    _check_fields(body)
    thinking = body.get("thinking")
    if isinstance(thinking, dict) and thinking.get("type") not in (None, "disabled"):
        # Only an Anthropic target can think this way (its /v1/messages is relayed as it is); here it would be dropped.
        raise MappingError(f"'thinking' (extended thinking) reaches Anthropic targets only; target '{ctx.target.name}' is not one. "
                           "Send the request without it, or to an Anthropic target.", param="thinking")
    messages: list[dict[str, Any]] = []
    system = body.get("system")
    if system:
        messages.append({"role": "system", "content": system if isinstance(system, str) else _blocks_text(system)})
    for i, m in enumerate(body["messages"]):
        if not isinstance(m, dict) or m.get("role") not in ("user", "assistant"):
            raise MappingError(f"messages[{i}] must have the role user or assistant.", param=f"messages[{i}]")
        messages.extend(_openai_messages(m, i))
    out: dict[str, Any] = {"model": body.get("model"), "messages": messages, "max_tokens": body["max_tokens"]}
    ctx.state["anthropic_stops"] = list(body.get("stop_sequences") or ())
    for src, dst in (("temperature", "temperature"), ("top_p", "top_p"), ("top_k", "top_k"), ("stop_sequences", "stop")):
        if body.get(src) is not None:
            out[dst] = body[src]
    if body.get("tools"):
        out["tools"] = [{"type": "function", "function": {"name": t["name"], "description": t.get("description", ""),
                                                          "parameters": t.get("input_schema") or {"type": "object"}}}
                        for t in body["tools"]]
        choice = body.get("tool_choice") or {}
        kind = choice.get("type")
        if kind == "tool":
            out["tool_choice"] = {"type": "function", "function": {"name": choice.get("name")}}
        elif kind in ("any", "none", "auto"):
            out["tool_choice"] = {"any": "required", "none": "none", "auto": "auto"}[kind]
        if choice.get("disable_parallel_tool_use"):
            out["parallel_tool_calls"] = False
    if body.get("stream"):
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}  # Anthropic's stream ends with the token counts
    # Fields the Messages API does not know (extra sampling settings such as min_p) go on untouched.
    out.update((k, v) for k, v in body.items() if k not in MESSAGES_FIELDS)
    ctx.state["anthropic_model"] = body.get("model")
    return out


def _blocks_text(blocks: Any) -> str:
    if not isinstance(blocks, list):
        return ""
    return "".join(b["text"] for b in blocks if isinstance(b, dict) and b.get("type") == "text" and isinstance(b.get("text"), str))


def _openai_messages(message: dict[str, Any], index: int) -> list[dict[str, Any]]:
    content = message.get("content")
    if isinstance(content, str):
        return [{"role": message["role"], "content": content}]
    if not isinstance(content, list):
        raise MappingError(f"messages[{index}].content must be a string or a list of blocks.", param=f"messages[{index}].content")
    out: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    for block in content:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind in ("text", "image", "tool_use", "tool_result"):
            _check_block(block, kind, index)
        if kind == "text":
            parts.append({"type": "text", "text": block.get("text", "")})
        elif kind == "image":
            source = block.get("source") or {}
            url = source.get("url") if source.get("type") == "url" else f"data:{source.get('media_type')};base64,{source.get('data', '')}"
            parts.append({"type": "image_url", "image_url": {"url": url}})
        elif kind == "tool_use":
            calls.append({"id": block.get("id"), "type": "function",
                          "function": {"name": block.get("name", ""), "arguments": orjson.dumps(block.get("input") or {}).decode()}})
        elif kind == "tool_result":
            result = block.get("content")
            out.append({"role": "tool", "tool_call_id": block.get("tool_use_id"),
                        "content": result if isinstance(result, str) else _blocks_text(result)})
        elif kind in ("thinking", "redacted_thinking"):
            continue  # the model's earlier reasoning is not sent back to OpenAI-shaped backends
        else:
            raise MappingError(f"messages[{index}] has a block of type {kind!r} that cannot be translated.", param=f"messages[{index}]")
    if message["role"] == "assistant":
        text = "".join(p["text"] for p in parts if p["type"] == "text")
        reply: dict[str, Any] = {"role": "assistant", "content": text or None}
        if calls:
            reply["tool_calls"] = calls
        return [reply]
    if parts:
        simple = all(p["type"] == "text" for p in parts)
        out.append({"role": "user", "content": "".join(p["text"] for p in parts) if simple else parts})
    return out


_BLOCK_FIELDS: dict[str, tuple[str, tuple[type, ...], str]] = {
    "text": ("text", (str,), "a string"),
    "image": ("source", (dict,), "an object {type: base64, media_type, data} or {type: url, url}"),
    "tool_use": ("input", (dict,), "an object"),
    "tool_result": ("content", (str, list), "a string or a list of blocks"),
}


def _check_block(block: dict[str, Any], kind: str, index: int) -> None:
    field, types, what = _BLOCK_FIELDS[kind]
    value = block.get(field)
    if value is not None and not isinstance(value, types):
        raise MappingError(f"messages[{index}] has a {kind} block whose '{field}' is not {what}.", param=f"messages[{index}].content")
    if kind == "tool_use" and not isinstance(block.get("name", ""), str):
        raise MappingError(f"messages[{index}] has a tool_use block whose 'name' is not a string.", param=f"messages[{index}].content")


def front_answer(body: dict[str, Any], ctx: MapContext) -> dict[str, Any]:
    """An OpenAI chat answer → an Anthropic ``Message``."""
    choice = (body.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    if message.get("reasoning_content"):
        content.append({"type": "thinking", "thinking": message["reasoning_content"], "signature": ""})
    if message.get("content"):
        content.append({"type": "text", "text": oa_text(message["content"], 0)})
    for call in message.get("tool_calls") or ():
        content.append(_tool_use(call))
    use = body.get("usage") or {}
    return {
        "id": "msg_" + os.urandom(12).hex(), "type": "message", "role": "assistant",
        "model": ctx.state.get("anthropic_model") or body.get("model"),
        "content": content or [{"type": "text", "text": ""}],
        **_stop(choice.get("finish_reason"), choice.get("stop_reason"), ctx),
        "usage": {"input_tokens": use.get("prompt_tokens", 0), "output_tokens": use.get("completion_tokens", 0)},
    }


def _stop(finish: Any, matched: Any, ctx: MapContext) -> dict[str, Any]:
    """``stop_reason`` and ``stop_sequence``: a choice that ended at one of the request's stop sequences says which (vLLM
    and the proxy's own translations name it in ``stop_reason``; a server that does not leaves it at end_turn)."""
    if finish == "stop" and isinstance(matched, str) and matched in ctx.state.get("anthropic_stops", ()):
        return {"stop_reason": "stop_sequence", "stop_sequence": matched}
    return {"stop_reason": FINISH_TO_STOP.get(finish or "", "end_turn"), "stop_sequence": None}


def messages_prompt(body: Any, ctx: MapContext) -> str:
    """The prompt a prompter target makes of a Messages request: this front's translation to a chat, then the target's
    prompter (``/v1/messages/count_tokens`` on a TGI or llama.cpp target tokenizes it)."""
    chat = front_request({**body, "max_tokens": 1} if isinstance(body, dict) and "max_tokens" not in body else body, ctx)
    prompt, _ = oa.chat_prompt(chat, ctx)
    return prompt


def _tool_use(call: dict[str, Any]) -> dict[str, Any]:
    fn = call.get("function") or {}
    try:
        args = orjson.loads(fn.get("arguments") or "{}")
    except orjson.JSONDecodeError:
        args = {"arguments": fn.get("arguments")}
    return {"type": "tool_use", "id": call.get("id") or "toolu_" + os.urandom(8).hex(), "name": fn.get("name", ""), "input": args}


async def front_stream(events: AsyncIterator[dict[str, Any]], ctx: MapContext) -> AsyncIterator[dict[str, Any]]:
    """OpenAI chunks → the Messages event stream, block by block."""
    started = False
    block: str | None = None  # the kind of the content block now open
    index = -1
    tools: dict[int, int] = {}  # OpenAI tool call index → block index
    finish = matched = None
    use: dict[str, Any] = {}
    async for chunk in events:
        if not started:
            started = True
            yield {"type": "message_start", "message": {
                "id": "msg_" + os.urandom(12).hex(), "type": "message", "role": "assistant", "content": [],
                "model": ctx.state.get("anthropic_model") or chunk.get("model"), "stop_reason": None, "stop_sequence": None,
                "usage": {"input_tokens": 0, "output_tokens": 0}}}
        if isinstance(chunk.get("usage"), dict):
            use = chunk["usage"]
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            if choice.get("finish_reason"):
                finish, matched = choice["finish_reason"], choice.get("stop_reason")
            for kind, key, new in (("thinking", "reasoning_content", {"type": "thinking", "thinking": "", "signature": ""}),
                                   ("text", "content", {"type": "text", "text": ""})):
                piece = delta.get(key)
                if piece:
                    if block != kind:
                        if block is not None:
                            yield {"type": "content_block_stop", "index": index}
                        index += 1
                        block = kind
                        yield {"type": "content_block_start", "index": index, "content_block": new}
                    out = {"type": "thinking_delta", "thinking": piece} if kind == "thinking" else {"type": "text_delta", "text": piece}
                    yield {"type": "content_block_delta", "index": index, "delta": out}
            for call in delta.get("tool_calls") or ():
                i = call.get("index", 0)
                if i not in tools:
                    if block is not None:
                        yield {"type": "content_block_stop", "index": index}
                    index += 1
                    block = "tool_use"
                    tools[i] = index
                    yield {"type": "content_block_start", "index": index, "content_block": {
                        "type": "tool_use", "id": call.get("id") or "toolu_" + os.urandom(8).hex(),
                        "name": (call.get("function") or {}).get("name", ""), "input": {}}}
                args = (call.get("function") or {}).get("arguments")
                if args:
                    yield {"type": "content_block_delta", "index": tools[i], "delta": {"type": "input_json_delta", "partial_json": args}}
    if not started:
        return
    if block is not None:
        yield {"type": "content_block_stop", "index": index}
    yield {"type": "message_delta", "delta": _stop(finish, matched, ctx),
           "usage": {"input_tokens": use.get("prompt_tokens", 0), "output_tokens": use.get("completion_tokens", 0)}}
    yield {"type": "message_stop"}


def front_error(body: Any, ctx: MapContext) -> dict[str, Any]:
    """An OpenAI error body → Anthropic's error shape, typed by the status."""
    err = body.get("error") if isinstance(body, dict) else None
    message = str(err.get("message") if isinstance(err, dict) else (err or body))
    kind = STATUS_ERROR.get(ctx.upstream_status, "api_error" if ctx.upstream_status >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": kind, "message": message}}


# ------------------------------------------------------------- for the recorder (relayed /v1/messages)


def to_openai_request(body: Any) -> dict[str, Any]:
    """A Messages request in the OpenAI shape the dataset records."""
    messages: list[dict[str, Any]] = []
    system = body.get("system") if isinstance(body, dict) else None
    if system:
        messages.append({"role": "system", "content": system if isinstance(system, str) else _blocks_text(system)})
    for i, m in enumerate(body.get("messages") or () if isinstance(body, dict) else ()):
        if isinstance(m, dict) and m.get("role") in ("user", "assistant"):
            messages.extend(_openai_messages(m, i))
    out = {k: body[k] for k in ("model", "temperature", "top_p", "top_k", "max_tokens", "stream") if k in body}
    if body.get("stop_sequences"):
        out["stop"] = body["stop_sequences"]
    if body.get("tools"):
        out["tools"] = [{"type": "function", "function": {"name": t.get("name"), "parameters": t.get("input_schema")}}
                        for t in body["tools"] if isinstance(t, dict)]
    return {**out, "messages": messages}


def to_openai_answer(body: Any) -> dict[str, Any]:
    """A Messages answer in the OpenAI shape the dataset records."""
    body = body if isinstance(body, dict) else {}
    return {"model": body.get("model"), "usage": usage_of(body.get("usage")),
            "choices": [{"index": 0, "message": message_of(body), "finish_reason": STOP_REASONS.get(body.get("stop_reason") or "")}]}


# ------------------------------------------------------------------------------------- the declaration


# The Messages API's error types, by HTTP status (its errors page); the SDK raises its exception by the status.
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "not_found_error",
               405: "invalid_request_error", 408: "timeout_error", 413: "request_too_large", 429: "rate_limit_error",
               529: "overloaded_error"}


def _error_body(exc: ProxyError, full: bool) -> dict[str, Any]:
    """The proxy's own error as the Messages API writes one."""
    message = exc.full_message() if full else exc.message
    return {"type": "error", "error": {"type": ERROR_TYPES.get(exc.status, "api_error"), "message": message}}


BACKEND = Backend(
    name="anthropic",
    doc="the Anthropic Messages API (/v1/messages), chats and tools translated both ways",
    routes={
        "/v1/chat/completions": RouteSpec("/v1/messages", request=chat_request, answer=chat_answer, stream=chat_stream, error=error),
        "/v1/completions": RouteSpec("/v1/messages", request=completion_request, answer=completion_answer, stream=completion_stream,
                                     error=error),
        "/v1/messages": RouteSpec(),
        "/v1/messages/count_tokens": RouteSpec(),
        "/v1/models": RouteSpec.get(),
    },
    options={
        "max_tokens": Option(integer(min=1), 4096, "max_tokens sent when the client gives none (Anthropic requires it)"),
        "anthropic_version": Option(optional_text, "2023-06-01", "the anthropic-version header sent upstream"),
    },
    auth="x-api-key",
    headers={"anthropic-version": "anthropic_version"},
    fronts=(Front(paths=("/v1/messages",), base="/v1/chat/completions", request=front_request, answer=front_answer,
                  stream=front_stream, error=front_error, frame=sse.frame_typed, done=b"", error_body=_error_body),),
    # Messages relayed to an Anthropic target (or a dynamic host's .../messages) are recorded in the OpenAI shape.
    dialects=(Dialect(path="/v1/messages", suffix="/messages", request=to_openai_request, answer=to_openai_answer,
                      reassembler=MessagesReassembler),),
)
