"""Exports read by the trainers' own code: each format loaded with ``datasets`` as a trainer loads it, then handed to
TRL's data utilities or LLaMA-Factory's converters (tests/consumers.py), which must take every row whole."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mooltiproxy.dataset import exports
from mooltiproxy.dataset.exports import Selection
from mooltiproxy.dataset.reviews import Reviews
from mooltiproxy.dataset.store import Store

from .consumers import llamafactory_convert, trl_data_utils
from .dataset_kit import WEATHER, Recording, call, sample, user

Row = dict[str, Any]
SEARCH = {"type": "function", "function": {"name": "search", "description": "Search the web", "parameters": {
    "type": "object", "properties": {"query": {"type": ["string", "null"]}, "limit": {"type": "integer"}}}}}
# A chat template that shows every part TRL hands it: tools, roles, contents, calls.
TEMPLATE = ("{% if tools %}TOOLS {{ tools | tojson }}\n{% endif %}{% for m in messages %}<|{{ m['role'] }}|>"
            "{{ m['content'] or '' }}{% for c in (m['tool_calls'] or []) %}CALL {{ c['function']['name'] }} "
            "{{ c['function']['arguments'] }}{% endfor %}<|end|>\n{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """The curation tests' sample, a second tool with another schema (Arrow must not have to merge them), and a
    regenerated answer ranked against the first."""
    folder = tmp_path / "datasets"
    recorded = sample(folder)
    rec = Recording(folder, "s3")
    calling = {"role": "assistant", "content": None, "tool_calls": [call("search", {"query": "llamas", "limit": 3}, "c7")]}
    rec.chat([user("Find llamas")], calling, tools=[SEARCH])
    rec.chat([user("Find llamas"), calling, {"role": "tool", "tool_call_id": "c7", "content": "3 llamas found"}], "Three.",
             tools=[SEARCH, WEATHER])
    reviews = Reviews.beside(folder)
    reviews.set_ranks({recorded["a2"]["id"]: 1, recorded["a2b"]["id"]: 2})
    reviews.set_ranks({recorded["n1"]["id"]: 2, recorded["n2"]["id"]: 1})
    return folder


def exported(folder: Path, fmt: str, tmp_path: Path, **options: Any) -> list[Row]:
    """The export written to a file and loaded back with ``datasets``, as a trainer reads it."""
    import datasets

    rows, report = exports.export(Store(folder), Reviews.beside(folder), fmt, Selection(**options))
    assert rows, report.lines()
    path = tmp_path / f"{fmt}.jsonl"
    exports.write(path, rows)
    loaded = datasets.load_dataset("json", data_files=str(path), split="train", cache_dir=str(tmp_path / "hf"))
    assert loaded.num_rows == len(rows)
    return [dict(r) for r in loaded]


def tokenizer() -> Any:
    """A tokenizer with TEMPLATE as its chat template, made here (no model is downloaded)."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]")))
    tok.chat_template = TEMPLATE
    return tok


def test_sharegpt_rows_go_whole_through_llamafactorys_converter(folder: Path, tmp_path: Path) -> None:
    rows = exported(folder, "sharegpt", tmp_path, every_turn=True)
    info = {"file_name": "train.jsonl", "formatting": "sharegpt", "columns": {"messages": "conversations", "tools": "tools"}}
    converted = llamafactory_convert(info, rows)
    # LLaMA-Factory empties a row it cannot read, with a warning only: every one must come out with a prompt and an answer.
    assert all(c["_prompt"] and c["_response"] for c in converted), [r["id"] for r, c in zip(rows, converted, strict=True)
                                                                     if not c["_response"]]
    roles = {m["role"] for c in converted for m in c["_prompt"] + c["_response"]}
    assert {"function", "observation"} <= roles  # tool calls and results kept as LLaMA-Factory's own roles
    tools = [json.loads(c["_tools"]) for c in converted if c["_tools"] != "[]"]
    assert {t["name"] for ts in tools for t in ts} == {"weather", "search"}


