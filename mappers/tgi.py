"""Hugging Face Text Generation Inference: OpenAI chat and completions onto ``/generate`` and
``/generate_stream``, and TGI's own API in front of any OpenAI-compatible target.

Parameter rules follow TGI's validation (router/src/validation.rs): ``temperature`` must be > 0, so 0
means greedy (``do_sample: false``); ``top_p`` must lie strictly inside (0, 1); at most
``max_stop_sequences`` stop strings. TGI keeps a plain stop string at the end of its text; OpenAI
does not, so answers are cut at the first stop string, and streamed text that could be the start of
one is held back until the next token decides it.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import AsyncIterator
from typing import Any

from mooltiproxy import Fanout, MapContext, MappingError, UpstreamError, UpstreamStatus
from mooltiproxy import helpers as oa
from mooltiproxy.backends import Backend, Dialect, Front, Option, RouteSpec, integer
from mooltiproxy.dataset.reassembly import GenerateReassembler
from mooltiproxy.errors import ProxyError
from mooltiproxy.translate import sse

FINISH = {"eos_token": "stop", "stop_sequence": "stop", "length": "length"}
# HTTP status TGI gives each error type (server.rs, From<InferError>); used for errors that arrive
# inside a 200 stream, so the client sees the status TGI would have sent without streaming.
ERROR_STATUS = {
    "validation": 422, "generation": 424, "overloaded": 429, "incomplete_generation": 500,
    "incomplete_generation_stream": 500, "template_error": 422, "tool_error": 422, "healthcheck": 503,
}
# Fields a client may send (e.g. with extra_body) that are TGI parameters of the same name.
PASSTHROUGH = ("top_k", "typical_p", "repetition_penalty", "truncate", "watermark", "top_n_tokens", "adapter_id", "grammar")


# ----------------------------------------------------------------------------------- OpenAI → TGI


def chat_request(body: dict[str, Any], ctx: MapContext) -> dict[str, Any] | Fanout:
    """``/v1/chat/completions`` → ``/generate``: the messages rendered by the target's prompter (its
    leading BOS dropped: ``/generate`` tokenizes with special tokens and adds its own)."""
    prompt, _ = oa.chat_prompt(body, ctx)
    return _generate([prompt], body, ctx, oa.CHAT)


def completion_request(body: dict[str, Any], ctx: MapContext) -> dict[str, Any] | Fanout:
    """``/v1/completions`` → ``/generate`` with the prompt as given; a list of prompts, one call each."""
    oa.refuse_unsupported(body, ctx, COMPLETION_UNSUPPORTED, API)
    oa.refuse_best_of(body, ctx, API)  # TGI's own best_of ranks, but only for one answer; n of them are n calls
    prompts, _ = oa.completion_prompts(body, ctx)
    return _generate(prompts, body, ctx, oa.COMPLETION)


# OpenAI fields that change what is generated and that /generate has no place for: refused by name, never dropped.
UNSUPPORTED = ("logit_bias", "prediction", "audio", "reasoning_effort", "web_search_options", "min_p", "functions", "function_call")
# Of a completions request: what /generate cannot do with the prompt as given.
COMPLETION_UNSUPPORTED = ("suffix", "echo")
API = "TGI's /generate"


def _generate(prompts: list[str], body: dict[str, Any], ctx: MapContext, kind: str) -> dict[str, Any] | Fanout:
    oa.refuse_unsupported(body, ctx, UNSUPPORTED, API)
    params: dict[str, Any] = {"details": True}  # details: the finish reason, the token counts, each token's logprob
    top = oa.logprobs_asked(body, kind)
    if top:  # the alternatives of each step, for top_logprobs
        params["top_n_tokens"] = top
    max_new = oa.max_tokens_of(body)
    if max_new is not None:
        params["max_new_tokens"] = max_new
    temperature = oa.number(body, "temperature", 0, 2)
    top_p = oa.number(body, "top_p", 0, 1)
    if temperature == 0 or top_p == 0:
        params["do_sample"] = False
    else:
        # OpenAI samples unless told otherwise (temperature defaults to 1); TGI is greedy unless told.
        params["do_sample"] = True
        if temperature is not None:
            params["temperature"] = temperature
        if top_p is not None and top_p < 1:
            params["top_p"] = top_p
    frequency = oa.number(body, "frequency_penalty", -2, 2)
    if frequency:
        params["frequency_penalty"] = frequency
    presence = oa.number(body, "presence_penalty", -2, 2)
    if presence:
        # TGI has no presence penalty; its repetition_penalty is a factor > 0 with 1 meaning none.
        # 2**(p/2) maps OpenAI's [-2, 2] onto [0.5, 2] with 0 → 1 (no penalty).
        params["repetition_penalty"] = round(math.pow(2, presence / 2), 4)
    seed = oa.integer(body, "seed")
    if seed is not None:
        if seed < 0:
            raise MappingError("'seed' must be 0 or more for TGI.", param="seed")
        params["seed"] = seed
    for key in PASSTHROUGH:
        if body.get(key) is not None:
            params[key] = body[key]
    schema = oa.answer_schema(body, ctx, "TGI") if kind == oa.CHAT else oa.response_schema(body.get("response_format"), "TGI")
    if schema is not None:
        params["grammar"] = {"type": "json", "value": schema}

    stops = ctx.stop
    limit = int(ctx.target.options.get("max_stop_sequences", 4))
    if stops:
        # The client's stops first: they must hold; the template's fill what room is left. Any stop
        # left out is still honoured by cutting the text here.
        params["stop"] = stops[:limit]

    n = oa.n_of(body)
    ctx.state["n"] = n
    if n > 1 and len(prompts) == 1 and not ctx.stream and params["do_sample"] and seed is None \
            and n <= int(ctx.target.options.get("max_best_of", 2)):
        params["best_of"] = n
        return {"inputs": prompts[0], "parameters": params}

    def call(prompt: str, i: int) -> dict[str, Any]:
        p = dict(params)
        if i and seed is not None:
            p["seed"] = seed + i  # the same seed n times would give the same answer n times
        return {"inputs": prompt, "parameters": p}

    return oa.per_choice(prompts, n, call)


# ----------------------------------------------------------------------------------- TGI → OpenAI


def chat_answer(body: dict[str, Any], ctx: MapContext) -> dict[str, Any]:
    return _answer(body, ctx, oa.CHAT)


def completion_answer(body: dict[str, Any], ctx: MapContext) -> dict[str, Any]:
    return _answer(body, ctx, oa.COMPLETION)


def _answer(body: dict[str, Any], ctx: MapContext, kind: str) -> dict[str, Any]:
    if isinstance(body, list):  # the compat route "/" answers with a list
        body = body[0] if body else {}
    if not isinstance(body, dict) or not isinstance(body.get("generated_text"), str):
        raise UpstreamError(f"The upstream of target '{ctx.target.name}' answered without 'generated_text': is it a TGI server?")
    stops = ctx.stop
    details = body.get("details") or {}
    sequences = [(body["generated_text"], details.get("finish_reason"), details.get("generated_tokens", 0))]
    for extra in details.get("best_of_sequences") or []:
        sequences.append((extra.get("generated_text", ""), extra.get("finish_reason"), extra.get("generated_tokens", 0)))
    choices: list[tuple[str, str, str | None]] = []
    for text, reason, _ in sequences:
        at, matched = oa.first_stop(text, stops)
        if at != -1:
            choices.append((text[:at], "stop", matched))
        else:
            # TGI keeps a stop string it matched at the end of its text (the prompter's are cut above; this says which)
            choices.append((text, FINISH.get(reason or "", "stop"), None))
    prompt_tokens = _int(ctx.upstream_headers.get("x-prompt-tokens"))
    top = oa.logprobs_asked(ctx.request, kind)
    logprobs = None
    if top is not None:  # each sequence's tokens, as far as its text was kept (a stop string cuts both)
        logprobs = [_logprobs(details.get("tokens"), details.get("top_tokens"), top, choices[0][0])]
        logprobs += [_logprobs(extra.get("tokens"), extra.get("top_tokens"), top, choice[0])
                     for extra, choice in zip(details.get("best_of_sequences") or [], choices[1:], strict=False)]
    return oa.answer(ctx, kind, choices, oa.usage(prompt_tokens, sum(s[2] or 0 for s in sequences)), logprobs)


def _logprobs(tokens: Any, top_tokens: Any, top: int, text: str) -> list[dict[str, Any]]:
    """TGI's tokens (``{id, text, logprob, special}``) and the alternatives of each step → OpenAI's token form, special
    tokens left out (their text is no text), up to the length of ``text``."""
    entries, kept = [], 0
    alternatives = top_tokens if isinstance(top_tokens, list) else []
    for i, token in enumerate(tokens if isinstance(tokens, list) else []):
        if not isinstance(token, dict) or token.get("special") or kept >= len(text):
            continue
        options = alternatives[i] if i < len(alternatives) and isinstance(alternatives[i], list) else []
        entries.append({"token": token.get("text"), "logprob": token.get("logprob"),
                        "top_logprobs": [{"token": o.get("text"), "logprob": o.get("logprob")} for o in options if isinstance(o, dict)]})
        kept += len(str(token.get("text") or ""))
    return oa.logprob_tokens(entries, top)


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


async def chat_stream(events: AsyncIterator[Any], ctx: MapContext) -> AsyncIterator[dict[str, Any]]:
    async for chunk in _stream(events, ctx, oa.CHAT):
        yield chunk


async def completion_stream(events: AsyncIterator[Any], ctx: MapContext) -> AsyncIterator[dict[str, Any]]:
    async for chunk in _stream(events, ctx, oa.COMPLETION):
        yield chunk


async def _stream(events: AsyncIterator[Any], ctx: MapContext, kind: str) -> AsyncIterator[dict[str, Any]]:
    """TGI token events → OpenAI chunks: role first, text as it is decided, then finish and usage."""
    chunks = oa.Chunks(ctx, kind)
    cutter = oa.StopCutter(ctx.stop)
    top = oa.logprobs_asked(ctx.request, kind)
    held: list[dict[str, Any]] = []  # tokens whose text the stop cutter holds back: sent with it
    started = False
    async for event in events:
        if not isinstance(event, dict):
            continue
        if "error" in event:
            raise _stream_error(event, ctx)
        if not started:
            # Only now, with a first token in hand, is it sure the upstream is generating.
            yield chunks.role()
            started = True
        token = event.get("token") or {}
        if not token.get("special"):
            if top is not None:
                held += _logprobs([token], [event.get("top_tokens")], top, token.get("text") or " ")
            text = cutter.feed(token.get("text") or "")
            if text:
                yield chunks.text(text, tokens=held if top is not None else None)
                held = []
        if cutter.stopped or event.get("generated_text") is not None:
            details = event.get("details") or {}
            tail = cutter.flush()
            if tail:
                yield chunks.text(tail, tokens=held if top is not None else None)
            yield chunks.finish("stop" if cutter.stopped else FINISH.get(details.get("finish_reason") or "", "stop"), stop=cutter.matched)
            use = chunks.usage(oa.usage(_int(details.get("input_length")), _int(details.get("generated_tokens") or event.get("index"))))
            if use is not None:
                yield use
            return
    raise UpstreamError(f"The upstream of target '{ctx.target.name}' ended its stream before the last token.",
                        code="upstream_stream_broken")


def _stream_error(event: dict[str, Any], ctx: MapContext) -> UpstreamStatus:
    kind = str(event.get("error_type") or "generation")
    return UpstreamStatus(str(event.get("error") or "TGI reported an error"), status=ERROR_STATUS.get(kind, 500), code=kind)


def error(body: Any, ctx: MapContext) -> dict[str, Any]:
    """TGI's ``{error, error_type}`` (or the bare text axum sends for a malformed request) → OpenAI error body."""
    if isinstance(body, dict) and "error" in body:
        message, kind = str(body.get("error") or ""), body.get("error_type")
    else:
        message, kind = (body if isinstance(body, str) else ""), None
    if not message.strip():
        message = f"The upstream of target '{ctx.target.name}' answered {ctx.upstream_status} without a message."
    return {"error": {"message": message.strip(), "type": "upstream_error", "param": None, "code": kind}}


