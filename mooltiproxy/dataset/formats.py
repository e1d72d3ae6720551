"""How one reviewed record becomes a row of each export format, and why a record cannot.

A record's conversation is what the client sent followed by the answer; a reviewer's edited answer
takes the place of the recorded one. Each format has rules the raw conversation may not follow, so
some turns are merged first (the same way for every format that needs it):

- system messages at the start become one system prompt; a system message later in the chat (an
  author's note, post-history instructions) joins the user turn next to it (the next one, else the one
  before); with no user turn beside it the record is left out;
- consecutive user turns are joined by a blank line; an answer that follows an assistant message the
  client sent last (a prefill, "continue") continues that message and is joined to it with nothing
  between; other consecutive assistant turns are joined by a blank line;
- text an assistant said alongside a tool call is dropped in sharegpt, alpaca and dpo (their
  ``function_call`` turn holds only the call) and kept in openai (an assistant message has both);
- consecutive tool results (parallel calls) become one ``observation`` whose value is a JSON list of
  the results, in order, each as JSON when it parses, else as the string;
- an assistant turn that opens the chat (a character's greeting) gets an empty user turn before it.

What is still out of shape is ``Unfit``: the record is left out of the export, with the sentence (an
empty answer; a tool call with no result after it, or a result that answers no call; two tool calls in
a row; a system message with no user turn beside it; a role no format knows; alpaca: any tool turn; dpo:
a prompt that ends on the assistant's side, or two answers that read the same). Reasoning content
(``meta.reasoning``) is not exported: it is kept apart from the answer in the capture.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from .records import fingerprint, sent_messages
from .reviews import Review

Turn = dict[str, str]

TEXT_BESIDE_CALL = "text said alongside a tool call was left out (a function_call turn holds only the call)"
EMPTY_OPENING = "an empty user turn was put before the assistant's opening message"
JOINED_RESULTS = "consecutive tool results were joined into one observation (a JSON list)"
JOINED_USERS = "consecutive user turns were joined"
MOVED_SYSTEM = "a system message inside the chat was joined to a user turn"


class Unfit(Exception):
    """A record that would break the format; the message is the sentence the report shows."""


@dataclass(frozen=True)
class Aligned:
    system: str
    turns: list[Turn]


# ------------------------------------------------------------------------------------- the answer


def answer_start(record: dict[str, Any]) -> int:
    """Where the answer begins in the record's conversation: the last turn, or the last two when the model
    said something and then called tools. A ``gpt`` turn before a final ``function_call`` may also be the
    end of the conversation sent; the record's ``turn`` fingerprint tells which."""
    conversation = record.get("conversations") or []
    n = len(conversation)
    answer_turns = record.get("answer_turns")
    if isinstance(answer_turns, int):  # an export's working copy says it (its history was made whole)
        return max(n - answer_turns, 0)
    if n >= 2 and conversation[-1].get("from") == "function_call" and conversation[-2].get("from") == "gpt":
        turn = (record.get("meta") or {}).get("turn")
        if turn and fingerprint(sent_messages({"conversations": conversation[: n - 1]})) == turn:
            return n - 1
        return n - 2
    return max(n - 1, 0)


def reviewed(record: dict[str, Any], review: Review | None) -> tuple[list[Turn], int]:
    """The record's conversation with the reviewer's edited answer in place, and where the answer begins."""
    conversation = record.get("conversations")
    if not isinstance(conversation, list) or not conversation:
        raise Unfit("it has no conversation")
    for i, turn in enumerate(conversation, 1):
        if not isinstance(turn, dict) or not isinstance(turn.get("from"), str) or not isinstance(turn.get("value"), str):
            raise Unfit(f"turn {i} is not a {{from, value}} pair of strings")
    start = answer_start(record)
    turns: list[Turn] = [{"from": t["from"], "value": t["value"]} for t in conversation]
    if review is not None and review.answer is not None:
        turns = turns[:start] + [dict(t) for t in review.answer]
    if turns[start]["from"] not in ("gpt", "function_call"):
        raise Unfit("it has no answer")
    if all(t["from"] == "gpt" and not t["value"].strip() for t in turns[start:]):
        raise Unfit("the answer is empty")
    return turns, start


def tools_string(record: dict[str, Any]) -> str:
    """The record's tool definitions as the JSON string sharegpt wants ('[]' when none)."""
    return orjson.dumps(_tools(record)).decode()


def _tools(record: dict[str, Any]) -> list[dict[str, Any]]:
    raw = record.get("tools")
    if raw in (None, "", "[]"):
        return []
    try:
        tools = orjson.loads(raw) if isinstance(raw, str) else raw
    except orjson.JSONDecodeError:
        tools = None
    if not isinstance(tools, list) or not all(isinstance(t, dict) and isinstance(t.get("name"), str) for t in tools):
        raise Unfit("its tools field is not a JSON list of functions with names")
    return tools


