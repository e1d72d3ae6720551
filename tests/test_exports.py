"""Curating the dataset: reviews, the export formats checked against their own rules (and loaded with
``datasets`` when it is installed), export options, stats, the ``dataset`` command, and one end-to-end
export of exchanges recorded through the running proxy."""

from __future__ import annotations

import argparse
import json
import multiprocessing
import time
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest

from mooltiproxy.cli.dataset import add_commands
from mooltiproxy.dataset import exports
from mooltiproxy.dataset.exports import Selection
from mooltiproxy.dataset.formats import TEXT_BESIDE_CALL, answer_start
from mooltiproxy.dataset.reviews import Review, Reviews
from mooltiproxy.dataset.sinks import read_jsonl
from mooltiproxy.dataset.store import Filter, Store

from .conftest import KEY, ProxyFactory
from .dataset_kit import WEATHER, Recording, assistant, call, sample, user
from .stubs.openai_upstream import OpenAIStub

Row = dict[str, Any]


# ------------------------------------------------------------------------------------- the formats' rules


def check_sharegpt_turns(turns: list[Row], *, prompt_only: bool = False) -> None:
    """LLaMA-Factory's rules: an optional system turn first, then human/observation at odd positions and
    gpt/function_call at even ones; an observation answers a function_call; ends with the assistant (SFT)
    or with the user's side (a preference pair's prompt)."""
    assert all(set(t) == {"from", "value"} and isinstance(t["value"], str) for t in turns), turns
    if turns and turns[0]["from"] == "system":
        turns = turns[1:]
    assert turns, "no turn after the system prompt"
    for i, turn in enumerate(turns):
        side = ("human", "observation") if i % 2 == 0 else ("gpt", "function_call")
        assert turn["from"] in side, f"turn {i}: {turn['from']} where {side} belongs: {turns}"
        if turn["from"] == "observation":
            assert turns[i - 1]["from"] == "function_call"
        if turn["from"] == "function_call":
            value = json.loads(turn["value"])
            calls = value if isinstance(value, list) else [value]
            assert all(isinstance(c["name"], str) and isinstance(c["arguments"], dict) for c in calls)
            assert i == len(turns) - 1 or turns[i + 1]["from"] == "observation"
    assert len(turns) % 2 == (1 if prompt_only else 0), turns


def check_sharegpt(row: Row) -> None:
    assert set(row) == {"id", "conversations", "tools"}
    assert isinstance(json.loads(row["tools"]), list)
    check_sharegpt_turns(row["conversations"])


def check_openai(row: Row) -> None:
    """OpenAI fine-tuning: messages of known roles; tool calls with ids and JSON-string arguments, each answered
    by a tool message before the next message; the last message is the assistant's."""
    assert set(row) <= {"messages", "tools"} and row["messages"]
    waiting: list[str] = []
    for m in row["messages"]:
        assert m["role"] in ("system", "user", "assistant", "tool")
        if waiting:
            assert m["role"] == "tool", f"a call is unanswered before {m}"
        if m["role"] == "tool":
            assert m["tool_call_id"] == waiting.pop(0) and isinstance(m["content"], str)
        elif m["role"] == "assistant" and "tool_calls" in m:
            for c in m["tool_calls"]:
                assert c["type"] == "function" and isinstance(c["id"], str) and isinstance(c["function"]["name"], str)
                assert isinstance(c["function"]["arguments"], str) and isinstance(json.loads(c["function"]["arguments"]), dict)
                waiting.append(c["id"])
            assert set(m) <= {"role", "content", "tool_calls"}
        else:
            assert set(m) == {"role", "content"} and isinstance(m["content"], str)
    assert row["messages"][-1]["role"] == "assistant"
    for tool in row.get("tools", []):
        assert tool["type"] == "function" and isinstance(tool["function"]["name"], str)


def check_alpaca(row: Row) -> None:
    assert set(row) == {"id", "instruction", "input", "output", "system", "history"}
    assert all(isinstance(row[k], str) for k in ("instruction", "input", "output", "system"))
    assert row["output"].strip()
    assert all(len(pair) == 2 and all(isinstance(x, str) for x in pair) for pair in row["history"])