# ---------------------------------------------------------------------- TGI's API in front (reverse)


class Invalid(MappingError):
    """A request TGI itself would refuse, refused as TGI does: 422, ``error_type: validation``."""

    status = 422


# TGI's checks of its parameters (router/src/validation.rs): name → (test, what TGI says when it fails).
_CHECKS: dict[str, tuple[Any, str]] = {
    "max_new_tokens": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0, "must be strictly positive"),
    "temperature": (lambda v: _number(v) and v > 0, "must be strictly positive"),
    "top_p": (lambda v: _number(v) and 0 < v < 1, "must be > 0.0 and < 1.0"),
    "top_k": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0, "must be strictly positive"),
    "repetition_penalty": (lambda v: _number(v) and v > 0, "must be strictly positive"),
    "frequency_penalty": (lambda v: _number(v) and -2 <= v <= 2, "must be >= -2.0 and <= 2.0"),
}
# TGI parameters an OpenAI-compatible server has no place for: refused by name rather than dropped.
_NO_PLACE = {
    "typical_p": "typical sampling",
    "truncate": "truncating the input",
    "decoder_input_details": "the prompt's token details",
    "adapter_id": "LoRA adapters by id",
}


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def front_request(body: Any, ctx: MapContext) -> dict[str, Any]:
    """TGI ``/generate`` or ``/generate_stream`` → an OpenAI ``/v1/completions`` request. Every TGI parameter is
    mapped (``grammar`` of type json → ``response_format``) or refused with TGI's 422."""
    if not isinstance(body, dict) or not isinstance(body.get("inputs"), str):
        raise MappingError("A TGI request needs 'inputs', a string.", param="inputs")
    params = body.get("parameters") or {}
    if not isinstance(params, dict):
        raise MappingError("'parameters' must be an object.", param="parameters")
    for name, (ok, rule) in _CHECKS.items():
        if params.get(name) is not None and not ok(params[name]):
            raise Invalid(f"Input validation error: `{name}` {rule}", param=name)
    for name, what in _NO_PLACE.items():
        if params.get(name) not in (None, False):
            raise Invalid(f"Input validation error: `{name}` ({what}) cannot be passed on: target '{ctx.target.name}' is an "
                          "OpenAI-compatible server, which has no such parameter.", param=name)
    if params.get("watermark"):
        raise Invalid(f"Input validation error: `watermark` cannot be honoured by target '{ctx.target.name}' (an OpenAI-compatible "
                      "server).", param="watermark")
    if isinstance(params.get("best_of"), int) and params["best_of"] > 1:
        raise Invalid(f"Input validation error: `best_of` > 1 cannot be honoured by target '{ctx.target.name}' (an "
                      "OpenAI-compatible server); ask for one answer.", param="best_of")
    stream = ctx.path == "/generate_stream" or (ctx.path == "/" and body.get("stream") is True)
    ctx.state["tgi_compat"] = ctx.path == "/"
    # TGI's API names no model: the target's options.model, else the proxy asks the server which it serves (plan.complete).
    out: dict[str, Any] = {"prompt": body["inputs"], "stream": stream}
    if ctx.target.options.get("model"):
        out["model"] = ctx.target.options["model"]
    if params.get("max_new_tokens") is not None:
        out["max_tokens"] = params["max_new_tokens"]
    if params.get("do_sample") is False and not any(params.get(k) for k in ("temperature", "top_p", "top_k", "typical_p")):
        out["temperature"] = 0
    for key in ("temperature", "top_p", "frequency_penalty", "seed", "top_k", "repetition_penalty"):
        if params.get(key) is not None:
            out[key] = params[key]
    if params.get("stop"):  # none at all rather than an empty list
        out["stop"] = params["stop"]
    grammar = params.get("grammar")
    if grammar is not None:
        if not isinstance(grammar, dict) or grammar.get("type") not in ("json", "json_object"):
            raise Invalid(f"Input validation error: `grammar` of type {grammar.get('type') if isinstance(grammar, dict) else grammar!r} "
                          f"cannot be passed on to target '{ctx.target.name}': an OpenAI-compatible server takes a JSON schema "
                          "(grammar type json), not a regular expression.", param="grammar")
        out["response_format"] = {"type": "json_schema", "json_schema": {"name": "grammar", "schema": grammar.get("value") or {}}}

    if stream:
        out["stream_options"] = {"include_usage": True}
    # Each token's logprob (details.tokens, a stream's token events) and its alternatives (top_n_tokens) come from the
    # server's completions logprobs, asked only when wanted: they cost the server work.
    top = params.get("top_n_tokens") or 0
    if top or params.get("details"):
        out["logprobs"] = max(top, 1)
    ctx.state["tgi_top"] = top
    ctx.state["tgi_details"] = params.get("details", False) or stream
    ctx.state["tgi_return_full_text"] = bool(params.get("return_full_text"))
    ctx.state["tgi_inputs"] = body["inputs"]
    return out


