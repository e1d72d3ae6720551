"""The KoboldAI API (KoboldCpp, KoboldAI United, text-generation-webui's legacy API): OpenAI chat and
completions onto ``/api/v1/generate``, streamed from KoboldCpp's ``/api/extra/generate/stream``.

Chats are rendered by the target's prompter (its leading BOS dropped: the server adds one). Kobold's
``temperature`` must be above 0, so OpenAI's 0 (greedy) becomes ``top_k: 1`` with no temperature: only
the likeliest token is left to sample from. At most 10 ``stop_sequence``: the client's come first; any
left out is still honoured by cutting here. The KoboldAI API keeps a stop string in its text; OpenAI
does not, so answers are cut at the first one and streamed text that could start one is held back.
Kobold's own ``n`` (KoboldAI United, at most 5) has no streamed form and not every Kobold server
honours it, so ``n`` answers take ``n`` calls.

Finish reasons: the KoboldAI API reports none, so they are inferred (protocols §7.1): a stop string
found here → ``stop``; else the server's token count (KoboldCpp's ``completion_tokens``) at the limit →
``length``, below it → ``stop``; else KoboldCpp's own ``finish_reason`` (``stop`` is an end-of-sequence
token; its ``length`` also covers a stop sequence it trimmed itself); else streamed tokens reaching the
limit → ``length``; else ``stop``. Usage is given when the server counts tokens (KoboldCpp), else left out.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from typing import Any

from mooltiproxy import Fanout, MapContext, MappingError, UpstreamError, UpstreamStatus
from mooltiproxy import helpers as oa
from mooltiproxy.backends import Backend, Option, RouteSpec, integer, maybe

MAX_STOPS = 10
SEED_MAX = 2**64 - 1
# Kobold sampler fields a client may send (e.g. with extra_body) under Kobold's own names.
PASSTHROUGH = ("top_a", "tfs", "typical", "min_p", "rep_pen", "rep_pen_range", "rep_pen_slope", "sampler_order",
               "sampler_full_determinism")
# OpenAI fields that change what is generated and that the KoboldAI API has no place for (its generate schema has no
# token biases, no JSON schema to hold an answer to, no token probabilities): refused by name, never dropped.
# ``response_format`` other than text, ``logprobs`` and a ``tool_choice`` that demands a call are refused in
# ``_params``. The fields that change nothing generated — ``user``, ``metadata``, ``store``, ``service_tier`` — label,
# keep or bill an exchange, and are left out. ``parallel_tool_calls: false`` keeps the first call the model writes
# (translate/toolcalls.py).
UNSUPPORTED = ("logit_bias", "reasoning_effort", "prediction", "audio", "web_search_options", "functions", "function_call")
COMPLETION_UNSUPPORTED = ("suffix", "echo")
API = "the KoboldAI API"


# -------------------------------------------------------------------------------- OpenAI → Kobold


def chat_request(body: dict[str, Any], ctx: MapContext) -> dict[str, Any] | Fanout:
    """``/v1/chat/completions`` → ``/api/v1/generate`` with the prompt rendered by the target's prompter."""
    prompt, _ = oa.chat_prompt(body, ctx)
    return _generate([prompt], body, ctx, oa.CHAT)


def completion_request(body: dict[str, Any], ctx: MapContext) -> dict[str, Any] | Fanout:
    """``/v1/completions`` → ``/api/v1/generate`` with the prompt as given; a list of prompts, one call each."""
    oa.refuse_unsupported(body, ctx, COMPLETION_UNSUPPORTED, API)
    oa.refuse_best_of(body, ctx, API)
    prompts, _ = oa.completion_prompts(body, ctx)
    return _generate(prompts, body, ctx, oa.COMPLETION)


def _generate(prompts: list[str], body: dict[str, Any], ctx: MapContext, kind: str) -> dict[str, Any] | Fanout:
    return oa.prompt_calls(prompts, oa.n_of(body), _params(body, ctx, kind), seed_key="sampler_seed", seed_max=SEED_MAX)


