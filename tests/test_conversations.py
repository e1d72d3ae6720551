"""Conversations kept apart and whole, through the running proxy with the real SDKs: strangers who open alike stay
apart, a client's regeneration is an alternative, a named conversation and a sliding window stay one thread, and the
default export has a row per conversation path with the reviews applied all along it."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from mooltiproxy.dataset import exports
from mooltiproxy.dataset.exports import Selection, threads
from mooltiproxy.dataset.reviews import Reviews
from mooltiproxy.dataset.store import Store

from .conftest import KEY, ProxyFactory
from .dataset_kit import records
from .stubs.openai_upstream import OpenAIStub

Stub = tuple[OpenAIStub, str]
HELLO = [{"role": "user", "content": "Hello!"}]


@pytest.fixture
def proxy(openai_stub: Stub, start_proxy: ProxyFactory) -> str:
    return start_proxy({"targets": {"default": "a", "a": {"url": openai_stub[1]}}}).url


def client_from(proxy: str, address: str = "127.0.0.1", **headers: str) -> openai.OpenAI:
    """The sync SDK, connecting from ``address`` (any of 127.0.0.0/8 is this machine: one client per address)."""
    transport = httpx.HTTPTransport(local_address=address)
    return openai.OpenAI(base_url=proxy + "/v1", api_key=KEY, max_retries=0, default_headers=headers,
                         http_client=httpx.Client(transport=transport))


def chat(client: openai.OpenAI, *questions: str, system: str | None = None, **options: Any) -> list[dict[str, Any]]:
    """A conversation of several turns, each question sent with the whole history so far; the messages at the end."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    for question in questions:
        messages.append({"role": "user", "content": question})
        answer = client.chat.completions.create(model="m", messages=messages, **options)  # type: ignore[arg-type]
        messages.append({"role": "assistant", "content": answer.choices[0].message.content})
    return messages


def export(folder: Path, fmt: str = "sharegpt", **options: Any) -> tuple[list[dict[str, Any]], exports.Report]:
    return exports.export(Store(folder), Reviews.beside(folder), fmt, Selection(**options))


def test_strangers_who_open_alike_stay_apart(proxy: str, tmp_path: Path) -> None:
    """Fifty people behind one key, each from its own address, each saying "Hello!" and then something of their own:
    fifty threads, fifty rows, nothing dropped (the stub answers "Hello!" the same way to all of them)."""
    for i in range(50):
        with client_from(proxy, f"127.0.1.{i + 1}") as client:
            chat(client, "Hello!", f"I am person {i}.")
    found = records(tmp_path / "datasets", 100)
    assert len(found) == 100 and len(threads(found)) == 50
    assert all(r["meta"]["alternative_of"] is None for r in found)
    rows, report = export(tmp_path / "datasets")
    assert sorted(row["conversations"][2]["value"] for row in rows) == sorted(f"I am person {i}." for i in range(50))
    assert report.skipped == {exports.PREFIX: 50}


def test_strangers_from_one_address_are_told_apart_by_user_or_conversation(proxy: str, tmp_path: Path) -> None:
    """A backend serving many people from one address says who is who: OpenAI's ``user``, or the conversation header."""
    with client_from(proxy) as client:
        for i in range(5):
            chat(client, "Hello!", f"I am person {i}.", user=f"person-{i}")
    for i in range(5):
        with client_from(proxy, **{"x-mooltiproxy-conversation": f"chat-{i}"}) as client:
            chat(client, "Hello!", f"I am chat {i}.")
    found = records(tmp_path / "datasets", 20)
    assert len(threads(found)) == 10
    assert {r["meta"]["user"] for r in found} == {*(f"person-{i}" for i in range(5)), None}
    assert {r["meta"]["conversation"] for r in found} == {*(f"chat-{i}" for i in range(5)), None}
    assert len(export(tmp_path / "datasets")[0]) == 10
    # The same conversation twice is one row, however many people had it.
    with client_from(proxy, "127.0.2.1") as one, client_from(proxy, "127.0.2.2") as other:
        chat(one, "Hello!")
        chat(other, "Hello!")
    assert len(records(tmp_path / "datasets", 22)) == 22
    rows, report = export(tmp_path / "datasets")
    assert len(rows) == 11 and report.skipped[exports.IDENTICAL] == 1, report.skipped


