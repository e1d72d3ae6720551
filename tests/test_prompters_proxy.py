"""Prompters and character cards as a target uses them: through the proxy to the stub TGI, in the
config's checks, and in ``mooltiproxy render``."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import openai
import pytest

from mooltiproxy import parse
from mooltiproxy.errors import ConfigError

from .conftest import KEY, ROOT, ProxyFactory, http
from .servers import serve
from .stubs.tgi_upstream import TGIStub

FIXTURES = ROOT / "tests" / "fixtures"
CARD_CONTEXT = (
    "You are Seraphina. Stay in character. Keep it short.\n"
    "Seraphina is a guardian of the Eldoria forest. She calls Ann a traveller.\n"
    "Seraphina's personality: kind, watchful, speaks softly\n"
    "Scenario: Ann wakes up in Seraphina's glade after being hurt.\n"
    "***\nAnn: Who are you?\nSeraphina: I am Seraphina, and this forest is mine to keep.\n"
    "***\nAnn: Where am I?\nSeraphina: In my glade. Rest."
)


@pytest.fixture
def tgi(stack: ExitStack) -> tuple[TGIStub, str]:
    stub = TGIStub()
    return stub, stack.enter_context(serve(stub.app())).url


@pytest.fixture
def cards(tmp_path: Path) -> Path:
    for name in ("card.json", "card.png"):
        shutil.copy(FIXTURES / name, tmp_path / name)
    return tmp_path


def chat(url: str, messages: list[dict[str, Any]], **headers: str) -> openai.types.chat.ChatCompletion:
    client = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, default_headers=headers)
    return client.chat.completions.create(model="m", messages=messages)  # type: ignore[arg-type]


@pytest.mark.parametrize("card", ["card.json", "card.png"])
def test_character_card_reaches_the_prompt(tgi: tuple[TGIStub, str], start_proxy: ProxyFactory, cards: Path, card: str) -> None:
    proxy = start_proxy({"targets": {"default": "rp", "rp": {"type": "tgi", "url": tgi[1], "prompter": "chatml",
                                                            "character": str(cards / card), "user_name": "Ann"}}})
    chat(proxy.url, [{"role": "system", "content": "Keep it short."}, {"role": "user", "content": "Hello {{char}}!"}])
    sent = tgi[0].seen[-1]
    assert sent["inputs"] == (
        f"<|im_start|>system\n{CARD_CONTEXT}<|im_end|>\n"
        "<|im_start|>assistant\n*Seraphina kneels beside Ann.* You are safe now, Ann.<|im_end|>\n"
        "<|im_start|>user\nHello Seraphina!<|im_end|>\n"
        "<|im_start|>system\nReply as Seraphina in one short paragraph.<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert sent["parameters"]["stop"] == ["<|im_end|>", "<|im_start|>", "<|endoftext|>", "\nAnn:"]


def test_character_picked_by_header_among_those_allowed(tgi: tuple[TGIStub, str], start_proxy: ProxyFactory, cards: Path) -> None:
    proxy = start_proxy({"targets": {"default": "rp", "rp": {"type": "tgi", "url": tgi[1], "prompter": "llama2-chat",
                                                            "characters": {"sera": str(cards / "card.png")}}}})
    chat(proxy.url, [{"role": "user", "content": "Hi"}])
    assert tgi[0].seen[-1]["inputs"] == "[INST] Hi [/INST]"  # no card unless asked for
    chat(proxy.url, [{"role": "user", "content": "Hi"}], **{"x-character": "sera"})
    prompt = tgi[0].seen[-1]["inputs"]
    # Llama 2 insists on user first: the card's greeting is folded into its system block.
    assert prompt.startswith("[INST] <<SYS>>\nYou are Seraphina. Stay in character.\nSeraphina is a guardian")
    assert "Seraphina: *Seraphina kneels beside User.* You are safe now, User." in prompt
    assert prompt.endswith("<</SYS>>\n\nHi [/INST]")
    before = len(tgi[0].seen)
    r = http.post(proxy.url + "/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "Hi"}]},
                   headers={"x-character": "sara"})
    assert r.status_code == 400
    assert "Character 'sara' (x-character header) is not one target 'rp' offers (did you mean 'sera'?)" in r.json()["error"]["message"]
    assert len(tgi[0].seen) == before


def test_tokenizer_config_prompter_through_the_proxy(tgi: tuple[TGIStub, str], start_proxy: ProxyFactory) -> None:
    proxy = start_proxy({"targets": {"default": "t", "t": {"type": "tgi", "url": tgi[1],
                                                          "prompter": str(FIXTURES / "tokenizer_string" / "tokenizer_config.json")}}})
    chat(proxy.url, [{"role": "user", "content": "Hi"}])
    assert tgi[0].seen[-1]["inputs"] == "[INST] Hi [/INST]"
    assert tgi[0].seen[-1]["parameters"]["stop"] == ["</s>"]


def test_awkward_histories_are_400s_not_500s(tgi: tuple[TGIStub, str], start_proxy: ProxyFactory) -> None:
    proxy = start_proxy({"targets": {"default": "g", "g": {"type": "tgi", "url": tgi[1], "prompter": "gemma"}}})
    for messages, message in [
        ([{"role": "system", "content": "x"}, {"role": "user", "content": "y"}], "System role not supported"),
        ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/a.png"}}]}], "image parts cannot be sent"),
        ([{"role": "user", "content": "a"}, {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}], "has no place for them"),
    ]:
        r = http.post(proxy.url + "/v1/chat/completions", json={"model": "m", "messages": messages})
        assert r.status_code == 400, r.text
        assert message in r.json()["error"]["message"]
    # A trailing assistant message is continued, not answered.
    r = http.post(proxy.url + "/v1/chat/completions", json={"model": "m", "messages": [
        {"role": "user", "content": "Count"}, {"role": "assistant", "content": "One, two,"}]})
    assert r.status_code == 200
    assert tgi[0].seen[-1]["inputs"] == "<start_of_turn>user\nCount<end_of_turn>\n<start_of_turn>model\nOne, two,"


def test_config_problems_for_prompters_and_cards(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        parse({"targets": {
            "a": {"type": "tgi", "url": "http://h", "prompter": "llama2chat"},
            "b": {"type": "tgi", "url": "http://h"},
            "c": {"url": "http://h", "prompter": "llama3", "character": "nope.png", "characters": {"x": "gone.json"}},
        }}, environ={}, base_dir=tmp_path)
    text = "\n".join(info.value.problems)
    assert "targets.a.prompter: no prompter named 'llama2chat' (did you mean 'llama2-chat'?)" in text
    assert "targets.b.prompter: type tgi takes one prompt string, so chat messages need a prompter" in text
    assert "targets.c.character:" in text and "nope.png" in text
    assert "targets.c.characters.x:" in text


def test_render_command(tmp_path: Path, cards: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        "targets:\n"
        f"  local: {{type: tgi, url: 'http://127.0.0.1:9', prompter: llama2-chat, characters: {{sera: '{cards / 'card.json'}'}}}}\n"
        "  plain: {url: 'http://127.0.0.1:9'}\n"
    )
    messages = tmp_path / "messages.json"
    messages.write_text(json.dumps([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}]))

    def render(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "mooltiproxy", "render", "--config", str(config), *args], capture_output=True,
                              text=True, timeout=60)

    out = render("--target", "local", "--json", str(messages))
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["prompt"] == "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi! [/INST]"
    assert result["stop"] == ["</s>", "[INST]"]
    assert result["upstream"]["inputs"] == result["prompt"]
    text = render("--target", "local", str(messages)).stdout
    assert text.startswith("--- prompt (") and '["</s>", "[INST]"]' in text
    with_card = json.loads(render("--target", "local", "--character", "sera", "--json", str(messages)).stdout)
    assert "Seraphina" in with_card["prompt"] and "\nUser:" in with_card["stop"]
    assert "passes /v1/chat/completions through unchanged" in render("--target", "plain", str(messages)).stdout
    messages.write_text(json.dumps([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]))
    refused = render("--target", "local", str(messages))
    assert refused.returncode == 1 and "Conversation roles must alternate" in refused.stderr