_TGI_FINISH = {"stop": "eos_token", "length": "length"}


def front_answer(body: dict[str, Any], ctx: MapContext) -> dict[str, Any] | list[dict[str, Any]]:
    """An OpenAI completion → TGI's answer (a one-element list on the compat route ``/``)."""
    choice = (body.get("choices") or [{}])[0]
    text = choice.get("text") or ""
    if ctx.state.get("tgi_return_full_text"):
        text = ctx.state.get("tgi_inputs", "") + text
    out: dict[str, Any] = {"generated_text": text}
    if ctx.state.get("tgi_details"):
        use = body.get("usage") or {}
        tokens = _tgi_tokens(choice.get("logprobs"), int(ctx.state.get("tgi_top") or 0))
        out["details"] = {
            "finish_reason": _TGI_FINISH.get(choice.get("finish_reason") or "", "eos_token"),
            "generated_tokens": use.get("completion_tokens", 0), "seed": None, "prefill": [],
            "tokens": [t for t, _ in tokens],
        }
        if ctx.state.get("tgi_top"):
            out["details"]["top_tokens"] = [alternatives for _, alternatives in tokens]
    return [out] if ctx.state.get("tgi_compat") else out


def _tgi_tokens(logprobs: Any, top: int) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """A completion's ``logprobs`` → TGI's tokens, each with its ``top`` alternatives. Read in either form servers
    give: OpenAI's completions form (``tokens``, ``token_logprobs``, ``top_logprobs`` as maps), or the chat form
    (``content``: ``{token, logprob, top_logprobs}``) llama.cpp also answers completions with. Where the server names
    no token ids (the OpenAI forms have none; llama.cpp adds ``id``), ``id`` is 0."""
    if not isinstance(logprobs, dict):
        return []
    out = []
    if isinstance(logprobs.get("content"), list):
        for entry in logprobs["content"]:
            if isinstance(entry, dict):
                options = [o for o in entry.get("top_logprobs") or () if isinstance(o, dict)][:top]
                out.append((_tgi_token(entry.get("id"), entry.get("token"), entry.get("logprob")),
                            [_tgi_token(o.get("id"), o.get("token"), o.get("logprob")) for o in options]))
        return out
    if not isinstance(logprobs.get("tokens"), list):
        return []
    values = logprobs.get("token_logprobs") or []
    tops = logprobs.get("top_logprobs") or []
    for i, text in enumerate(logprobs["tokens"]):
        value = values[i] if i < len(values) else None
        alternatives = tops[i] if i < len(tops) and isinstance(tops[i], dict) else {}
        ranked = sorted(alternatives.items(), key=lambda kv: -kv[1] if _number(kv[1]) else 0)[:top]
        out.append((_tgi_token(None, text, value), [_tgi_token(None, k, v) for k, v in ranked]))
    return out


