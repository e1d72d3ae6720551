"""The mapper toolkit (``from mooltiproxy import helpers``): the OpenAI API's side of every translation.

Reading a request's fields, building answers and chunks, cutting stop strings, and for backends that take
one prompt string, the chat rendered by the target's prompter. Mappers, built-in and custom alike, use
these so that every backend yields the same OpenAI shapes: a real unique ``id``, ``created``, the
requested ``model``, ``finish_reason`` and ``usage`` — and the same clear 400 for a field that is not what
the OpenAI API allows.
"""

from __future__ import annotations

import functools
import itertools
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..dataset.records import RecordOnly as RecordOnly  # mappers found it here
from ..errors import MappingError
from .mapping import Fanout, MapContext
from .prompting import render_chat

CHAT = "chat"
COMPLETION = "completion"


_ids = itertools.count()
_PROCESS = os.urandom(6).hex()


def new_id(prefix: str) -> str:
    """Unique across processes and runs (a random part per process, then a counter), without a system call."""
    return f"{prefix}-{_PROCESS}{next(_ids):012x}"


# ---------------------------------------------------------------------------------- reading requests


def messages_of(body: dict[str, Any]) -> list[dict[str, Any]]:
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise MappingError("'messages' must be a list of {role, content} objects.", param="messages")
    if not messages:
        raise MappingError("'messages' is empty: send at least one message.", param="messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise MappingError(f"messages[{i}] must be an object with a 'role'.", param=f"messages[{i}]")
    return messages


def text_of(content: Any) -> str:
    """A message's ``content`` as text: a string, the text parts of a list of parts, or "" for none (an
    assistant turn that only calls tools has no content)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    raise MappingError("A message's 'content' must be a string or a list of parts.", param="messages")


def prompts_of(body: dict[str, Any]) -> list[str]:
    """``prompt`` of a completions request: a string or a list of strings (token ids are not text)."""
    prompt = body.get("prompt", "")
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        return prompt
    raise MappingError("'prompt' must be a string or a list of strings; token ids cannot be sent to this backend.", param="prompt")


def stops_of(body: dict[str, Any]) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop] if stop else []
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        return [s for s in stop if s]
    raise MappingError("'stop' must be a string or a list of strings.", param="stop")


def number(body: dict[str, Any], key: str, low: float | None = None, high: float | None = None) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise MappingError(f"'{key}' must be a number, not {value!r}.", param=key)
    if (low is not None and value < low) or (high is not None and value > high):
        raise MappingError(f"'{key}' must be between {low:g} and {high:g}, not {value:g}.", param=key)
    return float(value)


def integer(body: dict[str, Any], key: str, low: int | None = None) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise MappingError(f"'{key}' must be a whole number, not {value!r}.", param=key)
    if low is not None and value < low:
        raise MappingError(f"'{key}' must be at least {low}, not {value}.", param=key)
    return value


def numbers(body: dict[str, Any], fields: Mapping[str, tuple[str, float, float]]) -> dict[str, float]:
    """The fields of ``fields`` (client name → backend name, low, high) the client sent, checked and renamed."""
    out: dict[str, float] = {}
    for key, (name, low, high) in fields.items():
        value = number(body, key, low, high)
        if value is not None:
            out[name] = value
    return out


def integers(body: dict[str, Any], fields: Mapping[str, str], low: int = 0) -> dict[str, int]:
    """The whole-number fields of ``fields`` (client name → backend name) the client sent, checked and renamed."""
    out: dict[str, int] = {}
    for key, name in fields.items():
        value = integer(body, key, low)
        if value is not None:
            out[name] = value
    return out


# Values that ask for nothing (no penalty, no filtering, the best of one answer): a client sending defaults is not refused.
NEUTRAL: Mapping[str, Any] = {"repetition_penalty": 1, "typical_p": 1, "best_of": 1, "top_p": 1}
# Fields that ask for something whatever their value: a seed of 0 is a seed, and an empty web_search_options turns
# OpenAI's web search on with its defaults.
ALWAYS_ASKS = ("seed", "web_search_options")


def asks(body: dict[str, Any], name: str) -> bool:
    """Whether the request asks for something with ``name``: set, not false, not empty, not its neutral value."""
    value = body.get(name)
    if value is None or value is False:
        return False
    if name in ALWAYS_ASKS:
        return True
    if name in NEUTRAL and value == NEUTRAL[name]:
        return False
    return bool(value)


def refuse_best_of(body: dict[str, Any], ctx: MapContext, api: str) -> None:
    """A 400 for ``best_of`` above ``n``: choosing the likeliest of more answers than are returned needs the server to
    rank them, which ``api`` does not. ``best_of`` equal to ``n`` (or 1) asks for nothing more than ``n`` answers."""
    best_of = integer(body, "best_of", 1)
    if best_of is not None and best_of > n_of(body):
        raise MappingError(f"'best_of' ({best_of} answers ranked to return the likeliest) cannot be honoured by target "
                           f"'{ctx.target.name}': {api} does not rank answers. Send the request without it, or ask for "
                           f"n={best_of} answers and choose among them.", param="best_of")


# What each OpenAI field a backend may have no place for asks of it, for the sentence that refuses it.
ASKS_FOR: Mapping[str, str] = {
    "logit_bias": "biasing tokens by id", "prediction": "predicted outputs", "audio": "audio output",
    "reasoning_effort": "a reasoning effort", "web_search_options": "searching the web", "min_p": "min-p sampling",
    "typical_p": "typical sampling", "seed": "reproducible sampling", "presence_penalty": "a presence penalty",
    "frequency_penalty": "a frequency penalty", "repetition_penalty": "a repetition penalty",
    "suffix": "filling in the middle", "echo": "the prompt given back with the answer",
    "best_of": "the likeliest of several answers",
    "functions": "OpenAI's older function calling; send the functions as tools",
    "function_call": "OpenAI's older function calling; send it as tool_choice",
}


def refuse_unsupported(body: dict[str, Any], ctx: MapContext, fields: Sequence[str], api: str) -> None:
    """A 400 naming the first of ``fields`` the request asks for (``asks``), what it asks for, and the target: for what
    changes the answer and that ``api`` has no place for, which must never be dropped in silence. Non-text
    ``modalities`` are refused too: every prompt-string backend answers with text only."""
    if body.keys().isdisjoint(fields) and "modalities" not in body:
        return  # the common request names none of them: one look in C instead of one call per field
    for name in fields:
        if asks(body, name):
            what = ASKS_FOR.get(name, name)
            raise MappingError(f"'{name}' ({what}) cannot be honoured by target '{ctx.target.name}': {api} has no such "
                               "parameter. Send the request without it.", param=name)
    modalities = body.get("modalities")
    if isinstance(modalities, list) and any(m != "text" for m in modalities):
        raise MappingError(f"Target '{ctx.target.name}' answers with text only; 'modalities' asks for {modalities}.",
                           param="modalities")


def max_tokens_of(body: dict[str, Any]) -> int | None:
    """``max_completion_tokens`` if given, else the older ``max_tokens`` (what most clients send)."""
    for key in ("max_completion_tokens", "max_tokens"):
        value = integer(body, key, 1)
        if value is not None:
            return value
    return None


def n_of(body: dict[str, Any]) -> int:
    n = integer(body, "n", 1)
    if n is not None and n > 128:
        raise MappingError(f"'n' must be at most 128, not {n}.", param="n")
    return n or 1


def per_choice(bases: Sequence[Any], n: int, call: Callable[[Any, int], dict[str, Any]]) -> dict[str, Any] | Fanout:
    """For a backend without ``n``: ``call(base, i)`` is the body of choice ``i`` for each base (a prompt,
    or a body), each its own upstream call; a single call needs no fan-out."""
    bodies = [call(base, i) for base in bases for i in range(n)]
    return bodies[0] if len(bodies) == 1 else Fanout(bodies, prompts=len(bases))


def seed_for_choice(seed: int, i: int, most: int) -> int:
    """Choice ``i``'s seed: the same seed for every choice would give the same answer ``n`` times."""
    return (seed + i) % (most + 1)


def include_usage(body: Any) -> bool:
    options = body.get("stream_options") if isinstance(body, dict) else None
    return isinstance(options, dict) and options.get("include_usage") is True


def model_of(ctx: MapContext) -> str:
    return ctx.model or ctx.target.name


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens}