def _calls(value: str, at: int) -> list[dict[str, Any]]:
    try:
        call = orjson.loads(value)
    except orjson.JSONDecodeError:
        raise Unfit(f"the tool call at turn {at} is not JSON") from None
    calls = call if isinstance(call, list) else [call]
    if not calls or not all(isinstance(c, dict) and isinstance(c.get("name"), str) for c in calls):
        raise Unfit(f"the tool call at turn {at} has no function name")
    return calls


# ------------------------------------------------------------------------------------- alignment


def align(conversation: Sequence[Turn], answer_at: int | None, notes: set[str]) -> Aligned:
    """The conversation merged into ShareGPT's shape (see the module's rules): a system prompt, then turns
    alternating user-or-tool-result / assistant-or-tool-call. ``answer_at`` is where the answer begins;
    None for a prompt without its answer (a preference pair's), which must then end on the user's side."""
    n = len(conversation)
    i = 0
    systems: list[str] = []
    while i < n and conversation[i]["from"] == "system":
        systems.append(conversation[i]["value"])
        i += 1
    out: list[dict[str, Any]] = []  # turns being built; "at" is the 1-based turn they came from, for sentences
    carry: list[str] = []  # system text waiting for the next user turn
    for j in range(i, n):
        role, value = conversation[j]["from"], conversation[j]["value"]
        if role == "system":
            following = conversation[j + 1]["from"] if j + 1 < n else None
            if following in ("system", "human"):
                carry.append(value)
            elif out and out[-1]["from"] == "human":
                out[-1]["value"] = "\n\n".join([out[-1]["value"], *carry, value])
                carry = []
            else:
                raise Unfit(f"the system message at turn {j + 1} has no user turn beside it to join")
            notes.add(MOVED_SYSTEM)
            continue
        last = out[-1] if out else None
        if role == "human":
            value = "\n\n".join([*carry, value])
            carry = []
            if last is not None and last["from"] == "human":
                last["value"] += "\n\n" + value
                notes.add(JOINED_USERS)
            else:
                out.append({"from": "human", "value": value, "at": j + 1})
        elif role == "observation":
            if last is not None and last["from"] == "observation":
                last["parts"].append(value)
            else:
                out.append({"from": "observation", "value": value, "parts": [value], "at": j + 1})
        elif role == "gpt":
            if last is not None and last["from"] == "gpt":
                last["value"] += ("" if j == answer_at else "\n\n") + value
            else:
                out.append({"from": "gpt", "value": value, "at": j + 1})
        elif role == "function_call":
            _calls(value, j + 1)
            if last is not None and last["from"] == "function_call":
                raise Unfit(f"the tool call at turn {j + 1} follows another tool call with no tool result between them")
            if last is not None and last["from"] == "gpt" and out.pop()["value"].strip():
                notes.add(TEXT_BESIDE_CALL)
            out.append({"from": "function_call", "value": value, "at": j + 1})
        else:
            raise Unfit(f"turn {j + 1} has the role {role!r}, which no export format knows")
    if out and out[0]["from"] in ("gpt", "function_call"):
        out.insert(0, {"from": "human", "value": "", "at": out[0]["at"]})
        notes.add(EMPTY_OPENING)
    for turn in out:
        if turn["from"] == "observation" and len(turn["parts"]) > 1:
            turn["value"] = orjson.dumps([_json_or_text(p) for p in turn["parts"]]).decode()
            notes.add(JOINED_RESULTS)
    _check_alternation(out, answer_at is None)
    return Aligned(system="\n\n".join(s for s in systems if s), turns=[{"from": t["from"], "value": t["value"]} for t in out])


def _check_alternation(turns: list[dict[str, Any]], prompt_only: bool) -> None:
    if not turns:
        raise Unfit("it has no user turn")
    for k, turn in enumerate(turns):
        role, before = turn["from"], turns[k - 1]["from"] if k else None
        if role == "observation" and before != "function_call":
            raise Unfit(f"the tool result at turn {turn['at']} answers no tool call")
        if before == "function_call" and role != "observation":
            raise Unfit(f"the tool call before turn {turn['at']} has no tool result after it")
        if (k % 2 == 0) != (role in ("human", "observation")):
            raise Unfit(f"a {_NAMES[role]} at turn {turn['at']} follows a {_NAMES[str(before)]}, with no turn of the other side between")
    ends_with_user = turns[-1]["from"] in ("human", "observation")
    if prompt_only and not ends_with_user:
        raise Unfit("the conversation sent ends with an assistant message (a prefill); a preference pair needs it to end with "
                    "the user or a tool result")
    if not prompt_only and ends_with_user:
        raise Unfit("it has no answer")