def check_dpo(row: Row) -> None:
    assert set(row) == {"conversations", "chosen", "rejected", "tools", "chosen_id", "rejected_id"}
    check_sharegpt_turns(row["conversations"], prompt_only=True)
    for side in ("chosen", "rejected"):
        assert set(row[side]) == {"from", "value"} and row[side]["from"] in ("gpt", "function_call")
    assert row["chosen"] != row["rejected"]


def check_trl(row: Row) -> None:
    assert set(row) == {"messages", "tools"} and isinstance(json.loads(row["tools"]), list)
    check_openai({"messages": row["messages"]})


def check_trl_dpo(row: Row) -> None:
    assert set(row) == {"prompt", "chosen", "rejected", "tools", "chosen_id", "rejected_id"}
    assert row["prompt"][-1]["role"] in ("user", "tool") and isinstance(json.loads(row["tools"]), list)
    for side in ("chosen", "rejected"):
        assert row[side] and all(m["role"] == "assistant" for m in row[side])
    assert row["chosen"] != row["rejected"]


CHECKS = {"sharegpt": check_sharegpt, "openai": check_openai, "trl": check_trl, "alpaca": check_alpaca, "dpo": check_dpo,
          "trl-dpo": check_trl_dpo}


def shape(value: Any) -> Any:
    """A value's type, recursively (dict keys that vary between rows are allowed; a key's type is not)."""
    if isinstance(value, dict):
        return "dict"
    if isinstance(value, list):
        return "list"
    return type(value).__name__


def check_stable_types(out: list[Row]) -> None:
    """Every field keeps one type on every row, as Arrow needs (nested lists of dicts included)."""
    seen: dict[str, str] = {}

    def walk(value: Any, path: str) -> None:
        if value is None:
            return
        assert seen.setdefault(path, shape(value)) == shape(value), f"{path} is a {shape(value)} here and a {seen[path]} elsewhere"
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{path}.{k}")
        elif isinstance(value, list):
            for v in value:
                walk(v, f"{path}[]")

    for row in out:
        walk(row, "")


def load_with_datasets(path: Path, cache: Path) -> Any:
    datasets = pytest.importorskip("datasets")
    return datasets.load_dataset("json", data_files=str(path), split="train", cache_dir=str(cache))


# ------------------------------------------------------------------------------------- fixtures


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return tmp_path / "datasets"


@pytest.fixture
def recorded(folder: Path) -> dict[str, Row]:
    return sample(folder)


def export(folder: Path, fmt: str, **options: Any) -> tuple[list[Row], exports.Report]:
    """An export of the folder; a row per record unless ``every_turn=False`` says otherwise (the formats are checked on
    every record; which records a default export takes is tested apart)."""
    where = options.pop("where", Filter())
    options.setdefault("every_turn", True)
    return exports.export(Store(folder), Reviews.beside(folder), fmt, Selection(where=where, **options))


def by_id(out: list[Row]) -> dict[str, Row]:
    return {row["id"]: row for row in out}


# ------------------------------------------------------------------------------------- each format


@pytest.mark.parametrize("fmt", exports.FORMATS)
def test_every_format_follows_its_rules_and_loads_with_datasets(fmt: str, folder: Path, recorded: dict[str, Row], tmp_path: Path) -> None:
    reviews = Reviews.beside(folder)
    reviews.set_ranks({recorded["a2"]["id"]: 1, recorded["a2b"]["id"]: 2})
    reviews.set_status(recorded["n1"]["id"], "accepted")
    reviews.set_status(recorded["n2"]["id"], "rejected")
    out, report = export(folder, fmt)
    assert out and report.written == len(out)
    for row in out:
        CHECKS[fmt](row)
    check_stable_types(out)
    path = tmp_path / f"{fmt}.jsonl"
    exports.write(path, out)
    assert [json.loads(line) for line in path.read_text().splitlines()] == out
    if fmt not in exports.PAIRS:
        assert report.skipped[exports.ERROR] == 1 and report.skipped[exports.CUT_SHORT] == 1
    loaded = load_with_datasets(path, tmp_path / "hf-cache")
    assert loaded.num_rows == len(out)
    assert {"sharegpt": "conversations", "openai": "messages", "trl": "messages", "alpaca": "instruction", "dpo": "chosen",
            "trl-dpo": "prompt"}[fmt] in loaded.column_names