# ------------------------------------------------------------------------------------ building answers


def answer(ctx: MapContext, kind: str, choices: Sequence[tuple[str, str] | tuple[str, str, str | None]], use: dict[str, int] | None,
           logprobs: Sequence[list[dict[str, Any]] | None] | None = None) -> dict[str, Any]:
    """A whole ``chat.completion`` or ``text_completion`` from (text, finish_reason) per choice, or (text, finish_reason,
    the stop string it ended at: vLLM's ``stop_reason``); ``logprobs``, per choice, the tokens in chat form (see
    ``logprob_tokens``) when the client asked for them."""
    asked = logprobs_asked(ctx.request, kind)
    chat = kind == CHAT
    out_choices: list[dict[str, Any]] = []
    for i, c in enumerate(choices):
        tokens = logprobs[i] if logprobs is not None and i < len(logprobs) else None
        probs = None if asked is None or tokens is None else logprobs_object(kind, tokens, asked)
        out: dict[str, Any] = (
            {"index": i, "message": {"role": "assistant", "content": c[0], "refusal": None}, "logprobs": probs, "finish_reason": c[1]}
            if chat else {"index": i, "text": c[0], "logprobs": probs, "finish_reason": c[1]})
        if len(c) > 2 and c[2] is not None:
            out["stop_reason"] = c[2]
        out_choices.append(out)
    result: dict[str, Any] = {"id": new_id("chatcmpl" if chat else "cmpl"), "object": "chat.completion" if chat else "text_completion",
                              "created": int(time.time()), "model": model_of(ctx), "choices": out_choices}
    if use is not None:
        result["usage"] = use
    return result


