"""The dataset record: one exchange as a ShareGPT conversation with what training needs beside it.

    {"id", "session", "conversations": [{"from": "system"|"human"|"gpt"|"function_call"|"observation",
     "value": str}, ...], "tools": "<JSON list as a string>", "meta": {...}}

``conversations`` is the whole conversation the client sent (system prompt and history, tool calls as
``function_call`` turns, tool results as ``observation`` turns) followed by the answer. An exchange
answered with n choices gives n records, one per choice, that share their ``meta.turn``: alternatives
of the same turn, as a regeneration is. Every field keeps one type on every record (``tools`` is always
a string), so Arrow-based readers such as ``datasets`` load the file without guessing.

Threads: ``meta.turn`` fingerprints the conversation sent (what a regeneration repeats), ``meta.key``
the conversation with its answer (what the next turn of the chat starts with), ``meta.tail`` the system
prompt with the last user turn and the answer (what a frontend that slides its window keeps). A request
whose messages begin with an earlier record's ``key`` continues it (``meta.parent``). Conversations are
only ever linked within one scope: the same API key, the same OpenAI ``user`` and the same conversation
name (``x-mooltiproxy-conversation``, or ``metadata.conversation_id`` in the body) when the client gives
one (``meta.conversation``). ``meta.alternative_of`` names the first answer of the turn an answer is an
alternative to (another of the n choices, or a regeneration); how the recorder decides is in its module.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import os
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson

CHAT, COMPLETION = "/v1/chat/completions", "/v1/completions"
PARAMS = frozenset(("temperature", "top_p", "top_k", "min_p", "max_tokens", "max_completion_tokens", "stop", "seed", "n",
                    "frequency_penalty", "presence_penalty", "repetition_penalty", "response_format", "tool_choice", "stream"))


@dataclass(slots=True)
class Capture:
    """What the pipeline hands the recorder after an exchange: references, converted later off the hot path."""

    request_id: str
    endpoint: str
    target: str
    request: Any  # the inbound body in the OpenAI shape
    answer: Any = None  # the OpenAI answer, or a stream's reassembly of one
    status: int = 200
    key: str | None = None
    stream: bool = False
    prompt: str | None = None
    latency_ms: float = 0.0
    created: float = field(default_factory=time.time)
    cut_short: bool = False
    cut_reason: str | None = None
    truncated: bool = False  # text past dataset.max_text was left out of the answer
    error: str | None = None
    tried: list[str] = field(default_factory=list)  # targets that failed before the one that answered
    dialect: Any = None  # the API it spoke, when relayed in another than OpenAI's (a backends.Dialect)
    conversation: str | None = None  # the conversation the client named (x-mooltiproxy-conversation)
    client: str = ""  # the client's address: only to tell a regeneration from a stranger's same opening; never recorded


class RecordOnly(dict[str, Any]):
    """A chunk for the dataset's record and not for the client: the stream's usage when the client did not ask for
    it (``stream_options.include_usage``). The recorder reads it; the proxy never sends it."""

    __slots__ = ()


def text_of(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return str(content)


def _arguments(function: dict[str, Any]) -> Any:
    """A tool call's arguments as an object (OpenAI sends them as a JSON string), or as sent if not JSON."""
    args = function.get("arguments")
    if isinstance(args, str):
        with contextlib.suppress(orjson.JSONDecodeError):
            return orjson.loads(args) if args.strip() else {}
    return args


def _call_value(calls: Sequence[dict[str, Any]]) -> str:
    """``function_call`` turns hold ``{"name", "arguments": {object}}``, a list of them for parallel calls."""
    out = [{"name": (c.get("function") or {}).get("name", ""), "arguments": _arguments(c.get("function") or {})} for c in calls]
    return orjson.dumps(out[0] if len(out) == 1 else out).decode()


_FROM = {"system": "system", "developer": "system", "user": "human", "tool": "observation", "function": "observation"}


def turns_of(message: dict[str, Any]) -> list[dict[str, str]]:
    """One OpenAI message as ShareGPT turns (an assistant message may give text and a function_call)."""
    role = message.get("role")
    content = message.get("content")
    text = content if isinstance(content, str) else text_of(content)
    speaker = _FROM.get(role)  # type: ignore[arg-type]
    if speaker is not None:
        return [{"from": speaker, "value": text}]
    if role == "assistant":
        turns = [{"from": "gpt", "value": text}] if text or not message.get("tool_calls") else []
        if message.get("tool_calls"):
            turns.append({"from": "function_call", "value": _call_value(message["tool_calls"])})
        return turns
    return [{"from": str(role), "value": text}]


# ------------------------------------------------------------------------------------------ threads