def _params(body: dict[str, Any], ctx: MapContext, kind: str) -> dict[str, Any]:
    oa.refuse_unsupported(body, ctx, UNSUPPORTED, API)
    if oa.forced_call(body) is not None:
        raise MappingError(f"'tool_choice' demands a call, and target '{ctx.target.name}' (KoboldAI API) has no way to hold "
                           "generation to one: send \"auto\" and the model may call a tool, or use a TGI, llama.cpp or "
                           "Ollama target.", param="tool_choice")
    if oa.response_schema(body.get("response_format"), API) is not None:
        raise MappingError(f"'response_format' (a JSON answer) cannot be honoured by target '{ctx.target.name}': the KoboldAI "
                           "API has no way to hold generation to a JSON schema. Send the request without it, or use a TGI, "
                           "llama.cpp or Ollama target.", param="response_format")
    if oa.logprobs_asked(body, kind) is not None:  # completions' logprobs 0 asks for each token's own logprob too
        raise MappingError(f"'logprobs' cannot be honoured by target '{ctx.target.name}': the KoboldAI API gives no token "
                           "probabilities. Send the request without it.", param="logprobs")
    max_length = oa.max_tokens_of(body) or int(ctx.target.options.get("max_length") or 512)
    ctx.state["max_length"] = max_length
    params: dict[str, Any] = {"max_length": max_length}
    if ctx.target.options.get("max_context_length") is not None:
        params["max_context_length"] = ctx.target.options["max_context_length"]
    for key in PASSTHROUGH:
        if body.get(key) is not None:
            params[key] = body[key]
    if body.get("typical_p") is not None:
        params["typical"] = oa.number(body, "typical_p", 0, 1)
    top_k = oa.integer(body, "top_k", 0)
    if top_k is not None:
        params["top_k"] = top_k
    params.update(_sampling(body))
    rep_pen = _rep_pen(body, ctx)
    if rep_pen is not None:
        params["rep_pen"] = rep_pen
    seed = oa.integer(body, "seed")
    if seed is not None:
        if not 0 <= seed <= SEED_MAX:
            raise MappingError(f"'seed' must be between 0 and {SEED_MAX} for the KoboldAI API, not {seed}.", param="seed")
        params["sampler_seed"] = seed
    if ctx.stop:
        # The client's stops first: they must hold; the template's fill what room is left.
        params["stop_sequence"] = ctx.stop[:MAX_STOPS]
    return params


def _sampling(body: dict[str, Any]) -> dict[str, Any]:
    """temperature and top_p; greedy (OpenAI's 0 for either) is ``top_k: 1``, as Kobold refuses temperature 0."""
    temperature = oa.number(body, "temperature", 0, 2)
    top_p = oa.number(body, "top_p", 0, 1)
    if temperature == 0 or top_p == 0:
        return {"top_k": 1}
    out: dict[str, Any] = {}
    if temperature is not None:
        out["temperature"] = temperature
    if top_p is not None:
        out["top_p"] = top_p
    return out


def _rep_pen(body: dict[str, Any], ctx: MapContext) -> float | None:
    """``rep_pen`` (a factor, 1 = none) from ``repetition_penalty``, else from OpenAI's penalties:
    2**(p/2) maps the stronger of presence/frequency penalty in (0, 2] onto (1, 2]."""
    penalties = {key: oa.number(body, key, -2, 2) for key in ("presence_penalty", "frequency_penalty")}
    for key, value in penalties.items():
        if value is not None and value < 0:
            raise MappingError(f"'{key}' below 0 (rewarding repetition) cannot be honoured by target '{ctx.target.name}': the "
                               "KoboldAI API's rep_pen is at least 1. Use a penalty of 0 or more.", param=key)
    factor = oa.number(body, "repetition_penalty", 1, 10)
    if factor is not None:
        return factor
    strongest = max((v for v in penalties.values() if v), default=None)
    if strongest is None:
        return None
    return round(math.pow(2, strongest / 2), 4)


# -------------------------------------------------------------------------------- Kobold → OpenAI


def chat_answer(body: dict[str, Any], ctx: MapContext) -> dict[str, Any]:
    return _answer(body, ctx, oa.CHAT)


def completion_answer(body: dict[str, Any], ctx: MapContext) -> dict[str, Any]:
    return _answer(body, ctx, oa.COMPLETION)


def _answer(body: Any, ctx: MapContext, kind: str) -> dict[str, Any]:
    results = body.get("results") if isinstance(body, dict) else None
    if not isinstance(results, list) or not results or not all(isinstance(r, dict) and isinstance(r.get("text"), str) for r in results):
        raise UpstreamError(f"The upstream of target '{ctx.target.name}' answered without 'results': is it a KoboldAI API server?")
    choices = []
    for result in results:
        text, stopped = oa.cut_at_stop(result["text"], ctx.stop)
        choices.append((text, _finish(ctx, stopped=stopped, counted=result.get("completion_tokens"), reported=result.get("finish_reason"))))
    return oa.answer(ctx, kind, choices, _usage(results))


def _finish(ctx: MapContext, *, stopped: bool, counted: Any = None, reported: Any = None, streamed: int = 0) -> str:
    """The inferred finish reason (see the module's docstring for the order of the clues)."""
    limit = int(ctx.state.get("max_length") or 0)
    if stopped:
        return "stop"
    if isinstance(counted, int) and not isinstance(counted, bool):
        return "length" if limit and counted >= limit else "stop"
    if reported in ("stop", "length"):
        return str(reported)
    return "length" if limit and streamed >= limit else "stop"


