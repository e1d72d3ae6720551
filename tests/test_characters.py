"""Character cards: reading V2/V1 JSON and PNG cards, and laying a card into a conversation and a prompt."""

from __future__ import annotations

import base64
import json
import struct
import zlib
from pathlib import Path
from typing import Any

import pytest

from mooltiproxy.translate.characters import Card, CardError, card_from_json, load_card
from mooltiproxy.translate.prompting import load_prompter

from .fixtures.make_card_png import chara_text, chunk, png_with_text

FIXTURES = Path(__file__).resolve().parent / "fixtures"
CARD_JSON = (FIXTURES / "card.json").read_bytes()


def seraphina() -> Card:
    return load_card(FIXTURES / "card.json")


# ---------------------------------------------------------------------------------------------------
# Reading cards


def test_v2_json_card() -> None:
    card = seraphina()
    assert card.name == "Seraphina"
    assert card.personality == "kind, watchful, speaks softly"
    assert card.system_prompt == "You are {{char}}. Stay in character. {{original}}"
    assert card.post_history_instructions == "Reply as {{char}} in one short paragraph."


def test_png_card_fixture_holds_the_same_card() -> None:
    assert load_card(FIXTURES / "card.png") == seraphina()


def test_png_fixture_is_what_the_script_makes() -> None:
    made = png_with_text([(b"tEXt", b"Comment\0made for tests"), chara_text(CARD_JSON)])
    assert (FIXTURES / "card.png").read_bytes() == made


def test_v1_card_and_pygmalion_field_names(tmp_path: Path) -> None:
    card = load_card(FIXTURES / "card_v1.json")
    assert (card.name, card.description, card.first_mes) == ("Aqua", "<BOT> is a water goddess.", "Hello, {{user}}!")
    assert card.system_prompt == ""
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"char_name": "Pyg", "char_persona": "shy", "char_greeting": "Hi.", "world_scenario": "A library."}))
    assert load_card(old) == Card(name="Pyg", personality="shy", first_mes="Hi.", scenario="A library.")


def test_null_fields_are_empty_strings() -> None:
    card = card_from_json({"spec": "chara_card_v2", "spec_version": "2.0", "data": {"name": "N", "scenario": None}})
    assert card.scenario == ""


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_png_with_compressed_and_international_text_chunks(tmp_path: Path) -> None:
    encoded = base64.b64encode(CARD_JSON)
    ztxt = png_with_text([(b"zTXt", b"chara\0\0" + zlib.compress(encoded))])
    assert load_card(_write(tmp_path, "z.png", ztxt)) == seraphina()
    itxt = png_with_text([(b"iTXt", b"chara\0\x01\0en\0\0" + zlib.compress(encoded))])
    assert load_card(_write(tmp_path, "i.png", itxt)) == seraphina()
    unpadded = png_with_text([(b"tEXt", b"chara\0" + encoded.rstrip(b"="))])
    assert load_card(_write(tmp_path, "u.png", unpadded)) == seraphina()


def test_png_prefers_chara_and_falls_back_to_ccv3(tmp_path: Path) -> None:
    v3 = json.dumps({"spec": "chara_card_v3", "spec_version": "3.0", "data": {"name": "Three"}}).encode()
    both = png_with_text([(b"tEXt", b"ccv3\0" + base64.b64encode(v3)), chara_text(CARD_JSON)])
    assert load_card(_write(tmp_path, "both.png", both)).name == "Seraphina"
    only_v3 = png_with_text([(b"tEXt", b"ccv3\0" + base64.b64encode(v3))])
    assert load_card(_write(tmp_path, "v3.png", only_v3)).name == "Three"


@pytest.mark.parametrize(
    ("name", "data", "words"),
    [
        ("plain.png", png_with_text([(b"tEXt", b"Comment\0hello")]), "has no 'chara' text chunk"),
        ("fake.png", b"GIF89a not a png", "is not a PNG file"),
        ("cut.png", png_with_text([chara_text(CARD_JSON)])[:60], "truncated"),
        ("crc.png", png_with_text([chara_text(CARD_JSON)]).replace(b"chara\0", b"charb\0"), "checksum"),
        ("b64.png", png_with_text([(b"tEXt", b"chara\0not base64 at all!")]), "not base64"),
        ("json.png", png_with_text([(b"tEXt", b"chara\0" + base64.b64encode(b"{nope"))]), "character card's JSON"),
        ("bomb.png", png_with_text([(b"zTXt", b"chara\0\0" + zlib.compress(b"A" * (17 * 1024 * 1024)))]), "larger than 16 MiB"),
        ("list.json", b"[1, 2]", "not an object"),
        ("spec.json", json.dumps({"spec": "something_else", "data": {"name": "x"}}).encode(), "spec 'something_else'"),
        ("type.json", json.dumps({"spec": "chara_card_v2", "data": {"name": "x", "personality": 3}}).encode(),
         "'personality' must be a string"),
        ("noname.json", json.dumps({"spec": "chara_card_v2", "data": {"name": " "}}).encode(), "no character name"),
        ("bad.json", b"{", "character card's JSON"),
    ],
)
def test_unreadable_cards_say_why_in_one_sentence(tmp_path: Path, name: str, data: bytes, words: str) -> None:
    with pytest.raises(CardError) as info:
        load_card(_write(tmp_path, name, data))
    assert words in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_card_file() -> None:
    with pytest.raises(CardError, match="no file"):
        load_card(FIXTURES / "nope.png")