_SAME_ROLE = {"developer": "system", "function": "tool"}


def _canon(message: dict[str, Any]) -> bytes:
    """What makes two messages the same for threading. Not: whitespace at the ends (clients trim), how
    tool-call arguments were spaced, or a tool call's id."""
    return b"".join(_canon_parts(message))


def _canon_parts(message: dict[str, Any]) -> list[bytes | memoryview]:
    """``_canon(message)`` in parts, so that a long text is hashed where it lies rather than copied into one."""
    role = str(message.get("role"))
    role = _SAME_ROLE.get(role, role)
    content = message.get("content")
    text = content if isinstance(content, str) else text_of(content)
    if not message.get("tool_calls"):
        return [role.encode() + b"\x1f", _stripped_utf8(text)]  # most messages: no JSON to build
    calls = [[(c.get("function") or {}).get("name"), _arguments(c.get("function") or {})]
             for c in message["tool_calls"] if isinstance(c, dict)]
    return [role.encode() + b"\x1f" + orjson.dumps([text.strip(), calls], option=orjson.OPT_SORT_KEYS)]


_LONG = 64 * 1024  # characters: a text this long has its ends trimmed in place, not in a copy


def _stripped_utf8(text: str) -> bytes | memoryview:
    """``text.strip()`` in UTF-8. A long text (a 10 MB answer) is encoded once and its ends cut off as a view:
    ``strip`` and the concatenations around it cost as much again as hashing it (bench.micro --big)."""
    if len(text) < _LONG:
        return text.strip().encode("utf-8", "surrogatepass")
    end = len(text)
    while end and text[end - 1].isspace():  # the same characters ``strip`` takes (both ask Py_UNICODE_ISSPACE)
        end -= 1
    start = 0
    while start < end and text[start].isspace():
        start += 1
    data = text.encode("utf-8", "surrogatepass")
    if start == 0 and end == len(text):
        return data
    lead, trail = len(text[:start].encode()), len(text[end:].encode())  # whitespace: no surrogates to pass
    return memoryview(data)[lead:len(data) - trail]


def fingerprint(messages: Iterable[dict[str, Any]]) -> str:
    h = hashlib.sha256()
    for m in messages:
        h.update(_canon(m) + b"\n")
    return h.hexdigest()[:32]


def _fingerprints(sent: Sequence[dict[str, Any]]) -> tuple[bytes, str, list[str], bytes | None]:
    """One pass over a conversation: its canonical bytes (to extend with each answer), its turn
    fingerprint, the fingerprints of its beginnings that end with an assistant message, longest first, and the
    beginning of its records' tail (the leading system messages and the last message; None when it is all system).
    The same values ``fingerprint`` gives, in as few hash calls as there are fingerprints."""
    canons = [_canon(m) + b"\n" for m in sent]
    joined = b"".join(canons)
    keys = [_digest(b"".join(canons[: i + 1])) for i, m in enumerate(sent) if m.get("role") == "assistant"]
    system = _system_count(sent)
    tail = b"".join(canons[:system]) + canons[-1] if system < len(sent) else None
    return joined, _digest(joined), keys[::-1], tail


def _system_count(sent: Sequence[dict[str, Any]]) -> int:
    """How many system messages the conversation opens with."""
    start = 0
    while start < len(sent) and _SAME_ROLE.get(str(sent[start].get("role")), sent[start].get("role")) == "system":
        start += 1
    return start


def tail_lookup(sent: Sequence[dict[str, Any]]) -> str | None:
    """The ``tail`` of the record this request would continue if its client kept only the system prompt and the
    latest turns: the leading system messages, then the last assistant message and the turn before it."""
    start = _system_count(sent)
    last = max((i for i, m in enumerate(sent) if m.get("role") == "assistant"), default=-1)
    if last - 1 < start:
        return None
    return _digest(b"".join(_canon(m) + b"\n" for m in (*sent[:start], sent[last - 1], sent[last])))


def conversation_named(request: Any, header: str | None) -> str | None:
    """The conversation a client named: the header, else ``metadata.conversation_id`` (or ``conversation``) in the body."""
    if header:
        return header[:200]
    metadata = request.get("metadata") if isinstance(request, dict) else None
    if isinstance(metadata, dict):
        for name in ("conversation_id", "conversation"):
            value = metadata.get(name)
            if isinstance(value, str) and value:
                return value[:200]
    return None


def scope_of(key_name: Any, user: Any, conversation: Any) -> str:
    """What two records must share to be linked at all: the API key, the OpenAI ``user`` and the named conversation."""
    return f"{key_name or ''}\x00{user or ''}\x00{conversation or ''}"