def _tgi_token(token_id: Any, text: Any, logprob: Any) -> dict[str, Any]:
    return {"id": token_id if isinstance(token_id, int) else 0, "text": text if isinstance(text, str) else "",
            "logprob": logprob if _number(logprob) else None, "special": False}


async def front_stream(events: AsyncIterator[dict[str, Any]], ctx: MapContext) -> AsyncIterator[dict[str, Any]]:
    """OpenAI completion chunks → TGI token events; the last token event carries the whole text."""
    held: dict[str, Any] | None = None
    text_so_far: list[str] = []
    finish = None
    use: dict[str, Any] = {}
    index = 0
    top = int(ctx.state.get("tgi_top") or 0)
    async for chunk in events:
        if chunk.get("usage"):
            use = chunk["usage"]
        for choice in chunk.get("choices") or []:
            piece = choice.get("text") or ""
            if choice.get("finish_reason"):
                finish = choice["finish_reason"]
            if piece:
                text_so_far.append(piece)
                # One event per token where the server gave them (with logprobs), else one for the piece.
                tokens = _tgi_tokens(choice.get("logprobs"), top)
                if "".join(t["text"] for t, _ in tokens) != piece:  # tokens that do not spell the piece are not its own
                    tokens = []
                for token, alternatives in tokens or [({"id": 0, "text": piece, "logprob": None, "special": False}, [])]:
                    if held is not None:
                        yield held
                    index += 1
                    held = {"index": index, "token": token, "generated_text": None, "details": None}
                    if top:
                        held["top_tokens"] = alternatives
    last = held or {"index": index + 1, "token": {"id": 0, "text": "", "logprob": None, "special": True},
                    "generated_text": None, "details": None}
    full = "".join(text_so_far)
    last["generated_text"] = (ctx.state.get("tgi_inputs", "") + full) if ctx.state.get("tgi_return_full_text") else full
    last["details"] = {"finish_reason": _TGI_FINISH.get(finish or "", "eos_token"),
                       "generated_tokens": use.get("completion_tokens", index), "seed": None,
                       "input_length": use.get("prompt_tokens", 0)}
    yield last


