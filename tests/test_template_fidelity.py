"""Every preset prompter rendered by three engines: the proxy's, transformers' (the reference: the templates
are Hugging Face chat templates) and llama.cpp's ``--jinja`` engine, through ``llama-server``'s
``/apply-template`` with the preset as the model's chat template. A preset added to ``prompters/`` joins
by itself; tool-calling ones are given the tool conversations as well.

What llama-server is compared with is what the proxy sends it: the prompter's render without its leading
BOS, which llama.cpp's tokenizer adds itself (and which ``/apply-template`` leaves out for the same reason).
Where llama.cpp renders differently, the test says why, and shows which engine transformers agrees with."""

from __future__ import annotations

import copy
import dataclasses
import json
import re
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from mooltiproxy.errors import MappingError
from mooltiproxy.translate.prompting import Prompter, load_prompter
from mooltiproxy.translate.toolcalls import short_id, wants_short_ids

from .backends.llama import LlamaServer, running
from .transformers_kit import transformers_render

PROMPTERS = Path(__file__).resolve().parent.parent / "prompters"
PRESETS = sorted(p.stem for p in PROMPTERS.glob("*.jinja"))

WEATHER = {"type": "function", "function": {"name": "weather", "description": "Weather in a city",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                           "required": ["city"]}}}
CONVERSATIONS: dict[str, list[dict[str, Any]]] = {
    "system and user": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}],
    "user only": [{"role": "user", "content": "Hi!"}],
    "several turns": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"},
                      {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "  Café, s'il vous plaît?\nMerci.\n"}],
    "answer begun": [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Well, "}],
    "tools offered": [{"role": "user", "content": "Weather in Paris?"}],
    "tool call and result": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [{"id": "call_1", "type": "function",
                                                             "function": {"name": "weather", "arguments": "{\"city\": \"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}],
}
TOOLS = {"tools offered", "tool call and result"}

# llama.cpp's engine lays a system message the template refuses or leaves out into the first user turn
# (its "system role" polyfill); transformers renders such a template as it is written: Gemma's and
# Mistral's raise, Phi-3's May 2024 template drops the system text. The proxy does what transformers does,
# so that a system prompt never disappears in silence: it refuses it, or the template's author dropped it.
SYSTEM_FOLDED = {"gemma", "mistral", "mistral-v0.1", "phi3-2024-05"}
# An answer begun (a final assistant message to continue): transformers' ``continue_final_message``, and
# the proxy, lay the message out as the template does (trimmed by Llama's and Gemma's, after the space of
# "ASSISTANT: ") and stop where it ends; llama.cpp puts the message as given after the generation prompt.
# It finds that prompt as the difference between renders with and without ``add_generation_prompt``, which
# for Phi-3's July template (an EOS in the one, ``<|assistant|>`` in the other) splices the two together.
PREFILL_GARBLED = {"phi3"}
# Llama 3.1's template writes "Today Date: " + date_string, 26 Jul 2024 unless told; llama.cpp tells it today's date.
# The proxy, like transformers, renders the template's own default.
TODAY_DATED = {"llama3.1"}


def short_ids(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The conversation with its call ids as the proxy maps them for Mistral's templates (9 alphanumerics)."""
    out = copy.deepcopy(messages)
    for message in out:
        for call in message.get("tool_calls") or ():
            call["id"] = short_id(call["id"])
        if "tool_call_id" in message:
            message["tool_call_id"] = short_id(message["tool_call_id"])
    return out


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, LlamaServer]]:
    """llama-server per preset, with the preset as its chat template, started when first asked for."""
    folder = tmp_path_factory.mktemp("llama")
    with ExitStack() as stack:

        class Started(dict[str, LlamaServer]):
            def __missing__(self, preset: str) -> LlamaServer:
                template = PROMPTERS / f"{preset}.jinja"
                # Llama 3's special tokens are only in its own vocabulary; the rest run on Llama 2's (<s>, </s>).
                model = "llama-bpe" if "<|begin_of_text|>" in template.read_text(encoding="utf-8") else "llama-spm"
                server = stack.enter_context(running(folder, model, "--jinja", "--chat-template-file", str(template), slots=1, context=512))
                self[preset] = server
                return server

        yield Started()


def prompter_for(preset: str, server: LlamaServer) -> Prompter:
    """The preset, with the server's BOS and EOS (those of the model it runs) as every engine gets them."""
    props = httpx.get(server.url + "/props", timeout=10).json()
    loaded = load_prompter(preset, base_dir=PROMPTERS)
    assert loaded is not None
    return dataclasses.replace(loaded, bos_token=props["bos_token"], eos_token=props["eos_token"])


def ours(prompter: Prompter, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> str:
    try:
        return prompter.render(copy.deepcopy(messages), tools=tools)
    except MappingError as exc:
        return f"RAISES {exc.message}"


def theirs(server: LlamaServer, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> str:
    body: dict[str, Any] = {"messages": messages, **({"tools": tools} if tools else {})}
    r = httpx.post(server.url + "/apply-template", json=body, timeout=10)
    return r.json()["prompt"] if r.status_code == 200 else f"RAISES {r.status_code}"  # type: ignore[no-any-return]


def reference(prompter: Prompter, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> str:
    hf = copy.deepcopy(messages)
    for message in hf:  # transformers' templates take a call's arguments as an object, not OpenAI's JSON text
        for call in message.get("tool_calls") or ():
            call["function"]["arguments"] = json.loads(call["function"]["arguments"])
    return transformers_render(prompter.sources["default"], hf, bos_token=prompter.bos_token, eos_token=prompter.eos_token,
                               **({"tools": tools} if tools else {}))


def sent(prompter: Prompter, rendered: str) -> str:
    """What the proxy sends llama-server: the render without the BOS the server's tokenizer adds."""
    return rendered.removeprefix(prompter.bos_token) if prompter.bos_token else rendered


def folded(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The conversation as llama.cpp's polyfill lays it out: the system text on the first user turn."""
    if messages[0]["role"] != "system":
        return messages
    rest = copy.deepcopy(messages[1:])
    rest[0]["content"] = messages[0]["content"] + "\n" + rest[0]["content"]
    return rest


@pytest.mark.parametrize("conversation", CONVERSATIONS)
@pytest.mark.parametrize("preset", PRESETS)
def test_three_engines_render_the_same_prompt(servers: dict[str, LlamaServer], preset: str, conversation: str) -> None:
    server = servers[preset]
    prompter = prompter_for(preset, server)
    messages = CONVERSATIONS[conversation]
    tools = [WEATHER] if conversation in TOOLS else None
    mine = ours(prompter, messages, tools)
    if wants_short_ids(prompter.sources["default"]) and any("tool_call_id" in m for m in messages):
        # Mistral's templates refuse OpenAI clients' call ids ("call_1"); the proxy renders them mapped to
        # 9 alphanumerics, which is what the other engines render given those.
        assert reference(prompter, messages, tools).startswith("RAISES") and theirs(server, messages, tools).startswith("RAISES")
        messages = short_ids(messages)
    hf, cpp = reference(prompter, messages, tools), theirs(server, messages, tools)
    if preset in TODAY_DATED:
        cpp = re.sub(r"Today Date: \d{2} \w{3} \d{4}", "Today Date: 26 Jul 2024", cpp)

    if mine.startswith("RAISES") and "has no place for them" in mine:
        # A template without a place for tool calls: transformers and llama.cpp render the conversation
        # without the call, the proxy refuses it rather than send the model a conversation with a hole.
        assert "Paris\"" not in hf and "weather" not in hf.replace("Weather", "")
        return
    # The proxy renders what transformers renders, byte for byte, and refuses what transformers refuses.
    assert mine.startswith("RAISES") == hf.startswith("RAISES"), (mine, hf)
    if not hf.startswith("RAISES"):
        assert mine == hf
    if preset in SYSTEM_FOLDED and messages[0]["role"] == "system":
        assert cpp == sent(prompter, ours(prompter, folded(messages), tools)), cpp
        return
    if conversation == "answer begun":
        generation_prompt = sent(prompter, ours(prompter, messages[:-1], tools))
        if preset in PREFILL_GARBLED:
            assert not cpp.startswith(generation_prompt), cpp
        else:
            assert cpp == generation_prompt + messages[-1]["content"]
        return
    if mine.startswith("RAISES"):
        assert cpp.startswith("RAISES"), cpp
    else:
        assert cpp == sent(prompter, mine)


def test_mistral_v3_is_mistrals_tool_template_with_v03s_spacing() -> None:
    """The ``mistral-v3`` preset against Mistral's own tool-calling template as llama.cpp keeps it (Mistral Nemo's, in
    its sources): the same but for v0.3's space after each control token and its trimmed assistant turn."""
    from .backends import llama_server
    from .backends.llama import require

    require()  # the sources come with the server's build
    nemo = (llama_server.sources_dir() / "models" / "templates" / "mistralai-Mistral-Nemo-Instruct-2407.jinja").read_text(encoding="utf-8")
    ours = (PROMPTERS / "mistral-v3.jinja").read_text(encoding="utf-8")
    ours = ours[ours.index("---#}\n") + len("---#}\n"):]
    v03 = nemo
    for token in ('"[AVAILABLE_TOOLS][', '"[INST]"', '"[TOOL_CALLS][', "'[TOOL_RESULTS]{"):
        spaced = token.replace("][", "] [").replace('INST]"', 'INST] "').replace("]{", "] {")
        assert token in v03, token
        v03 = v03.replace(token, spaced)
    v03 = v03.replace('{{- message["content"] + eos_token}}', '{{- " " + message["content"]|trim + eos_token}}')
    v03 = v03.replace("{%- elif (message.tool_calls is defined and message.tool_calls is not none) %}",
                      "{%- elif message.tool_calls is defined and message.tool_calls is not none %}")
    assert ours.strip() == v03.strip()