def continuation_keys(messages: Sequence[dict[str, Any]]) -> list[str]:
    """Fingerprints of every beginning of ``messages`` that ends with an assistant message, longest first:
    the ``key`` of the record this request would continue."""
    return _fingerprints(messages)[2]


def _digest(*parts: bytes | memoryview) -> str:
    """The fingerprint of the parts joined (without joining them: an answer can be megabytes)."""
    h = hashlib.sha256()
    for part in parts:
        h.update(part)
    return h.hexdigest()[:32]


# ------------------------------------------------------------------------------------------ building


_ids = itertools.count()
_PROCESS = os.urandom(6).hex()  # with a counter: unique across processes and runs, without a system call per record


def new_id() -> str:
    return f"rec-{_PROCESS}{next(_ids):08x}"


def build(capture: Capture, session: str) -> list[dict[str, Any]]:
    """The records of one exchange: one per choice (one when it has no usable answer)."""
    return build_with_keys(capture, session)[0]


class Asked(NamedTuple):
    """What an exchange's request alone says about its records: enough to link it before its answer is read."""

    completion: bool
    sent: list[dict[str, Any]]  # the conversation as OpenAI messages
    head: list[dict[str, Any]]  # the same as the record's turns
    running: bytes  # its canonical bytes, which each answer's key extends
    turn: str
    continues: list[str]  # the keys of earlier records it may continue, longest first
    tail: bytes | None
    user: str | None
    conversation: str | None


def messages_sent(request: Any) -> list[dict[str, Any]]:
    """A chat request's messages, those that are objects."""
    messages = request.get("messages") if isinstance(request, dict) else None
    return [m for m in messages or () if isinstance(m, dict)]


def asked(capture: Capture) -> Asked:
    """The request's side of ``build_with_keys``."""
    request = capture.request if isinstance(capture.request, dict) else {}
    completion = capture.endpoint == COMPLETION or getattr(capture.dialect, "kind", "chat") == "completion"
    if completion:
        prompt = request.get("prompt")
        head = [{"from": "human", "value": prompt if isinstance(prompt, str) else text_of(prompt)}]
        sent: list[dict[str, Any]] = [{"role": "user", "content": head[0]["value"]}]
    else:
        sent = messages_sent(request)
        head = [t for m in sent for t in turns_of(m)]
    running, turn, continues, tail = _fingerprints(sent)
    user = request.get("user") if isinstance(request.get("user"), str) and request.get("user") else None
    return Asked(completion, sent, head, running, turn, [] if completion else continues, tail, user,
                 conversation_named(request, capture.conversation))


def build_with_keys(capture: Capture, session: str) -> tuple[list[dict[str, Any]], list[str]]:
    """The records, and the fingerprints (longest first) of the earlier exchanges this one may continue (the
    ``tail_lookup`` of the request is the recorder's to work out, when none of these is found)."""
    request = capture.request if isinstance(capture.request, dict) else {}
    answer = capture.answer if isinstance(capture.answer, dict) else {}
    choices = [c for c in answer.get("choices") or () if isinstance(c, dict)] or [{}]
    params = {k: v for k, v in request.items() if k in PARAMS}
    stamp = _second(int(capture.created)) + f".{int(capture.created * 1000) % 1000:03d}Z"
    completion, _, head, running, turn, continues, tail, user, conversation = asked(capture)
    tools = request.get("tools")
    tools_field = orjson.dumps([t.get("function", t) for t in tools if isinstance(t, dict)]).decode() if isinstance(tools, list) else "[]"
    records = []
    for choice in choices:
        message: dict[str, Any] = {"role": "assistant", "content": ""}
        if completion:
            message["content"] = choice.get("text", "")
        elif isinstance(choice.get("message"), dict):
            message = choice["message"]
        answered = (*_canon_parts(message), b"\n")
        key = _digest(running, *answered)
        meta = {
            "target": capture.target,
            "model": request.get("model") or answer.get("model"),
            "endpoint": capture.endpoint,
            "key_name": capture.key,
            "request_id": capture.request_id,
            "prompt": capture.prompt,
            "params": params,
            "usage": answer.get("usage"),
            "latency_ms": round(capture.latency_ms, 1),
            "status": capture.status,
            "stream": capture.stream,
            "created": stamp,
            "cut_short": capture.cut_short,
            "cut_reason": capture.cut_reason,
            **({"truncated": True} if capture.truncated else {}),
            "error": capture.error,
            "tried": capture.tried,
            "n": len(choices),
            "choice": choice.get("index", 0),
            "finish_reason": choice.get("finish_reason"),
            "reasoning": message.get("reasoning_content") or message.get("reasoning"),
            "turn": turn,
            "key": key,
            # A conversation of system messages and one turn ends as it begins: its tail is its key, hashed once.
            "tail": None if completion or tail is None else key if tail == running else _digest(tail, *answered),
            "conversation": conversation,
            "user": user,
            "parent": None,
            "thread": None,
            "alternative_of": None,
        }
        records.append({
            "id": new_id(),
            "session": session,
            "conversations": head + turns_of(message if message.get("role") == "assistant" else {**message, "role": "assistant"}),
            "tools": tools_field,
            "meta": meta,
        })
    return records, continues