def front_error(body: Any, ctx: MapContext) -> dict[str, Any]:
    """An OpenAI error body → TGI's ``{error, error_type}``."""
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict):
        return {"error": str(err.get("message") or ""), "error_type": str(err.get("type") or "upstream_error")}
    if isinstance(err, str):
        return {"error": err, "error_type": str(body.get("error_type") or "upstream_error")}
    return {"error": str(body), "error_type": "upstream_error"}


# ------------------------------------------------------------------------------------- the declaration


# ---------------------------------------------------------------------- TGI's API relayed, read for the record


def native_request(body: Any) -> dict[str, Any]:
    """A ``/generate`` request relayed to a TGI target, as the OpenAI completions request a record is made from."""
    body = body if isinstance(body, dict) else {}
    params: dict[str, Any] = body["parameters"] if isinstance(body.get("parameters"), dict) else {}
    out: dict[str, Any] = {"prompt": body.get("inputs") if isinstance(body.get("inputs"), str) else ""}
    for ours, theirs in (("max_tokens", "max_new_tokens"), ("temperature", "temperature"), ("top_p", "top_p"), ("top_k", "top_k"),
                         ("seed", "seed"), ("stop", "stop"), ("repetition_penalty", "repetition_penalty")):
        if params.get(theirs) is not None:
            out[ours] = params[theirs]
    if params.get("do_sample") is False:
        out["temperature"] = 0
    if body.get("stream") is True:
        out["stream"] = True
    return out