def _usage(results: list[dict[str, Any]]) -> dict[str, int] | None:
    """Usage when the server counted tokens (KoboldCpp); the KoboldAI API itself does not."""
    prompt = results[0].get("prompt_tokens")
    completion = [r.get("completion_tokens") for r in results]
    if not isinstance(prompt, int) or not all(isinstance(c, int) for c in completion):
        return None
    return oa.usage(prompt, sum(c for c in completion if isinstance(c, int)))


async def chat_stream(events: AsyncIterator[Any], ctx: MapContext) -> AsyncIterator[dict[str, Any]]:
    async for chunk in _stream(events, ctx, oa.CHAT):
        yield chunk


async def completion_stream(events: AsyncIterator[Any], ctx: MapContext) -> AsyncIterator[dict[str, Any]]:
    async for chunk in _stream(events, ctx, oa.COMPLETION):
        yield chunk


async def _stream(events: AsyncIterator[Any], ctx: MapContext, kind: str) -> AsyncIterator[dict[str, Any]]:
    """KoboldCpp's ``{"token": ...}`` events → OpenAI chunks. Its stream has no last event of its own:
    it ends when the connection closes, so the answer is closed then (or at a stop string, sooner)."""
    chunks = oa.Chunks(ctx, kind)
    cutter = oa.StopCutter(ctx.stop)
    started = False
    tokens = 0
    reported = None
    async for event in events:
        if not isinstance(event, dict):
            continue
        if "detail" in event or event.get("finish_reason") == "error":
            raise _stream_error(event)
        if not started:
            # Only now, with a first event in hand, is it sure the server is generating.
            yield chunks.role()
            started = True
        piece = event.get("token")
        if isinstance(piece, str) and piece:
            tokens += 1
            text = cutter.feed(piece)
            if text:
                yield chunks.text(text)
        if "finish_reason" in event:
            reported = event["finish_reason"]  # the last event's counts: earlier ones may carry a stale value
        if cutter.stopped:
            break
    if not started:
        raise UpstreamError(f"The upstream of target '{ctx.target.name}' closed its stream without sending a token.",
                            code="upstream_stream_broken")
    tail = cutter.flush()
    if tail:
        yield chunks.text(tail)
    yield chunks.finish(_finish(ctx, stopped=cutter.stopped, reported=reported, streamed=tokens))


def _stream_error(event: dict[str, Any]) -> UpstreamStatus:
    if "detail" in event:
        message, kind = _detail(event["detail"])
    else:
        # KoboldCpp ends a failed generation with finish_reason "error" and no message of its own.
        message, kind = "KoboldCpp stopped the generation with an error; its console says why.", "generation_error"
    return UpstreamStatus(message or "The KoboldAI server reported an error during generation.", status=500, code=kind)


def _detail(detail: Any) -> tuple[str, str | None]:
    """Message and type of Kobold's ``detail``: ``{msg, type}``, or a validation error's ``{field: [messages]}``."""
    if isinstance(detail, dict) and "msg" in detail:
        kind = detail.get("type")
        return str(detail.get("msg") or ""), str(kind) if kind else None
    if isinstance(detail, dict):
        fields = [f"{field}: {' '.join(map(str, msgs)) if isinstance(msgs, list) else msgs}" for field, msgs in detail.items()]
        return "; ".join(fields), "validation_error"
    if isinstance(detail, list):  # FastAPI's [{"loc": [...], "msg": ...}]
        return "; ".join(str(d.get("msg", d)) if isinstance(d, dict) else str(d) for d in detail), "validation_error"
    return (detail if isinstance(detail, str) else ""), None


def error(body: Any, ctx: MapContext) -> dict[str, Any]:
    """Kobold's ``{"detail": {"msg", "type"}}`` or ``{"detail": {field: [messages]}}`` (or a bare text) → OpenAI error body."""
    message, kind = _detail(body.get("detail") if isinstance(body, dict) else body)
    if not message.strip():
        message = f"The upstream of target '{ctx.target.name}' answered {ctx.upstream_status} without a message."
    return {"error": {"message": message.strip(), "type": "upstream_error", "param": None, "code": kind}}


# ------------------------------------------------------------------------------------- the declaration

BACKEND = Backend(
    name="kobold",
    doc="KoboldCpp and text-generation-webui's legacy KoboldAI API: chats rendered by a prompter",
    routes={
        "/v1/chat/completions": RouteSpec("/api/v1/generate", stream_path="/api/extra/generate/stream", request=chat_request,
                                          answer=chat_answer, stream=chat_stream, error=error),
        "/v1/completions": RouteSpec("/api/v1/generate", stream_path="/api/extra/generate/stream", request=completion_request,
                                     answer=completion_answer, stream=completion_stream, error=error),
        "/api/v1/generate": RouteSpec(),
        "/api/v1/model": RouteSpec.get(),
    },
    options={
        "max_length": Option(integer(min=1), 512, "tokens to generate when the client sets no max_tokens"),
        "max_context_length": Option(maybe(integer(min=1)), None, "the model's context length, sent when set"),
    },
    needs_prompter=True,
)