def test_chunk_helper_makes_valid_crc() -> None:
    raw = chunk(b"tEXt", b"a\0b")
    assert struct.unpack(">I", raw[-4:])[0] == zlib.crc32(b"tEXta\0b")


# ---------------------------------------------------------------------------------------------------
# Laying a card into a conversation


STORY = (
    "Seraphina is a guardian of the Eldoria forest. She calls Alice a traveller.\n"
    "Seraphina's personality: kind, watchful, speaks softly\n"
    "Scenario: Alice wakes up in Seraphina's glade after being hurt.\n"
    "***\nAlice: Who are you?\nSeraphina: I am Seraphina, and this forest is mine to keep.\n"
    "***\nAlice: Where am I?\nSeraphina: In my glade. Rest."
)
FIRST = "*Seraphina kneels beside Alice.* You are safe now, Alice."


def test_apply_builds_system_context_first_message_history_and_instructions() -> None:
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "Be concise."},
        {"role": "user", "content": "Hi {{CHAR}}, I am <user>."},
    ]
    out = seraphina().apply(messages, user="Alice")
    assert out == [
        {"role": "system", "content": "You are Seraphina. Stay in character. Be concise.\n" + STORY},
        {"role": "assistant", "content": FIRST},
        {"role": "user", "content": "Hi Seraphina, I am Alice."},
        {"role": "system", "content": "Reply as Seraphina in one short paragraph."},
    ]
    assert messages[1]["content"] == "Hi {{CHAR}}, I am <user>."  # the request is left as it was


def test_without_original_the_requests_system_prompt_follows_the_cards() -> None:
    card = Card(name="Bo", system_prompt="You are {{char}}.")
    out = card.apply([{"role": "developer", "content": "Use British spelling."}, {"role": "user", "content": "Hi"}])
    assert out[0] == {"role": "system", "content": "You are Bo.\nUse British spelling."}


def test_without_a_card_system_prompt_the_requests_one_leads() -> None:
    card = Card(name="Aqua", description="<BOT> is a goddess.")
    out = card.apply([{"role": "system", "content": "Talk to {{user}}."}, {"role": "user", "content": "Hi"}], user="Kazuma")
    assert out == [{"role": "system", "content": "Talk to Kazuma.\nAqua is a goddess."}, {"role": "user", "content": "Hi"}]


def test_first_message_is_not_repeated_when_the_history_opens_with_the_character() -> None:
    history = [{"role": "assistant", "content": FIRST}, {"role": "user", "content": "Thanks."}]
    out = seraphina().apply(history, user="Alice")
    assert [m["role"] for m in out] == ["system", "assistant", "user", "system"]
    assert sum(1 for m in out if m["content"] == FIRST) == 1


def test_instructions_go_before_a_message_being_continued() -> None:
    history = [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "*She smiles*"}]
    out = seraphina().apply(history, user="Alice")
    assert [m["role"] for m in out] == ["system", "assistant", "user", "system", "assistant"]
    assert out[-1] == {"role": "assistant", "content": "*She smiles*"}


def test_text_parts_are_substituted_too() -> None:
    out = Card(name="Bo").apply([{"role": "user", "content": [{"type": "text", "text": "hi {{char}}"}]}])
    assert out == [{"role": "user", "content": [{"type": "text", "text": "hi Bo"}]}]


def test_stop_and_variables() -> None:
    card = seraphina()
    assert card.stop(user="Alice") == ("\nAlice:",)
    assert card.stop() == ("\nUser:",)
    variables = card.variables(user="Alice")
    assert variables["char"] == "Seraphina"
    assert variables["user"] == "Alice"
    assert variables["first_mes"] == FIRST


# ---------------------------------------------------------------------------------------------------
# Through a prompter


def test_card_through_the_plain_prompter() -> None:
    card = load_card(FIXTURES / "card.png")
    prompter = load_prompter("plain", base_dir=FIXTURES, extra_stop=card.stop(user="Alice"))
    assert prompter is not None
    prompt = prompter.render(card.apply([{"role": "user", "content": "Where am I?"}], user="Alice"), variables=card.variables(user="Alice"))
    assert prompt == (
        "You are Seraphina. Stay in character.\n" + STORY + "\n\n"
        f"Seraphina: {FIRST}\n"
        "Alice: Where am I?\n"
        "Reply as Seraphina in one short paragraph.\n\n"
        "Seraphina:"
    )
    assert prompter.stop == ("\nUser:", "\nAlice:")


def test_card_through_chatml() -> None:
    card = seraphina()
    prompter = load_prompter("chatml", base_dir=FIXTURES)
    assert prompter is not None
    prompt = prompter.render(card.apply([{"role": "user", "content": "Hello"}], user="Alice"))
    assert prompt.startswith("<|im_start|>system\nYou are Seraphina. Stay in character.\nSeraphina is a guardian")
    assert f"<|im_start|>assistant\n{FIRST}<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n" in prompt
    assert prompt.endswith("<|im_start|>system\nReply as Seraphina in one short paragraph.<|im_end|>\n<|im_start|>assistant\n")
