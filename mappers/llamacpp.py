"""llama.cpp's ``llama-server``: OpenAI chat and completions onto its native ``/completion``.

Chats are rendered by the target's prompter; the server adds a BOS to a string prompt itself, so the
template's leading BOS is dropped. Sampling fields keep llama.cpp's names (``n_predict``,
``repeat_penalty``, ``min_p``…); ``cache_prompt`` comes from the target option. llama.cpp leaves stop
words out of ``content`` and holds back a possible stop word while streaming, so nothing is cut here.
``stop_type`` gives the finish reason, ``tokens_evaluated`` / ``tokens_predicted`` the usage, ``n_probs``
the logprobs (``completion_probabilities``, on each stream event for its tokens). OpenAI's ``logit_bias``
map becomes the ``[[token id, bias], ...]`` pairs every llama-server version takes. Its SSE
stream ends with an event whose ``stop`` is true; an error inside it is ``data: {"error": {...}}``.
"""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator
from typing import Any

from mooltiproxy import Fanout, MapContext, MappingError, UpstreamError, UpstreamStatus
from mooltiproxy import helpers as oa
from mooltiproxy.backends import Backend, Option, RouteSpec, boolean

FINISH = {"eos": "stop", "word": "stop", "limit": "length"}
SEED_MAX = 2**32 - 1  # llama.cpp's seed is a uint32; -1 (its default) means a random one
# Sampling fields: OpenAI's, then those a client may send (e.g. with extra_body), as client name →
# (llama.cpp name, low, high). Ollama runs llama.cpp and takes the same names in its options.
SAMPLING = {"temperature": ("temperature", 0, 2), "top_p": ("top_p", 0, 1), "frequency_penalty": ("frequency_penalty", -2, 2),
            "presence_penalty": ("presence_penalty", -2, 2), "min_p": ("min_p", 0, 1), "typical_p": ("typical_p", 0, 1),
            "repetition_penalty": ("repeat_penalty", 0, 10), "repeat_penalty": ("repeat_penalty", 0, 10)}
EXTRA_INTEGERS = {"top_k": "top_k", "repeat_last_n": "repeat_last_n"}
# OpenAI fields that change what is generated and that /completion has no place for: refused by name, never dropped.
# (``reasoning_effort`` would have to reach the chat template, which the prompter renders without it.) The fields that
# change nothing generated — ``user``, ``metadata``, ``store``, ``service_tier`` — label, keep or bill an exchange, and
# are left out. ``parallel_tool_calls: false`` keeps the first call the model writes (translate/toolcalls.py).
# A suffix is llama-server's /infill, another API.
UNSUPPORTED = ("reasoning_effort", "prediction", "audio", "web_search_options", "functions", "function_call")
# Of a completions request: what /completion cannot do with the prompt as given.
COMPLETION_UNSUPPORTED = ("suffix", "echo")
API = "llama.cpp's /completion"


# ----------------------------------------------------------------------------- OpenAI → llama.cpp


def chat_request(body: dict[str, Any], ctx: MapContext) -> dict[str, Any] | Fanout:
    """``/v1/chat/completions`` → ``/completion`` with the prompt rendered by the target's prompter."""
    prompt, _ = oa.chat_prompt(body, ctx)
    return _completion([prompt], body, ctx, oa.CHAT)


def completion_request(body: dict[str, Any], ctx: MapContext) -> dict[str, Any] | Fanout:
    """``/v1/completions`` → ``/completion`` with the prompt as given; a list of prompts, one call each."""
    oa.refuse_unsupported(body, ctx, COMPLETION_UNSUPPORTED, API)
    oa.refuse_best_of(body, ctx, API)
    prompts, _ = oa.completion_prompts(body, ctx)
    return _completion(prompts, body, ctx, oa.COMPLETION)


def _completion(prompts: list[str], body: dict[str, Any], ctx: MapContext, kind: str) -> dict[str, Any] | Fanout:
    return oa.prompt_calls(prompts, oa.n_of(body), _params(body, ctx, kind), seed_key="seed", seed_max=SEED_MAX)