def test_a_regeneration_is_an_alternative_of_the_same_turn(proxy: str, tmp_path: Path) -> None:
    """The same client sending the same conversation again soon is regenerating: one thread, the answers alternatives
    of one turn; the row is the answer the chat went on with. The async SDK, as a chat frontend would use it."""
    async def regenerate() -> None:
        async with openai.AsyncOpenAI(base_url=proxy + "/v1", api_key=KEY, max_retries=0) as client:
            await client.chat.completions.create(model="m", messages=HELLO)  # type: ignore[arg-type]
            again = await client.chat.completions.create(model="m", messages=HELLO, temperature=1.5,  # type: ignore[arg-type]
                                                         extra_body={"stub": {"message": {"role": "assistant", "content": "Hi there!"}}})
            await client.chat.completions.create(model="m", messages=[  # type: ignore[arg-type]
                *HELLO, {"role": "assistant", "content": again.choices[0].message.content}, {"role": "user", "content": "Go on."}])

    asyncio.run(regenerate())
    first, second, third = records(tmp_path / "datasets", 3)
    assert second["meta"]["alternative_of"] == first["id"] and second["meta"]["parent"] is None
    assert third["meta"]["parent"] == second["id"]  # the latest record with that history: the regenerated answer
    assert len(threads([first, second, third])) == 1
    rows, report = export(tmp_path / "datasets")
    assert [r["id"] for r in rows] == [third["id"]]
    assert report.skipped == {exports.PREFIX: 1, exports.ALTERNATIVE: 1}
    # Ranked, the two answers of the first turn make a preference pair.
    Reviews.beside(tmp_path / "datasets").set_ranks({second["id"]: 1, first["id"]: 2})
    pairs, _ = export(tmp_path / "datasets", "dpo")
    assert [(p["chosen_id"], p["rejected_id"]) for p in pairs] == [(second["id"], first["id"])]


def test_a_conversation_continued_with_the_anthropic_sdk_and_a_name_stays_one(proxy: str, tmp_path: Path) -> None:
    """A named conversation is one thread even where its history was edited between turns."""
    client = anthropic.Anthropic(base_url=proxy, api_key=KEY, max_retries=0, default_headers={"x-mooltiproxy-conversation": "trip"})
    client.messages.create(model="m", max_tokens=20, messages=[{"role": "user", "content": "Plan a trip."}])
    client.messages.create(model="m", max_tokens=20, messages=[  # the user edited their first message and went on
        {"role": "user", "content": "Plan a trip to Rome."}, {"role": "assistant", "content": "Sure."},
        {"role": "user", "content": "In May."}])
    found = records(tmp_path / "datasets", 2)
    assert {r["meta"]["conversation"] for r in found} == {"trip"} and len(threads(found)) == 1


def test_a_sliding_window_stays_one_conversation_and_exports_whole(proxy: str, tmp_path: Path) -> None:
    """A frontend that keeps the system prompt and the last turns, dropping the oldest (SillyTavern's context limit):
    an 8-turn chat is one thread, and its row holds all eight turns."""
    system = {"role": "system", "content": "You are Bob, a sailor."}
    history: list[dict[str, Any]] = []
    with client_from(proxy) as client:
        for turn in range(8):
            history.append({"role": "user", "content": f"question {turn}"})
            window = [system, *history[-5:]]  # the system prompt, then what fits: the last five messages
            answer = client.chat.completions.create(model="m", messages=window)  # type: ignore[arg-type]
            history.append({"role": "assistant", "content": answer.choices[0].message.content})
    found = records(tmp_path / "datasets", 8)
    assert len(threads(found)) == 1
    assert [r["meta"]["parent"] for r in found] == [None, *(r["id"] for r in found[:-1])]
    (row,), report = export(tmp_path / "datasets")
    assert row["conversations"] == [{"from": "system", "value": "You are Bob, a sailor."}, *(
        {"from": "human" if m["role"] == "user" else "gpt", "value": m["content"]} for m in history)]
    assert report.skipped == {exports.PREFIX: 7}


def test_reviews_reach_every_row_whose_history_holds_the_answer(proxy: str, tmp_path: Path) -> None:
    """An edited answer reads as edited in the later turns' rows; a rejected one cuts the conversation before it; a
    whole branch accepted at once leaves an answer rejected on its own rejected."""
    with client_from(proxy) as client:
        chat(client, "one", "two", "three", system="Be brief.")
    first, second, third = records(tmp_path / "datasets", 3)
    reviews = Reviews.beside(tmp_path / "datasets")
    reviews.set_answer(first["id"], [{"from": "gpt", "value": "One, edited."}])
    (row,), _ = export(tmp_path / "datasets")
    assert row["id"] == third["id"] and row["conversations"][2] == {"from": "gpt", "value": "One, edited."}
    assert export(tmp_path / "datasets", every_turn=True)[0][1]["conversations"][2]["value"] == "One, edited."

    reviews.set_status(second["id"], "rejected")
    (row,), report = export(tmp_path / "datasets")
    assert row["id"] == first["id"] and row["conversations"][-1] == {"from": "gpt", "value": "One, edited."}
    assert report.skipped[exports.REJECTED] == 1 and report.skipped[exports.AFTER_REJECTED] == 1
    # --accepted-only: nothing yet. "Accept the whole branch" keeps the reject.
    assert export(tmp_path / "datasets", accepted_only=True)[0] == []
    changed = reviews.set_status([first["id"], second["id"], third["id"]], "accepted", bulk=True)
    assert changed == 2 and reviews.get(second["id"]).rejected
    (row,), _ = export(tmp_path / "datasets", accepted_only=True)
    assert row["id"] == first["id"]