def native_answer(body: Any) -> dict[str, Any]:
    """TGI's answer (``{generated_text, details}``, or a list of them from the compat route) as an OpenAI completion."""
    head = body[0] if isinstance(body, list) and body else body
    first: dict[str, Any] = head if isinstance(head, dict) else {}
    details: dict[str, Any] = first["details"] if isinstance(first.get("details"), dict) else {}
    choices = [{"index": 0, "text": str(first.get("generated_text") or ""), "logprobs": None,
                "finish_reason": FINISH.get(details.get("finish_reason") or "", "stop")}]
    for i, extra in enumerate(details.get("best_of_sequences") or (), 1):
        if isinstance(extra, dict):
            choices.append({"index": i, "text": str(extra.get("generated_text") or ""), "logprobs": None,
                            "finish_reason": FINISH.get(extra.get("finish_reason") or "", "stop")})
    out: dict[str, Any] = {"object": "text_completion", "choices": choices}
    if isinstance(details.get("generated_tokens"), int):
        # TGI gives the prompt's length only in the stream's details (input_length) or with decoder_input_details.
        prompt = details.get("input_length")
        if not isinstance(prompt, int) and isinstance(details.get("prefill"), list) and details["prefill"]:
            prompt = len(details["prefill"])
        out["usage"] = oa.usage(prompt, details["generated_tokens"]) if isinstance(prompt, int) else {
            "completion_tokens": details["generated_tokens"]}
    return out


def front_info(body: Any, ctx: MapContext) -> dict[str, Any]:
    """An OpenAI server's model list → TGI's ``/info``, for a TGI client in front of it: the model it serves (the
    target's ``options.model``, else the first listed), and the limits this front keeps (one answer per request, TGI's
    four stop sequences); the token limits are the server's ``max_model_len`` where it says one (vLLM does), else 0:
    unknown."""
    models = [m for m in (body.get("data") if isinstance(body, dict) else None) or [] if isinstance(m, dict)]
    wanted = ctx.target.options.get("model")
    model = next((m for m in models if m.get("id") == wanted), models[0] if models else {})
    length: int = model["max_model_len"] if isinstance(model.get("max_model_len"), int) else 0
    return {"model_id": wanted or model.get("id") or ctx.target.name, "model_sha": None, "model_pipeline_tag": "text-generation",
            "max_concurrent_requests": 128, "max_best_of": 1, "max_stop_sequences": 4, "max_input_tokens": max(length - 1, 0),
            "max_total_tokens": length, "validation_workers": 1, "max_client_batch_size": 1, "router": "mooltiproxy",
            "version": _version(), "sha": None, "docker_label": None}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mooltiproxy")
    except PackageNotFoundError:
        return "0"