def test_sharegpt_merges_what_its_alternation_cannot_hold(folder: Path, recorded: dict[str, Row]) -> None:
    out, report = export(folder, "sharegpt")
    rows = by_id(out)
    # Parallel calls: the call list in one turn, the results as one JSON list, the text beside the calls dropped.
    assert rows[recorded["t2"]["id"]]["conversations"] == [
        {"from": "human", "value": "Weather in Paris and Rome?"},
        {"from": "function_call",
         "value": '[{"name":"weather","arguments":{"city":"Paris"}},{"name":"weather","arguments":{"city":"Rome"}}]'},
        {"from": "observation", "value": '[{"temp":20},"25 degrees"]'},
        {"from": "gpt", "value": "Paris 20, Rome 25."},
    ]
    assert json.loads(rows[recorded["t2"]["id"]]["tools"]) == [WEATHER["function"]]
    assert report.notes[TEXT_BESIDE_CALL] == 2
    # A character's greeting opens the chat; system notes inside the chat join the user turn beside them.
    assert rows[recorded["st"]["id"]]["conversations"] == [
        {"from": "system", "value": "You are Bob."},
        {"from": "human", "value": ""},
        {"from": "gpt", "value": "Hi, I'm Bob!"},
        {"from": "human", "value": "[Be terse.]\n\nhello\n\n[Stay in character.]"},
        {"from": "gpt", "value": "Hey."},
    ]
    # An answer to a prefill continues it; a completion is a prompt and its continuation.
    assert rows[recorded["pre"]["id"]]["conversations"][-1] == {"from": "gpt", "value": "Autumn leaves fall"}
    assert rows[recorded["p1"]["id"]]["conversations"] == [{"from": "human", "value": "Once upon"}, {"from": "gpt", "value": " a time"}]
    # What cannot be fixed is left out, with the record's id and why.
    assert report.left_out == [(recorded["broken"]["id"], "the tool call before turn 3 has no tool result after it")]
    assert recorded["cut"]["id"] not in rows and recorded["err"]["id"] not in rows