_NAMES = {"human": "user turn", "gpt": "assistant turn", "function_call": "tool call", "observation": "tool result", "None": "start"}


def _json_or_text(value: str) -> Any:
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError:
        return value


def _with_system(aligned: Aligned) -> list[Turn]:
    return ([{"from": "system", "value": aligned.system}] if aligned.system else []) + aligned.turns


# ------------------------------------------------------------------------------------- formats


def sharegpt(record: dict[str, Any], review: Review | None, notes: set[str]) -> dict[str, Any]:
    """``{"id", "conversations": [{"from", "value"}...], "tools": "<JSON string>"}``, the system prompt as the first turn."""
    conversation, start = reviewed(record, review)
    return {"id": record["id"], "conversations": _with_system(align(conversation, start, notes)), "tools": tools_string(record)}


def alpaca(record: dict[str, Any], review: Review | None, notes: set[str]) -> dict[str, Any]:
    """``{"id", "instruction", "input", "output", "system", "history": [[user, assistant], ...]}``."""
    conversation, start = reviewed(record, review)
    aligned = align(conversation, start, notes)
    if any(t["from"] in ("function_call", "observation") for t in aligned.turns):
        raise Unfit("alpaca has no place for tool calls or tool results (export it as sharegpt or openai)")
    pairs = [[aligned.turns[k]["value"], aligned.turns[k + 1]["value"]] for k in range(0, len(aligned.turns), 2)]
    *history, (instruction, output) = pairs
    return {"id": record["id"], "instruction": instruction, "input": "", "output": output, "system": aligned.system, "history": history}


def openai(record: dict[str, Any], review: Review | None, notes: set[str]) -> dict[str, Any]:
    """``{"messages": [...], "tools": [...]}`` as OpenAI fine-tuning reads it: tool calls with ids and JSON-string
    arguments, each tool result carrying the id of the call it answers (ids are made up: records keep none)."""
    conversation, start = reviewed(record, review)
    row: dict[str, Any] = {"messages": _messages(conversation, start, notes)}
    tools = _tools(record)
    if tools:
        row["tools"] = [{"type": "function", "function": function} for function in tools]
    return row


def trl(record: dict[str, Any], review: Review | None, notes: set[str]) -> dict[str, Any]:
    """TRL's conversational SFT row (and axolotl's ``chat_template`` one): ``{"messages": [...], "tools": "<JSON>"}``, the
    messages as in ``openai``; the tools as JSON text, which TRL's trainers decode, so rows whose tool schemas differ
    still load in ``datasets`` (as objects, Arrow would merge the schemas or refuse them)."""
    conversation, start = reviewed(record, review)
    return {"messages": _messages(conversation, start, notes), "tools": _tools_text(record)}


def _tools_text(record: dict[str, Any]) -> str:
    return orjson.dumps([{"type": "function", "function": function} for function in _tools(record)]).decode()


def _tidy(conversation: list[Turn], start: int, notes: set[str]) -> tuple[list[Turn], int]:
    """The turns the message formats cannot carry as they are, merged as the module's rules say (leading system
    messages into one, a system message inside the chat into the user turn beside it, consecutive user turns into
    one, an empty user turn before an opening assistant message); the rest, text beside a tool call included, as
    recorded. And where the answer now starts."""
    out: list[Turn] = []
    answer_at = start
    carry: list[str] = []
    n = len(conversation)
    for j, turn in enumerate(conversation):
        role, value = turn["from"], turn["value"]
        if j == start:
            answer_at = len(out)
        if role == "system":
            if out and all(t["from"] == "system" for t in out) and not carry:
                out[0] = {"from": "system", "value": out[0]["value"] + "\n\n" + value}
                continue
            if not out:
                out.append({"from": "system", "value": value})
                continue
            following = conversation[j + 1]["from"] if j + 1 < n else None
            if following in ("system", "human") and j + 1 < start:
                carry.append(value)
            elif out[-1]["from"] == "human":
                out[-1] = {"from": "human", "value": "\n\n".join([out[-1]["value"], *carry, value])}
                carry = []
            else:
                raise Unfit(f"the system message at turn {j + 1} has no user turn beside it to join")
            notes.add(MOVED_SYSTEM)
            continue
        if role == "human":
            value = "\n\n".join([*carry, value])
            carry = []
            if out and out[-1]["from"] == "human":
                out[-1] = {"from": "human", "value": out[-1]["value"] + "\n\n" + value}
                notes.add(JOINED_USERS)
                continue
        elif role in ("gpt", "function_call") and all(t["from"] == "system" for t in out):
            out.append({"from": "human", "value": ""})
            notes.add(EMPTY_OPENING)
            if j == start:
                answer_at = len(out)
        out.append({"from": role, "value": value})
    return out, answer_at