@functools.lru_cache(maxsize=4)
def _second(seconds: int) -> str:
    """An ISO time to the second: the same for every record of that second, so formatted once."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


def sent_messages(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The OpenAI messages of a record's conversation, its answer included (for relinking threads offline)."""
    out: list[dict[str, Any]] = []
    for turn in record.get("conversations") or ():
        role = {"system": "system", "human": "user", "gpt": "assistant", "observation": "tool"}.get(turn.get("from"), "assistant")
        if turn.get("from") == "function_call":
            value = orjson.loads(turn["value"])
            calls = value if isinstance(value, list) else [value]
            message = {"role": "assistant", "content": "", "tool_calls": [
                {"function": {"name": c.get("name"), "arguments": orjson.dumps(c.get("arguments")).decode()}} for c in calls]}
            if out and out[-1]["role"] == "assistant" and not out[-1].get("tool_calls"):
                out[-1]["tool_calls"] = message["tool_calls"]
                continue
            out.append(message)
            continue
        out.append({"role": role, "content": turn.get("value", "")})
    return out


_REDACTED = "[REDACTED]"


def redact(record: dict[str, Any], patterns: Sequence[re.Pattern[str]]) -> dict[str, Any]:
    """Every string in the record with the patterns' matches replaced (ids and fingerprints excepted)."""
    if not patterns:
        return record

    def clean(value: Any, key: str = "") -> Any:
        if isinstance(value, str):
            if key in ("id", "session", "turn", "key", "tail", "parent", "thread", "alternative_of", "request_id"):
                return value
            for p in patterns:
                value = p.sub(_REDACTED, value)
            return value
        if isinstance(value, dict):
            return {k: clean(v, k) for k, v in value.items()}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value

    return clean(record)  # type: ignore[no-any-return]


# ------------------------------------------------------------------------------------------ odd records

MAX_DEPTH = 64  # JSON nested deeper than this inside a record that could not be written is kept as its text


def fit(value: Any, where: str, notes: list[str], depth: int = 0) -> Any:
    """``value`` made writable: containers nested deeper than ``MAX_DEPTH`` become their JSON text (orjson parses
    1024 levels but writes 254; a record must never be lost to a client's deep ``response_format``), anything
    JSON cannot hold becomes its ``repr``. Each change is noted under ``where``, the key path it happened at."""
    if isinstance(value, dict):
        if depth >= MAX_DEPTH:
            notes.append(f"{_short(where)} (nested deeper than {MAX_DEPTH} levels; kept as JSON text)")
            return json_text(value)
        return {str(k): fit(v, f"{where}.{k}" if where else str(k), notes, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        if depth >= MAX_DEPTH:
            notes.append(f"{_short(where)} (nested deeper than {MAX_DEPTH} levels; kept as JSON text)")
            return json_text(value)
        return [fit(v, f"{where}[{i}]", notes, depth + 1) for i, v in enumerate(value)]
    if value is None or isinstance(value, (str, bool, float)):
        return value
    if isinstance(value, int) and -(2**63) <= value < 2**64:
        return value
    notes.append(f"{_short(where)} ({type(value).__name__} that JSON cannot hold; kept as text)")
    return repr(value)


def _short(where: str) -> str:
    return where if len(where) <= 60 else where[:60] + "…"


def json_text(value: Any) -> str:
    """JSON text for any depth of nesting, built without recursion (the stack is the limit of both encoders)."""
    out: list[str] = []
    stack: list[Any] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, _Literal):
            out.append(item.text)
        elif isinstance(item, dict):
            out.append("{")
            parts: list[Any] = []
            for i, (k, v) in enumerate(item.items()):
                parts += [_Literal(("," if i else "") + orjson.dumps(str(k)).decode() + ":"), v]
            stack += [_Literal("}"), *reversed(parts)]
        elif isinstance(item, list):
            out.append("[")
            parts = []
            for i, v in enumerate(item):
                parts += ([_Literal(",")] if i else []) + [v]
            stack += [_Literal("]"), *reversed(parts)]
        else:
            try:
                out.append(orjson.dumps(item).decode())
            except TypeError:
                out.append(orjson.dumps(repr(item)).decode())
    return "".join(out)


class _Literal:
    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text