def count_tokens_request(body: Any, ctx: MapContext) -> dict[str, Any]:
    """Anthropic's ``/v1/messages/count_tokens`` → TGI's ``/tokenize`` of the prompt the same Messages request would send
    (what the model sees, its BOS included: /tokenize adds it as /generate does)."""
    # The Messages API's translation lives with it, installed as mooltiproxy.mappers.anthropic (looked up when used:
    # mappers/ is its own folder to the type checker).
    messages_prompt = importlib.import_module("mooltiproxy.mappers.anthropic").messages_prompt

    return {"inputs": messages_prompt(body, ctx)}


def count_tokens_answer(body: Any, ctx: MapContext) -> dict[str, Any]:
    """TGI's token list → ``{"input_tokens": n}``."""
    if not isinstance(body, list):
        raise UpstreamError(f"The upstream of target '{ctx.target.name}' answered /tokenize without a list of tokens.")
    return {"input_tokens": len(body)}


def models_answer(body: Any, ctx: MapContext) -> dict[str, Any]:
    """TGI's ``/info`` → OpenAI's model list: the one model the server serves (a client of a TGI target lists models
    to find the name to send, and that is the one the server knows)."""
    info = body if isinstance(body, dict) else {}
    model = info.get("model_id") or ctx.target.name
    return {"object": "list", "data": [{"id": model, "object": "model", "created": 0, "owned_by": ctx.target.name,
                                        **({"max_model_len": info["max_total_tokens"]} if isinstance(info.get("max_total_tokens"), int)
                                           else {})}]}


def _error_body(exc: ProxyError, full: bool) -> dict[str, Any]:
    """The proxy's own error as TGI writes one: ``error_type`` as TGI names the kinds its clients tell apart (the
    ``text_generation`` client raises ValidationError for "validation", OverloadedError for "overloaded")."""
    kind = "validation" if exc.status in (400, 413, 422) else "overloaded" if exc.status in (429, 503) else exc.code or exc.type
    return {"error": exc.full_message() if full else exc.message, "error_type": kind}


BACKEND = Backend(
    name="tgi",
    doc="Hugging Face Text Generation Inference: chats rendered by a prompter onto /generate and /generate_stream",
    routes={
        "/v1/chat/completions": RouteSpec("/generate", stream_path="/generate_stream", request=chat_request, answer=chat_answer,
                                          stream=chat_stream, error=error),
        "/v1/completions": RouteSpec("/generate", stream_path="/generate_stream", request=completion_request,
                                     answer=completion_answer, stream=completion_stream, error=error),
        "/generate": RouteSpec(),
        "/generate_stream": RouteSpec(),
        "/": RouteSpec(),
        "/info": RouteSpec.get(),
        "/v1/models": RouteSpec(path="/info", method="GET", answer=models_answer),
        "/v1/messages/count_tokens": RouteSpec(path="/tokenize", request=count_tokens_request, answer=count_tokens_answer),
    },
    options={
        "max_stop_sequences": Option(integer(min=1), 4, "the server's --max-stop-sequences"),
        "max_best_of": Option(integer(min=1), 2, "the server's --max-best-of"),
    },
    needs_prompter=True,
    fronts=(Front(paths=("/generate", "/generate_stream", "/"),  # "/": the compat route the text-generation client posts to
                  base="/v1/completions", request=front_request, answer=front_answer, stream=front_stream, error=front_error,
                  frame=sse.frame_tgi, done=b"", error_body=_error_body),),
    # TGI's own API relayed to a TGI target is recorded as the completion it is ("/": the compat route, no dynamic suffix).
    dialects=tuple(Dialect(path=path, suffix=suffix, request=native_request, answer=native_answer, reassembler=GenerateReassembler,
                           kind="completion")
                   for path, suffix in (("/generate", "/generate"), ("/generate_stream", "/generate_stream"), ("/", ""))),
)