def _messages(conversation: list[Turn], start: int, notes: set[str] | None = None) -> list[dict[str, Any]]:
    """The conversation as OpenAI messages; the answer (from ``start``) continues an assistant message sent last."""
    conversation, start = _tidy(conversation, start, notes if notes is not None else set())
    messages: list[dict[str, Any]] = []
    pending: list[str] = []  # ids of the calls still waiting for their result
    called_at = 0
    made = 0
    for j, turn in enumerate(conversation):
        role, value = turn["from"], turn["value"]
        if pending and role != "observation":
            raise Unfit(f"the tool call at turn {called_at} has {len(pending)} call(s) with no tool result")
        last = messages[-1] if messages else None
        if role == "system":
            messages.append({"role": "system", "content": value})
        elif role == "human":
            messages.append({"role": "user", "content": value})
        elif role == "gpt":
            if j == start and last is not None and last["role"] == "assistant" and "tool_calls" not in last:
                last["content"] += value  # the answer continues the assistant message the client sent last
            else:
                messages.append({"role": "assistant", "content": value})
        elif role == "function_call":
            calls: list[dict[str, Any]] = []
            for call in _calls(value, j + 1):
                made += 1
                arguments = call.get("arguments")
                if not isinstance(arguments, str):  # records hold arguments as an object; OpenAI wants its JSON text
                    arguments = orjson.dumps(arguments if arguments is not None else {}).decode()
                calls.append({"id": f"call_{made}", "type": "function", "function": {"name": call["name"], "arguments": arguments}})
            if j and conversation[j - 1]["from"] == "gpt" and last is not None and last["role"] == "assistant" and "tool_calls" not in last:
                last["tool_calls"] = calls  # the text said alongside the call: one assistant message
            else:
                # content "" rather than none at all: LLaMA-Factory's openai loader reads every message's content
                messages.append({"role": "assistant", "content": "", "tool_calls": calls})
            pending = [c["id"] for c in calls]
            called_at = j + 1
        elif role == "observation":
            if not pending:
                raise Unfit(f"the tool result at turn {j + 1} answers no tool call")
            messages.append({"role": "tool", "tool_call_id": pending.pop(0), "content": value})
        else:
            raise Unfit(f"turn {j + 1} has the role {role!r}, which no export format knows")
    return messages


def dpo(chosen: tuple[dict[str, Any], Review | None], rejected: tuple[dict[str, Any], Review | None], notes: set[str]) -> dict[str, Any]:
    """LLaMA-Factory's sharegpt preference row: ``{"conversations": prompt, "chosen": {"from", "value"},
    "rejected": {...}, "tools", "chosen_id", "rejected_id"}``, from two alternatives of one turn."""
    conversation, start = reviewed(*chosen)
    other, other_start = reviewed(*rejected)
    prompt = align(conversation[:start], None, notes)
    better, worse = _one_turn(conversation, start, notes), _one_turn(other, other_start, notes)
    if better == worse:
        raise Unfit(f"its answer reads the same as that of {rejected[0]['id']}")
    return {"conversations": _with_system(prompt), "chosen": better, "rejected": worse, "tools": tools_string(chosen[0]),
            "chosen_id": chosen[0]["id"], "rejected_id": rejected[0]["id"]}


def trl_dpo(chosen: tuple[dict[str, Any], Review | None], rejected: tuple[dict[str, Any], Review | None],
            notes: set[str]) -> dict[str, Any]:
    """TRL's conversational preference row: ``{"prompt": [messages], "chosen": [messages], "rejected": [messages],
    "tools": "<JSON>", "chosen_id", "rejected_id"}``, from two alternatives of one turn."""
    conversation, start = reviewed(*chosen)
    other, other_start = reviewed(*rejected)
    align(conversation[:start], None, notes)  # the prompt must end on the user's side, as for dpo
    prompt = _messages(conversation[:start], start)
    better, worse = _messages(conversation, start)[len(prompt):], _messages(other, other_start)[len(prompt):]
    if better == worse:
        raise Unfit(f"its answer reads the same as that of {rejected[0]['id']}")
    return {"prompt": prompt, "chosen": better, "rejected": worse, "tools": _tools_text(chosen[0]),
            "chosen_id": chosen[0]["id"], "rejected_id": rejected[0]["id"]}


def _one_turn(conversation: list[Turn], start: int, notes: set[str]) -> Turn:
    """An answer as one turn: a function_call drops the text said alongside it."""
    answer = conversation[start:]
    if answer[-1]["from"] == "function_call":
        _calls(answer[-1]["value"], len(conversation))
        if len(answer) > 1 and answer[0]["value"].strip():
            notes.add(TEXT_BESIDE_CALL)
        return dict(answer[-1])
    return {"from": "gpt", "value": "".join(t["value"] for t in answer)}