def test_openai_keeps_tool_calls_with_ids_and_json_arguments(folder: Path, recorded: dict[str, Row]) -> None:
    out, report = export(folder, "openai")
    (row,) = [r for r in out if "tools" in r and len(r["messages"]) == 5]
    assert row["messages"][1] == {"role": "assistant", "content": "Let me look.", "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Paris"}'}},
        {"id": "call_2", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Rome"}'}}]}
    assert row["messages"][2:4] == [{"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 20}'},
                                    {"role": "tool", "tool_call_id": "call_2", "content": "25 degrees"}]
    assert row["tools"] == [WEATHER]
    assert report.left_out == [(recorded["broken"]["id"], "the tool call at turn 2 has 1 call(s) with no tool result")]


def test_alpaca_pairs_the_history_and_leaves_tool_chats_out(folder: Path, recorded: dict[str, Row]) -> None:
    out, report = export(folder, "alpaca")
    assert by_id(out)[recorded["a3"]["id"]] == {"id": recorded["a3"]["id"], "instruction": "three", "input": "", "output": "third answer",
                                                "system": "Be nice.", "history": [["one", "first answer"], ["two", "second answer"]]}
    reasons = dict(report.left_out)
    assert reasons[recorded["t1"]["id"]] == "alpaca has no place for tool calls or tool results (export it as sharegpt or openai)"
    assert recorded["t2"]["id"] in reasons


def test_dpo_pairs_come_from_alternatives_a_reviewer_put_in_order(folder: Path, recorded: dict[str, Row]) -> None:
    reviews = Reviews.beside(folder)
    out, report = export(folder, "dpo")
    assert out == [] and report.skipped[exports.UNRANKED] == 3
    reviews.set_ranks({recorded["a2"]["id"]: 2, recorded["a2b"]["id"]: 1})
    reviews.set_status(recorded["n1"]["id"], "rejected")
    reviews.set_status(recorded["n2"]["id"], "accepted")
    reviews.set_answer(recorded["n2"]["id"], [{"from": "gpt", "value": "Three, as you asked."}])
    out, report = export(folder, "dpo")
    pairs = {(r["chosen_id"], r["rejected_id"]): r for r in out}
    assert set(pairs) == {(recorded["a2b"]["id"], recorded["a2"]["id"]), (recorded["n2"]["id"], recorded["n1"]["id"])}
    first = pairs[(recorded["a2b"]["id"], recorded["a2"]["id"])]
    assert first["conversations"] == [{"from": "system", "value": "Be nice."}, {"from": "human", "value": "one"},
                                      {"from": "gpt", "value": "first answer"}, {"from": "human", "value": "two"}]
    assert first["chosen"] == {"from": "gpt", "value": "second answer, again"}
    assert first["rejected"] == {"from": "gpt", "value": "second answer"}
    assert pairs[(recorded["n2"]["id"], recorded["n1"]["id"])]["chosen"]["value"] == "Three, as you asked."
    # Equal ranks make no pair; --accepted-only wants the better answer accepted.
    reviews.set_ranks({recorded["a2"]["id"]: 1, recorded["a2b"]["id"]: 1})
    out, report = export(folder, "dpo", accepted_only=True)
    assert [(r["chosen_id"], r["rejected_id"]) for r in out] == [(recorded["n2"]["id"], recorded["n1"]["id"])]


def test_a_prefilled_prompt_makes_no_preference_pair(folder: Path) -> None:
    rec = Recording(folder)
    a, b = rec.chat([user("Write a haiku"), assistant("Autumn")], " leaves fall", " moon rises")
    Reviews.beside(folder).set_ranks({a["id"]: 1, b["id"]: 2})
    out, report = export(folder, "dpo")
    assert out == []
    assert report.left_out == [(f"{a['id']} over {b['id']}", "the conversation sent ends with an assistant message (a prefill); a "
                                "preference pair needs it to end with the user or a tool result")]


# ------------------------------------------------------------------------------------- reviews and options


def test_an_edited_answer_replaces_the_recorded_one_and_the_capture_is_untouched(folder: Path, recorded: dict[str, Row]) -> None:
    before = {p.name: p.read_bytes() for p in folder.glob("*.jsonl")}
    reviews = Reviews.beside(folder)
    reviews.set_answer(recorded["a3"]["id"], [{"from": "gpt", "value": "A better third answer."}])
    reviews.set_answer(recorded["t1"]["id"], [{"from": "gpt", "value": "Checking."},
                                              {"from": "function_call", "value": '{"name": "weather", "arguments": {"city": "Oslo"}}'}])
    sharegpt = by_id(export(folder, "sharegpt")[0])
    assert sharegpt[recorded["a3"]["id"]]["conversations"][-1] == {"from": "gpt", "value": "A better third answer."}
    assert sharegpt[recorded["t1"]["id"]]["conversations"][-1] == {"from": "function_call",
                                                                    "value": '{"name":"weather","arguments":{"city":"Oslo"}}'}
    openai_rows = export(folder, "openai")[0]
    assert {"role": "assistant", "content": "Checking.", "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Oslo"}'}}]} in \
        [r["messages"][-1] for r in openai_rows]
    reviews.set_answer(recorded["a3"]["id"], None)
    assert by_id(export(folder, "sharegpt")[0])[recorded["a3"]["id"]]["conversations"][-1]["value"] == "third answer"
    assert {p.name: p.read_bytes() for p in folder.glob("*.jsonl")} == before


def test_options_sessions_targets_dates_accepted_paths_cut_short(folder: Path, recorded: dict[str, Row]) -> None:
    def ids(fmt: str = "sharegpt", **options: Any) -> set[str]:
        return {r["id"] for r in export(folder, fmt, **options)[0]}

    everything = ids()
    assert ids(where=Filter(sessions=("s2",))) == {recorded[k]["id"] for k in ("p1", "st", "pre", "n1", "n2")}
    assert ids(where=Filter(targets=("other",))) == {recorded[k]["id"] for k in ("p1", "n1", "n2")}
    assert ids(where=Filter(since="2026-11-21T10:00:03", until="2026-11-21T10:00:05")) == {recorded[k]["id"] for k in ("a2b", "a3", "a1b")}
    assert ids(where=Filter(until="2026-11-20")) == set()
    assert recorded["cut"]["id"] in ids(include_cut_short=True) and recorded["cut"]["id"] not in everything
    reviews = Reviews.beside(folder)
    reviews.set_status([recorded["a2"]["id"], recorded["a3"]["id"]], "accepted")
    reviews.set_status(recorded["p1"]["id"], "rejected")
    assert ids(accepted_only=True) == {recorded["a2"]["id"], recorded["a3"]["id"]}
    assert recorded["p1"]["id"] not in ids()  # a rejected record is never exported
    # By default a row per conversation path: no earlier turn, and of the alternatives of a turn the one the chat went
    # on with (a2 over a2b, a1 over a1b), else one of them (the two choices of n1/n2).
    paths = ids(every_turn=False)
    assert paths - {recorded["n1"]["id"], recorded["n2"]["id"]} == {recorded[k]["id"] for k in ("a3", "t2", "st", "pre")}  # p1: rejected
    assert len(paths & {recorded["n1"]["id"], recorded["n2"]["id"]}) == 1
    assert ids(every_turn=False, accepted_only=True) == {recorded["a3"]["id"]}
    _, report = export(folder, "sharegpt", every_turn=False)
    assert report.skipped[exports.PREFIX] == 3 and report.skipped[exports.ALTERNATIVE] == 3  # a1 a2 t1; a2b a1b n2


def test_records_of_the_sqlite_sink_are_exported_too(folder: Path) -> None:
    from mooltiproxy.dataset.sinks import SqliteSink

    rec = Recording(folder / "scratch", "db-session")
    first = rec.chat([user("hi")], "hello")
    second = rec.chat([user("hi"), assistant("hello"), user("bye")], "goodbye")
    sink = SqliteSink(folder, "db-session")
    sink.open()
    sink.write(sink.encode([{**r, "meta": {**r["meta"], "thread": r["id"]}} for r in first + second]))
    sink.close()
    selection = Selection(where=Filter(sessions=("db-session",)))
    out, _ = exports.export(Store(folder), Reviews.beside(folder), "sharegpt", selection)
    assert [r["id"] for r in out] == [second[0]["id"]] and len(out[0]["conversations"]) == 4


def test_answer_start_tells_text_with_a_call_from_a_prefill(folder: Path) -> None:
    rec = Recording(folder)
    calling = {"role": "assistant", "content": "On it.", "tool_calls": [call("weather", {"city": "Rome"}, "c1")]}
    (with_text,) = rec.chat([user("Rome?")], calling)
    calls_only = {"role": "assistant", "content": None, "tool_calls": calling["tool_calls"]}
    (prefilled,) = rec.chat([user("Rome?"), assistant("On it.")], calls_only)
    roles = ["human", "gpt", "function_call"]
    assert [t["from"] for t in with_text["conversations"]] == [t["from"] for t in prefilled["conversations"]] == roles
    assert answer_start(with_text) == 1 and answer_start(prefilled) == 2


def test_stats_count_what_the_dataset_holds(folder: Path, recorded: dict[str, Row]) -> None:
    Reviews.beside(folder).set_status(recorded["a1"]["id"], "accepted")
    s = exports.stats(Store(folder).linked(), Reviews.beside(folder).all())
    assert s["records"] == 15 and s["sessions"] == {"s1": 9, "s2": 6} and s["targets"] == {"local": 12, "other": 3}
    assert s["statuses"] == {"200": 14, "500": 1}
    assert s["threads"] == 9 and s["turns_with_alternatives"] == 3 and s["cut_short"] == 1
    assert (s["accepted"], s["rejected"]) == (1, 0)
    # n1 and n2 are the two choices of one request: its usage counts once. 12 requests of 15 tokens, one of 5; the error has none.
    assert s["tokens"] == {"prompt": 12 * 10 + 2, "completion": 12 * 5 + 3, "total": 12 * 15 + 5}


def test_the_review_pages_numbers_are_the_exports(folder: Path, recorded: dict[str, Row]) -> None:
    """The review page counts from its catalog's entries, never the records' text: the same numbers."""
    from mooltiproxy.dataset import catalog

    reviews = Reviews.beside(folder)
    reviews.set_status(recorded["a1"]["id"], "accepted")
    reviews.set_status(recorded["a2"]["id"], "rejected")
    whole = exports.stats(Store(folder).linked(), reviews.all())
    snapshot = catalog.Catalog(Store(folder)).snapshot()
    page = catalog.stats(snapshot.entries, reviews.all(), threads=len(snapshot.threads))
    same = ("records", "sessions", "targets", "statuses", "threads", "turns_with_alternatives", "cut_short", "accepted",
            "rejected", "edited", "ranked", "first", "last")
    assert {k: page[k] for k in same} == {k: whole[k] for k in same}
    assert page["turns_with_alternatives"] == 3 and page["tokens"]["total"] == whole["tokens"]["total"]


def test_reviews_are_validated_and_kept_per_record(tmp_path: Path) -> None:
    reviews = Reviews(tmp_path / "r" / "reviews.db")
    assert reviews.all() == {} and not (tmp_path / "r").exists()  # reading creates nothing
    reviews.set_status("rec-1", "accepted")
    reviews.set_ranks({"rec-1": 2, "rec-2": 1})
    reviews.set_answer("rec-2", [{"from": "gpt", "value": "fixed"}])
    got = reviews.all()
    assert got["rec-1"].status == "accepted" and got["rec-1"].rank == 2 and got["rec-1"].answer is None
    assert got["rec-2"] == Review("rec-2", "none", ({"from": "gpt", "value": "fixed"},), 1, got["rec-2"].updated)
    with pytest.raises(ValueError, match="status"):
        reviews.set_status("rec-1", "great")
    with pytest.raises(ValueError, match="not valid JSON"):
        reviews.set_answer("rec-1", [{"from": "function_call", "value": "{nope"}])
    with pytest.raises(ValueError, match="empty"):
        reviews.set_answer("rec-1", [{"from": "gpt", "value": "  "}])
    with pytest.raises(ValueError, match="some text, a tool call"):
        reviews.set_answer("rec-1", [{"from": "function_call", "value": '{"name": "f"}'}, {"from": "gpt", "value": "x"}])
    with pytest.raises(ValueError, match="whole number"):
        reviews.set_ranks({"rec-1": 0})


def _review_many(path: str, worker: int) -> None:
    reviews = Reviews(Path(path))
    for i in range(40):
        reviews.set_status(f"rec-{worker}-{i}", "accepted" if i % 2 else "rejected")
        reviews.set_ranks({f"rec-{worker}-{i}": i + 1})


def test_several_processes_review_at_once(tmp_path: Path) -> None:
    path = tmp_path / "reviews.db"
    ctx = multiprocessing.get_context("spawn")
    workers = [ctx.Process(target=_review_many, args=(str(path), w)) for w in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
        assert w.exitcode == 0
    got = Reviews(path).all()
    assert len(got) == 160
    assert all(got[f"rec-{w}-{i}"].rank == i + 1 and got[f"rec-{w}-{i}"].accepted == bool(i % 2) for w in range(4) for i in range(40))


# ------------------------------------------------------------------------------------- the command


def run_dataset(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="mooltiproxy")
    add_commands(parser.add_subparsers(dest="command", required=True))
    parsed = parser.parse_args(["dataset", *args])
    code = int(parsed.run(parsed))
    out, err = capsys.readouterr()
    return code, out, err


def test_the_dataset_command_exports_and_counts(folder: Path, recorded: dict[str, Row], tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("dataset: {dir: datasets}\n")
    out_file = tmp_path / "out" / "train.jsonl"
    out_file.parent.mkdir()
    code, out, err = run_dataset(capsys, "export", "--config", str(config), "--format", "sharegpt", "--out", str(out_file),
                                 "--session", "s1", "--left-out", str(tmp_path / "out" / "left.jsonl"))
    assert code == 0, err
    rows = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert {r["id"] for r in rows} == {recorded["a3"]["id"], recorded["t2"]["id"]}
    assert f"2 rows in sharegpt format, written to {out_file}." in err
    assert ("Skipped — alternative answer the conversation did not go on with: 2; cut short: 1; earlier turn of a longer "
            "conversation (in its row): 3; error answer: 1.") in err
    assert "(Add --include-cut-short to keep records cut short.)" in err
    # What was not exported, with why: not the earlier turns (they are in the rows), everything else.
    left = [json.loads(line) for line in (tmp_path / "out" / "left.jsonl").read_text().splitlines()]
    assert {r["id"]: r["reason"] for r in left} == {
        recorded["a2b"]["id"]: exports.ALTERNATIVE, recorded["a1b"]["id"]: exports.ALTERNATIVE,
        recorded["cut"]["id"]: exports.CUT_SHORT, recorded["err"]["id"]: exports.ERROR}
    assert all(r["record"]["id"] == r["id"] for r in left)
    assert f"4 record(s) not exported, each with the reason, written to {tmp_path / 'out' / 'left.jsonl'}." in err
    code, out, err = run_dataset(capsys, "export", "--dir", str(folder), "--format", "alpaca", "--out", "-", "--target", "other")
    # n=2 gave two alternatives of one turn: a row for one of them (both with --every-turn)
    assert code == 0 and [json.loads(line)["output"] for line in out.splitlines()] == [" a time", "Seven."]
    code, out, err = run_dataset(capsys, "export", "--dir", str(folder), "--format", "alpaca", "--out", "-", "--target", "other",
                                 "--every-turn")
    assert code == 0 and [json.loads(line)["output"] for line in out.splitlines()] == [" a time", "Seven.", "Three."]
    code, out, err = run_dataset(capsys, "stats", "--dir", str(folder), "--since", "2026-11-21", "--json")
    assert code == 0 and json.loads(out)["records"] == 15
    code, out, err = run_dataset(capsys, "stats", "--dir", str(folder), "--session", "s2")
    assert "records: 6" in out and "threads: 5" in out
    # Mistakes get a sentence.
    code, out, err = run_dataset(capsys, "stats", "--dir", str(tmp_path / "nowhere"))
    assert code == 1 and "There is no dataset at" in err
    code, out, err = run_dataset(capsys, "export", "--dir", str(folder), "--format", "openai", "--out", str(tmp_path / "no" / "such" / "x"))
    assert code == 1 and err.startswith(f"Cannot write {tmp_path / 'no' / 'such' / 'x'}:")
    with pytest.raises(SystemExit):
        run_dataset(capsys, "stats", "--dir", str(folder), "--since", "yesterday")
    assert "'yesterday' is not a date" in capsys.readouterr().err


# ------------------------------------------------------------------------------------- end to end


def test_exchanges_recorded_through_the_proxy_export_and_load(openai_stub: tuple[OpenAIStub, str], start_proxy: ProxyFactory,
                                                             tmp_path: Path) -> None:
    proxy = start_proxy({"targets": {"default": "a", "a": {"url": openai_stub[1]}}}).url
    client = openai.OpenAI(base_url=proxy + "/v1", api_key=KEY, max_retries=0)
    messages: list[Any] = [{"role": "system", "content": "Be nice."}]
    for question in ("one", "two", "three"):
        messages.append({"role": "user", "content": question})
        answer = client.chat.completions.create(model="m", messages=messages)
        messages.append({"role": "assistant", "content": answer.choices[0].message.content})
    client.chat.completions.create(model="m", messages=messages[:-1])  # the last turn regenerated
    streamed = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "stream me"}], stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    tool_answer = {"role": "assistant", "content": None, "tool_calls": [call("weather", {"city": "Oslo"}, "call_x")]}
    client.chat.completions.create(model="m", messages=[{"role": "user", "content": "Oslo?"}], tools=[WEATHER],  # type: ignore[list-item]
                                   extra_body={"stub": {"message": tool_answer, "finish_reason": "tool_calls"}})
    folder = tmp_path / "datasets"
    deadline = time.monotonic() + 5
    while sum(1 for f in folder.glob("*.jsonl") for _ in read_jsonl(f)) < 6 and time.monotonic() < deadline:
        time.sleep(0.05)
    out, report = export(folder, "sharegpt", every_turn=False)
    assert report.left_out == []
    rows = sorted(out, key=lambda r: len(r["conversations"]))
    assert [len(r["conversations"]) for r in rows] == [2, 2, 7]
    assert rows[-1]["conversations"][-2:] == [{"from": "human", "value": "three"}, {"from": "gpt", "value": "alpha says: three"}]
    assert {"from": "function_call", "value": '{"name":"weather","arguments":{"city":"Oslo"}}'} in [r["conversations"][-1] for r in rows]
    for row in out:
        check_sharegpt(row)
    path = tmp_path / "export.jsonl"
    exports.write(path, out)
    assert load_with_datasets(path, tmp_path / "hf-cache").num_rows == 3
    assert KEY.encode() not in path.read_bytes() and all(KEY.encode() not in orjson.dumps(r) for r in out)