def _params(body: dict[str, Any], ctx: MapContext, kind: str) -> dict[str, Any]:
    oa.refuse_unsupported(body, ctx, UNSUPPORTED, API)
    params: dict[str, Any] = {"stream": ctx.stream, "cache_prompt": bool(ctx.target.options.get("cache_prompt", True))}
    top = oa.logprobs_asked(body, kind)
    if top is not None:
        # n_probs gives each token's own logprob beside its n best alternatives; asked for none, one is the least.
        params["n_probs"] = max(top, 1)
    max_tokens = oa.max_tokens_of(body)
    if max_tokens is not None:
        params["n_predict"] = max_tokens
    # temperature 0 is greedy in llama.cpp as in OpenAI, so every value passes as it is.
    params.update(oa.numbers(body, SAMPLING))
    params.update(oa.integers(body, EXTRA_INTEGERS))
    seed = oa.integer(body, "seed")
    if seed is not None:
        if not 0 <= seed <= SEED_MAX:
            raise MappingError(f"'seed' must be between 0 and {SEED_MAX} for llama.cpp, not {seed}.", param="seed")
        params["seed"] = seed
    bias = _logit_bias(body)
    if bias:
        params["logit_bias"] = bias
    if ctx.stop:
        params["stop"] = list(ctx.stop)
    schema = oa.answer_schema(body, ctx, "llama.cpp") if kind == oa.CHAT else oa.response_schema(body.get("response_format"), "llama.cpp")
    if schema is not None:
        params["json_schema"] = schema
    return params


def _logit_bias(body: dict[str, Any]) -> list[list[int | float]] | None:
    """OpenAI's ``logit_bias`` (token id → bias from -100 to 100, added to the token's logit) as llama.cpp's
    ``[[token id, bias], ...]``: the same ids, the same addition. The ids are the model's own tokenizer's."""
    bias = body.get("logit_bias")
    if bias is None:
        return None
    if not isinstance(bias, dict):
        raise MappingError("'logit_bias' must be an object of token ids and biases, such as {\"15043\": -100}.", param="logit_bias")
    pairs: list[list[int | float]] = []
    for token, value in bias.items():
        if not (token.isascii() and token.isdigit()):
            raise MappingError(f"'logit_bias' keys are token ids (whole numbers written as strings), not {token!r}.", param="logit_bias")
        if isinstance(value, bool) or not isinstance(value, int | float) or not -100 <= value <= 100:
            raise MappingError(f"'logit_bias' values must be numbers from -100 to 100; token {token} has {value!r}.", param="logit_bias")
        pairs.append([int(token), value])
    return pairs


# ----------------------------------------------------------------------------- llama.cpp → OpenAI


def chat_answer(body: dict[str, Any], ctx: MapContext) -> dict[str, Any]:
    return _answer(body, ctx, oa.CHAT)


def completion_answer(body: dict[str, Any], ctx: MapContext) -> dict[str, Any]:
    return _answer(body, ctx, oa.COMPLETION)


def _answer(body: Any, ctx: MapContext, kind: str) -> dict[str, Any]:
    if not isinstance(body, dict) or not isinstance(body.get("content"), str):
        raise UpstreamError(f"The upstream of target '{ctx.target.name}' answered without 'content': is it llama.cpp's llama-server?")
    return oa.answer(ctx, kind, [(body["content"], _finish(body))], _usage(body), [_tokens(body, ctx, kind)])


def _tokens(event: dict[str, Any], ctx: MapContext, kind: str) -> list[dict[str, Any]] | None:
    """The event's ``completion_probabilities`` in the common form, when the client asked for logprobs."""
    top = oa.logprobs_asked(ctx.request, kind)
    return None if top is None else oa.logprob_tokens(event.get("completion_probabilities"), top)


def _finish(event: dict[str, Any]) -> str:
    return FINISH.get(str(event.get("stop_type") or ""), "stop")


def _usage(event: dict[str, Any]) -> dict[str, int]:
    return oa.usage(_int(event.get("tokens_evaluated")), _int(event.get("tokens_predicted")))


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


async def chat_stream(events: AsyncIterator[Any], ctx: MapContext) -> AsyncIterator[dict[str, Any]]:
    async for chunk in _stream(events, ctx, oa.CHAT):
        yield chunk


async def completion_stream(events: AsyncIterator[Any], ctx: MapContext) -> AsyncIterator[dict[str, Any]]:
    async for chunk in _stream(events, ctx, oa.COMPLETION):
        yield chunk