def test_openai_rows_go_whole_through_llamafactorys_openai_converter(folder: Path, tmp_path: Path) -> None:
    rows = exported(folder, "openai", tmp_path, every_turn=True)
    info = {"file_name": "train.jsonl", "formatting": "openai", "columns": {"messages": "messages", "tools": "tools"},
            "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant",
                     "observation_tag": "tool", "function_tag": "function_call", "system_tag": "system"}}
    converted = llamafactory_convert(info, [{k: v for k, v in r.items() if v is not None} for r in rows])
    assert all(c["_prompt"] and c["_response"] for c in converted), [r["messages"] for r, c in zip(rows, converted, strict=True)
                                                                     if not c["_response"]]
    # an answer that is only a tool call (no text) is read too
    assert any(c["_response"][0]["role"] == "function" for c in converted)


def test_alpaca_history_reaches_llamafactorys_prompt(folder: Path, tmp_path: Path) -> None:
    rows = exported(folder, "alpaca", tmp_path)
    info = {"file_name": "train.jsonl", "columns": {"prompt": "instruction", "query": "input", "response": "output",
                                                     "system": "system", "history": "history"}}
    converted = llamafactory_convert(info, rows)
    assert [len(c["_prompt"]) for c in converted] == [2 * len(r["history"]) + 1 for r in rows]
    assert max(len(r["history"]) for r in rows) == 2  # the three-turn chat: its two earlier turns are there


def test_dpo_pairs_go_through_llamafactorys_ranking_converter(folder: Path, tmp_path: Path) -> None:
    rows = exported(folder, "dpo", tmp_path)
    info = {"file_name": "train.jsonl", "formatting": "sharegpt", "ranking": True,
            "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected", "tools": "tools"}}
    converted = llamafactory_convert(info, rows)
    assert len(converted) == 2 and all(c["_prompt"] and len(c["_response"]) == 2 for c in converted)
    assert {c["_response"][0]["content"] for c in converted} == {"second answer", "Three."}


def test_trl_rows_are_conversational_and_render_with_their_tools(folder: Path, tmp_path: Path) -> None:
    trl = trl_data_utils()
    tok = tokenizer()
    rows = exported(folder, "trl", tmp_path, every_turn=True)
    assert all(trl.is_conversational(r) for r in rows)
    texts = []
    for row in rows:
        tools = json.loads(row["tools"])  # as TRL's trainers decode the column
        text = trl.maybe_apply_chat_template({"messages": row["messages"]}, tok, tools=tools or None)["text"]
        assert all((m["content"] or "") in text for m in row["messages"])
        texts.append(text)
    # different tool schemas, each row with its own, none merged into another's
    assert any('"limit": {"type": "integer"}' in t and '"query": {"type": ["string", "null"]}' in t for t in texts)
    assert any("CALL search" in t for t in texts) and not any('"limit": null' in t for t in texts)


def test_trl_dpo_pairs_are_conversational_preference_rows(folder: Path, tmp_path: Path) -> None:
    trl = trl_data_utils()
    rows = exported(folder, "trl-dpo", tmp_path)
    assert len(rows) == 2
    for row in rows:
        assert trl.is_conversational(row)
        pair = {k: row[k] for k in ("prompt", "chosen", "rejected")}
        assert trl.maybe_extract_prompt(pair) == pair  # the prompt is already apart, as DPOTrainer wants it
        rendered = trl.maybe_apply_chat_template(pair, tokenizer())
        assert rendered["prompt"].endswith("<|assistant|>") and rendered["chosen"] != rendered["rejected"]
    assert {row["chosen"][0]["content"] for row in rows} == {"second answer", "Three."}


def test_the_trainers_see_one_conversation_once(folder: Path, tmp_path: Path) -> None:
    """The default export gives each conversation once, as far as it went: what TRL trains on, row for row."""
    rows = exported(folder, "trl", tmp_path)
    firsts = [r["messages"][1]["content"] if r["messages"][0]["role"] == "system" else r["messages"][0]["content"] for r in rows]
    assert len(firsts) == len(set(firsts))  # no conversation twice (the n=2 request: one of its answers)
    three = next(r for r in rows if any(m["content"] == "three" for m in r["messages"]))
    assert [m["content"] for m in three["messages"] if m["role"] == "assistant"] == ["first answer", "second answer", "third answer"]