class Chunks:
    """Builds the chunks of one streamed answer: same id, created and model on each, as OpenAI sends them."""

    __slots__ = ("_base", "_kind", "_offsets", "_top", "_usage_field")

    def __init__(self, ctx: MapContext, kind: str) -> None:
        self._kind = kind
        prefix, obj = ("chatcmpl", "chat.completion.chunk") if kind == CHAT else ("cmpl", "text_completion")
        self._base = {"id": new_id(prefix), "object": obj, "created": int(time.time()), "model": model_of(ctx)}
        # With include_usage, every chunk carries "usage": null and one last chunk the totals.
        self._usage_field = include_usage(ctx.request)
        self._top = logprobs_asked(ctx.request, kind)
        self._offsets: dict[int, int] = {}  # completions' text_offset runs on across the chunks of a choice

    def _chunk(self, choice: dict[str, Any]) -> dict[str, Any]:
        chunk = {**self._base, "choices": [choice]}
        if self._usage_field:
            chunk["usage"] = None
        return chunk

    def role(self, index: int = 0) -> dict[str, Any]:
        if self._kind == CHAT:
            return self._chunk({"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None})
        return self._chunk({"index": index, "text": "", "logprobs": None, "finish_reason": None})

    def text(self, text: str, index: int = 0, tokens: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """A piece of the answer; ``tokens``, its tokens in chat form, become its logprobs when they were asked for."""
        probs = None
        if self._top is not None and tokens is not None:
            offset = self._offsets.get(index, 0)
            probs = logprobs_object(self._kind, tokens, self._top, offset)
            self._offsets[index] = offset + sum(len(t["token"]) for t in tokens)
        if self._kind == CHAT:
            return self._chunk({"index": index, "delta": {"content": text}, "logprobs": probs, "finish_reason": None})
        return self._chunk({"index": index, "text": text, "logprobs": probs, "finish_reason": None})

    def delta(self, delta: dict[str, Any], index: int = 0) -> dict[str, Any]:
        """A chat chunk carrying any delta: reasoning_content, tool_calls fragments."""
        return self._chunk({"index": index, "delta": delta, "logprobs": None, "finish_reason": None})

    def finish(self, reason: str, index: int = 0, stop: str | None = None) -> dict[str, Any]:
        """The choice's last chunk; ``stop``, the stop string it ended at (vLLM's ``stop_reason``, which the Anthropic front
        answers as ``stop_sequence``)."""
        if self._kind == CHAT:
            chunk = self._chunk({"index": index, "delta": {}, "logprobs": None, "finish_reason": reason})
        else:
            chunk = self._chunk({"index": index, "text": "", "logprobs": None, "finish_reason": reason})
        if stop is not None:
            chunk["choices"][0]["stop_reason"] = stop
        return chunk

    def usage(self, use: dict[str, int]) -> dict[str, Any] | None:
        """The closing usage chunk. When the client did not ask for one it is a ``RecordOnly`` chunk: yielded like any
        other, it reaches the dataset's record with the backend's counts and never the client."""
        chunk = {**self._base, "choices": [], "usage": use}
        return chunk if self._usage_field else RecordOnly(chunk)


# ------------------------------------------------------------------------------------------- logprobs

CHAT_TOP_LOGPROBS = 20  # OpenAI's bounds: chat's top_logprobs 0–20, completions' logprobs 0–5
COMPLETION_LOGPROBS = 5


def logprobs_asked(body: Any, kind: str) -> int | None:
    """How many alternatives per token the client asked for, or None when it asked for no logprobs at all.

    Chat asks with ``logprobs: true`` and ``top_logprobs: 0–20``; completions with ``logprobs: 0–5``
    (0 still gives each chosen token's own logprob). Values OpenAI refuses are refused the same way."""
    if not isinstance(body, dict):
        return None
    if kind == CHAT:
        top = body.get("top_logprobs")
        if not body.get("logprobs"):
            if top not in (None, 0):
                raise MappingError("'top_logprobs' needs 'logprobs': true.", param="top_logprobs")
            return None
        if top is None:
            return 0
        if not _is_int(top) or not 0 <= top <= CHAT_TOP_LOGPROBS:
            raise MappingError(f"'top_logprobs' must be an integer from 0 to {CHAT_TOP_LOGPROBS}.", param="top_logprobs")
        return int(top)
    value = body.get("logprobs")
    if value is None or value is False:
        return None
    if not _is_int(value) or not 0 <= value <= COMPLETION_LOGPROBS:
        raise MappingError(f"'logprobs' must be an integer from 0 to {COMPLETION_LOGPROBS} for completions.", param="logprobs")
    return int(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def logprob_tokens(entries: Any, top: int) -> list[dict[str, Any]]:
    """A backend's per-token list of ``{token, logprob, bytes?, top_logprobs: [{token, logprob, bytes?}]}``
    (llama.cpp's ``completion_probabilities``; other servers' lists once renamed) → OpenAI chat's form,
    with ``top`` alternatives each: the common form the answer and the chunks are built from."""
    out: list[dict[str, Any]] = []
    for entry in entries if isinstance(entries, list) else ():
        if not isinstance(entry, dict) or not isinstance(entry.get("token"), str):
            continue
        alternatives = [_token(alt) for alt in entry.get("top_logprobs") or ()
                        if isinstance(alt, dict) and isinstance(alt.get("token"), str)]
        out.append({**_token(entry), "top_logprobs": alternatives[:top]})
    return out


def _token(entry: dict[str, Any]) -> dict[str, Any]:
    token: str = entry["token"]
    raw = entry.get("bytes")
    logprob = entry.get("logprob")
    return {"token": token, "logprob": float(logprob) if isinstance(logprob, int | float) else None,
            "bytes": list(raw) if isinstance(raw, list) else list(token.encode())}


def logprobs_object(kind: str, tokens: list[dict[str, Any]], top: int, offset: int = 0) -> dict[str, Any]:
    """The ``logprobs`` of a choice: chat's ``{content, refusal}``, or completions' parallel lists with
    ``top_logprobs`` as {token: logprob} and ``text_offset`` counted from ``offset``."""
    if kind == CHAT:
        return {"content": tokens, "refusal": None}
    offsets = []
    for t in tokens:
        offsets.append(offset)
        offset += len(t["token"])
    return {"tokens": [t["token"] for t in tokens], "token_logprobs": [t["logprob"] for t in tokens],
            "top_logprobs": [{a["token"]: a["logprob"] for a in t["top_logprobs"][:top]} for t in tokens], "text_offset": offsets}


# ------------------------------------------------------------------------------------- stop strings


def cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """The text before the first stop string, and whether one was found (OpenAI never returns it)."""
    cut, _ = first_stop(text, stops)
    return (text[:cut], True) if cut != -1 else (text, False)


def first_stop(text: str, stops: Sequence[str]) -> tuple[int, str | None]:
    """Where the first stop string starts in ``text`` (-1: none), and which one it is."""
    cut, matched = -1, None
    for stop in stops:
        i = text.find(stop) if stop else -1
        if i != -1 and (cut == -1 or i < cut):
            cut, matched = i, stop
    return cut, matched


@functools.lru_cache(maxsize=256)
def _beginnings(stops: tuple[str, ...]) -> dict[str, list[tuple[int, str]]]:
    """Every proper beginning of the stop strings (length, text), by its last character, longest first: the end of a
    streamed text is looked up by its last character, so most tokens cost one dict lookup (a tenth of S8's
    translation time went to trying every beginning of every stop string on every token). Worked out once per set
    of stop strings (a prompter's are the same on every request)."""
    ends: dict[str, set[tuple[int, str]]] = {}
    for stop in stops:
        for k in range(1, len(stop)):
            ends.setdefault(stop[k - 1], set()).add((k, stop[:k]))
    return {c: sorted(found, reverse=True) for c, found in ends.items()}


class StopCutter:
    """Streamed text in, text safe to send out: what could still grow into a stop string is held back
    until the next piece decides it, and the stream ends at the first stop string."""

    __slots__ = ("_ends", "_held", "_stops", "matched", "stopped")

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = [s for s in stops if s]
        self._ends = _beginnings(tuple(self._stops))
        self._held = ""
        self.stopped = False
        self.matched: str | None = None  # the stop string the stream ended at

    def feed(self, piece: str) -> str:
        if self.stopped:
            return ""
        if not self._stops:
            return piece
        text = self._held + piece
        cut, matched = first_stop(text, self._stops)
        if cut != -1:
            self._held = ""
            self.stopped, self.matched = True, matched
            return text[:cut]
        keep = self._partial_len(text)
        self._held = text[len(text) - keep:] if keep else ""
        return text[: len(text) - keep]

    def flush(self) -> str:
        """What was held back, once the stream has ended without completing a stop string."""
        held, self._held = self._held, ""
        return "" if self.stopped else held

    def _partial_len(self, text: str) -> int:
        """Length of the longest end of ``text`` that is the start of some stop string."""
        if text:
            for k, beginning in self._ends.get(text[-1], ()):
                if text.endswith(beginning):
                    return k
        return 0


# ------------------------------------------------------------------- backends that take one prompt string


def chat_prompt(body: dict[str, Any], ctx: MapContext, *, server_adds_bos: bool = True) -> tuple[str, list[str]]:
    """The prompt for ``body["messages"]`` and the stop strings in force: the client's first, then the
    prompter's. Sets ``ctx.prompt`` (recorded) and ``ctx.stop`` (what answers are cut at).

    A server that tokenizes the prompt with its special tokens adds a BOS itself; the template's own
    leading BOS is then dropped, or the model would see two.
    """
    messages = messages_of(body)
    prompter = ctx.prompter
    if prompter is None:
        raise MappingError(f"Target '{ctx.target.name}' has no prompter to turn messages into a prompt.")
    if body.get("tools") and body.get("tool_choice") != "none" and not prompter.tools_rendered:
        raise MappingError(
            f"This request offers tools, but prompter '{prompter.name}' of target '{ctx.target.name}' has no place for them in "
            "its template, so the model would never see them. Use a prompter whose template renders tools, or send the "
            "request without tools (or with tool_choice 'none').", param="tools")
    prompt, template_stops = render_chat(prompter, messages, tools=body.get("tools"), character=ctx.character,
                                         user=ctx.target.user_name)
    if server_adds_bos and prompter.bos_token and prompt.startswith(prompter.bos_token):
        prompt = prompt[len(prompter.bos_token):]
    ctx.prompt = prompt
    ctx.stop = merged_stops(body, template_stops)
    return prompt, ctx.stop


def answer_schema(body: dict[str, Any], ctx: MapContext, backend: str) -> dict[str, Any] | None:
    """The JSON schema the answer must follow, for a backend that constrains generation by one (TGI's ``grammar``,
    llama.cpp's ``json_schema``, Ollama's ``format``): the request's ``response_format``, or, when ``tool_choice``
    demands a call (``"required"`` or a named function), a schema that only a call can satisfy. The answer is then
    read as that call (``toolcalls.FORCED``), the way TGI's own chat route forces tools."""
    fmt = response_schema(body.get("response_format"), backend)
    forced = forced_call_schema(body, ctx)
    if forced is not None and fmt is not None:
        raise MappingError(f"'tool_choice' demands a call and 'response_format' a JSON answer; target '{ctx.target.name}' "
                           "constrains an answer by one schema only. Send one of the two.", param="tool_choice")
    return forced if forced is not None else fmt


def response_schema(fmt: Any, backend: str) -> dict[str, Any] | None:
    """``response_format`` as a JSON schema (``json_object``: any object), None for text."""
    if fmt is None:
        return None
    if not isinstance(fmt, dict):
        raise MappingError("'response_format' must be an object such as {\"type\": \"json_object\"}.", param="response_format")
    kind = fmt.get("type")
    if kind in (None, "text"):
        return None
    if kind == "json_object":
        return {"type": "object"}
    if kind == "json_schema":
        schema = (fmt.get("json_schema") or {}).get("schema")
        if not isinstance(schema, dict):
            raise MappingError("response_format.json_schema.schema must be a JSON schema object.", param="response_format")
        return schema
    raise MappingError(f"response_format type '{kind}' cannot be sent to {backend}.", param="response_format")


def forced_call(body: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The functions one of which the answer must call, when ``tool_choice`` demands a call (None: it does not)."""
    choice, tools = body.get("tool_choice"), body.get("tools")
    if choice in (None, "auto", "none") or not isinstance(tools, list) or not tools:
        return None
    functions = [t["function"] for t in tools if isinstance(t, dict) and isinstance(t.get("function"), dict)
                 and isinstance(t["function"].get("name"), str)]
    if choice == "required":
        return functions
    name = choice.get("function", {}).get("name") if isinstance(choice, dict) and isinstance(choice.get("function"), dict) else None
    if not isinstance(name, str):
        raise MappingError("'tool_choice' must be \"none\", \"auto\", \"required\" or {\"type\": \"function\", \"function\": "
                           "{\"name\": …}}.", param="tool_choice")
    named = [f for f in functions if f["name"] == name]
    if not named:
        raise MappingError(f"'tool_choice' names function '{name}', which is not among the request's tools.", param="tool_choice")
    return named


def forced_call_schema(body: dict[str, Any], ctx: MapContext) -> dict[str, Any] | None:
    """A schema only a call of one of the demanded functions satisfies: ``{"name": …, "arguments": {…}}``."""
    functions = forced_call(body)
    if functions is None:
        return None
    ctx.state["forced_call"] = True

    def one(f: dict[str, Any]) -> dict[str, Any]:
        parameters = f.get("parameters") if isinstance(f.get("parameters"), dict) else {"type": "object"}
        return {"type": "object", "properties": {"name": {"type": "string", "enum": [f["name"]]}, "arguments": parameters},
                "required": ["name", "arguments"]}

    return one(functions[0]) if len(functions) == 1 else {"anyOf": [one(f) for f in functions]}


def completion_prompts(body: dict[str, Any], ctx: MapContext) -> tuple[list[str], list[str]]:
    """The prompts of a completions request as given, and its stop strings (the client's, then the prompter's)."""
    prompts = prompts_of(body)
    ctx.prompt = prompts[0] if len(prompts) == 1 else "\n\n".join(prompts)
    ctx.stop = merged_stops(body, ctx.prompter.stop if ctx.prompter is not None else ())
    return prompts, ctx.stop


def merged_stops(body: dict[str, Any], extra: Any) -> list[str]:
    return list(dict.fromkeys([*stops_of(body), *extra]))


def prompt_calls(prompts: list[str], n: int, params: dict[str, Any], *, seed_key: str, seed_max: int) -> dict[str, Any] | Fanout:
    """``{"prompt": …, **params}`` for each prompt and each of ``n`` choices, for a server whose request is
    the prompt beside its parameters and that has no ``n`` (llama.cpp, KoboldCpp); a seed steps per choice."""

    def call(prompt: str, i: int) -> dict[str, Any]:
        p = {"prompt": prompt, **params}
        if i and seed_key in p:
            p[seed_key] = seed_for_choice(p[seed_key], i, seed_max)
        return p

    return per_choice(prompts, n, call)


# ------------------------------------------------------------------------------ a whole answer as a stream


def stream_of(answer: dict[str, Any], kind: str, request: Any) -> list[dict[str, Any]]:
    """A whole answer as the chunks a stream of it would have been: per choice the role, the reasoning, the text,
    the tool calls and the finish; then the usage, when the request asked for it (``stream_options``)."""
    obj = "chat.completion.chunk" if kind == CHAT else "text_completion"
    base = {"id": answer.get("id") or new_id("chatcmpl" if kind == CHAT else "cmpl"), "object": obj,
            "created": answer.get("created") or int(time.time()), "model": answer.get("model")}
    with_usage = include_usage(request)

    def chunk(choice: dict[str, Any]) -> dict[str, Any]:
        out = {**base, "choices": [choice]}
        if with_usage:
            out["usage"] = None
        return out

    chunks = []
    for position, choice in enumerate(answer.get("choices") or ()):
        if not isinstance(choice, dict):
            continue
        index = choice.get("index", position)
        if kind == CHAT:
            message = choice.get("message") or {}
            deltas: list[dict[str, Any]] = [{"role": "assistant", "content": ""}]
            if message.get("reasoning_content"):
                deltas.append({"reasoning_content": message["reasoning_content"]})
            if message.get("content"):
                deltas.append({"content": message["content"]})
            calls = message.get("tool_calls") or []
            if calls:
                deltas.append({"tool_calls": [{"index": i, "id": c.get("id"), "type": "function", "function": c.get("function") or {}}
                                              for i, c in enumerate(calls)]})
            # The logprobs, when there are any, go with the text they are about.
            chunks += [chunk({"index": index, "delta": d, "logprobs": choice.get("logprobs") if d.get("content") else None,
                              "finish_reason": None}) for d in deltas]
            chunks.append(chunk({"index": index, "delta": {}, "logprobs": None, "finish_reason": choice.get("finish_reason")}))
        else:
            text = {"index": index, "text": choice.get("text") or "", "logprobs": choice.get("logprobs"), "finish_reason": None}
            chunks.append(chunk(text))
            chunks.append(chunk({"index": index, "text": "", "logprobs": None, "finish_reason": choice.get("finish_reason")}))
    if with_usage and isinstance(answer.get("usage"), dict):
        chunks.append({**base, "choices": [], "usage": answer["usage"]})
    return chunks