async def _stream(events: AsyncIterator[Any], ctx: MapContext, kind: str) -> AsyncIterator[dict[str, Any]]:
    """llama.cpp's token events → OpenAI chunks; the event with ``stop: true`` carries the finish and the counts."""
    chunks = oa.Chunks(ctx, kind)
    started = False
    async for event in events:
        if not isinstance(event, dict):
            continue
        if "error" in event:
            raise _stream_error(event["error"])
        if not started:
            # Only now, with a first event in hand, is it sure the server is generating.
            yield chunks.role()
            started = True
        text = event.get("content")
        if isinstance(text, str) and text:
            yield chunks.text(text, tokens=_tokens(event, ctx, kind))
        if event.get("stop") is True:
            yield chunks.finish(_finish(event))
            use = chunks.usage(_usage(event))
            if use is not None:
                yield use
            return
    raise UpstreamError(f"The upstream of target '{ctx.target.name}' ended its stream before the event with \"stop\": true.",
                        code="upstream_stream_broken")


def _stream_error(err: Any) -> UpstreamStatus:
    message, kind, status = _error_fields(err)
    return UpstreamStatus(message or "llama.cpp reported an error during generation.", status=status or 500, code=kind)


def _error_fields(err: Any) -> tuple[str, str | None, int | None]:
    """Message, type and HTTP status of llama.cpp's ``{"code", "message", "type"}`` (or a bare text)."""
    if isinstance(err, dict):
        code = err.get("code")
        status = code if isinstance(code, int) and 400 <= code <= 599 else None
        kind = err.get("type")
        return str(err.get("message") or ""), str(kind) if kind else None, status
    return (err if isinstance(err, str) else ""), None, None


def error(body: Any, ctx: MapContext) -> dict[str, Any]:
    """llama.cpp's ``{"error": {"code", "message", "type"}}`` (or a bare text) → OpenAI error body."""
    message, kind, _ = _error_fields(body.get("error") if isinstance(body, dict) else body)
    if not message.strip():
        message = f"The upstream of target '{ctx.target.name}' answered {ctx.upstream_status} without a message."
    return {"error": {"message": message.strip(), "type": "upstream_error", "param": None, "code": kind}}


# ------------------------------------------------------------------------------------- the declaration

def count_tokens_request(body: Any, ctx: MapContext) -> dict[str, Any]:
    """Anthropic's ``/v1/messages/count_tokens`` → llama.cpp's ``/tokenize`` of the prompt the same Messages request would
    send, counted as /completion counts it (its BOS added where the model has one)."""
    # The Messages API's translation lives with it, installed as mooltiproxy.mappers.anthropic (looked up when used:
    # mappers/ is its own folder to the type checker).
    messages_prompt = importlib.import_module("mooltiproxy.mappers.anthropic").messages_prompt

    return {"content": messages_prompt(body, ctx), "add_special": True}


def count_tokens_answer(body: Any, ctx: MapContext) -> dict[str, Any]:
    """llama.cpp's ``{"tokens": [...]}`` → ``{"input_tokens": n}``."""
    tokens = body.get("tokens") if isinstance(body, dict) else None
    if not isinstance(tokens, list):
        raise UpstreamError(f"The upstream of target '{ctx.target.name}' answered /tokenize without its tokens.")
    return {"input_tokens": len(tokens)}


BACKEND = Backend(
    name="llamacpp",
    doc="llama.cpp's llama-server /completion: chats rendered by a prompter",
    routes={
        "/v1/chat/completions": RouteSpec("/completion", request=chat_request, answer=chat_answer, stream=chat_stream, error=error),
        "/v1/completions": RouteSpec("/completion", request=completion_request, answer=completion_answer, stream=completion_stream,
                                     error=error),
        "/completion": RouteSpec(),
        # The server's own tokenizer, for counting a prompt's tokens as the model will.
        "/tokenize": RouteSpec(),
        "/v1/messages/count_tokens": RouteSpec(path="/tokenize", request=count_tokens_request, answer=count_tokens_answer),
        "/detokenize": RouteSpec(),
        "/apply-template": RouteSpec(),
        "/props": RouteSpec.get(),
    },
    options={
        "cache_prompt": Option(boolean, True, "let llama-server reuse the KV cache of a shared prompt prefix"),
    },
    needs_prompter=True,
)
