"""Prompters: golden renders of every preset, the sources a target may name, awkward histories, the sandbox."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from mooltiproxy.errors import MappingError
from mooltiproxy.translate.prompting import Limits, Prompter, PrompterError, load_prompter, preset_names

from .transformers_kit import transformers_render

FIXTURES = Path(__file__).resolve().parent / "fixtures"
REFERENCE: dict[str, dict[str, str]] = json.loads((FIXTURES / "chat_template_renders.json").read_text(encoding="utf-8"))

# preset name → its entry in the reference renders
PRESETS = {
    "llama2-chat": "llama2_chat",
    "chatml": "chatml",
    "llama3": "llama3",
    "mistral-v0.1": "mistral_v0.1",
    "mistral": "mistral_v0.2_mixtral",
    "mistral-v3": "mistral_v0.3_notools",
    "zephyr": "zephyr",
    "gemma": "gemma_it",
    "phi3": "phi3_mini_2024_07",
    "phi3-2024-05": "phi3_mini_2024_05_original",
    "vicuna": "vicuna_v1.1_webui",
    "alpaca": "alpaca_webui",
}

SYSTEM = {"role": "system", "content": "You are a helpful assistant."}
EXAMPLE = [
    SYSTEM,
    {"role": "user", "content": "Hello!"},
    {"role": "assistant", "content": "Hi there, how can I help?"},
    {"role": "user", "content": "Tell me a joke."},
]

# Histories that broke older proxies: each must render or be refused with a MappingError, never crash.
AWKWARD: dict[str, list[dict[str, Any]]] = {
    "system only": [SYSTEM],
    "user only": [{"role": "user", "content": "Hello!"}],
    "trailing assistant": [*EXAMPLE, {"role": "assistant", "content": "Why did the chicken"}],
    "trailing assistant, no system": [{"role": "user", "content": "Hello!"}, {"role": "assistant", "content": "Once upon "}],
    "trailing empty assistant": [{"role": "user", "content": "Hello!"}, {"role": "assistant", "content": ""}],
    "two users in a row": [SYSTEM, {"role": "user", "content": "Hello!"}, {"role": "user", "content": "Anyone there?"}],
    "system in the middle": [*EXAMPLE[:3], {"role": "system", "content": "Be brief."}, EXAMPLE[3]],
    "assistant first": [{"role": "assistant", "content": "Welcome!"}, {"role": "user", "content": "Hi."}],
}


def load(spec: Any, **kwargs: Any) -> Prompter:
    prompter = load_prompter(spec, base_dir=FIXTURES, **kwargs)
    assert prompter is not None
    return prompter


def inline(template: str, **kwargs: Any) -> Prompter:
    return load({"template": template, **kwargs})


def outcome(prompter: Prompter, messages: list[dict[str, Any]], **kwargs: Any) -> str:
    try:
        return prompter.render(messages, **kwargs)
    except MappingError as exc:
        return f"RAISES {exc.message}"


def expect(prompter: Prompter, messages: list[dict[str, Any]], expected: str) -> None:
    if expected.startswith("RAISES TemplateError: "):
        with pytest.raises(MappingError) as info:
            prompter.render(messages)
        assert expected.removeprefix("RAISES TemplateError: ") in info.value.message
        assert f"prompter '{prompter.name}'" in info.value.message
        assert info.value.status == 400
    else:
        assert prompter.render(messages) == expected


# ---------------------------------------------------------------------------------------------------
# Golden renders


def test_the_presets_asked_for_are_there() -> None:
    names = preset_names()
    assert names == sorted(names)
    for name in (*PRESETS, "plain"):
        assert name in names


@pytest.mark.parametrize("name", PRESETS)
def test_preset_renders_the_reference_exactly(name: str) -> None:
    ref = REFERENCE[PRESETS[name]]
    prompter = load(name)
    assert (prompter.name, prompter.bos_token, prompter.eos_token) == (name, ref["bos"], ref["eos"])
    expect(prompter, EXAMPLE, ref["with_system"])
    expect(prompter, EXAMPLE[1:], ref["without_system"])


def preset_body(name: str) -> str:
    text = (Path(__file__).resolve().parent.parent / "prompters" / f"{name}.jinja").read_text(encoding="utf-8")
    assert text.startswith("{#---\n")
    return text[text.index("---#}\n") + len("---#}\n") :].removesuffix("\n")


# Presets whose template is the model's later one, with tools: the reference holds the earlier one without them
# (whose renders, above, they still give); the tool-capable template is checked in test_template_fidelity.py.
WITH_TOOLS_SINCE = {"mistral-v3"}


@pytest.mark.parametrize("name", [name for name in PRESETS if name not in WITH_TOOLS_SINCE])
def test_preset_holds_the_models_own_template_unchanged(name: str) -> None:
    assert preset_body(name) == REFERENCE[PRESETS[name]]["template"]


@pytest.mark.parametrize("key", REFERENCE)
def test_reference_template_inline_renders_the_reference(key: str) -> None:
    ref = REFERENCE[key]
    prompter = inline(ref["template"], bos_token=ref["bos"], eos_token=ref["eos"])
    assert prompter.name == "inline"
    expect(prompter, EXAMPLE, ref["with_system"])
    expect(prompter, EXAMPLE[1:], ref["without_system"])


def test_plain_preset_is_role_prefixed_lines_ending_with_assistant() -> None:
    prompter = load("plain")
    assert prompter.stop == ("\nUser:",)
    assert prompter.render(EXAMPLE) == (
        "You are a helpful assistant.\n\nUser: Hello!\nAssistant: Hi there, how can I help?\nUser: Tell me a joke.\nAssistant:"
    )
    assert prompter.render(EXAMPLE[1:2]) == "User: Hello!\nAssistant:"
    assert prompter.render(EXAMPLE[1:2], variables={"user": "Alice", "char": "Seraphina"}) == "Alice: Hello!\nSeraphina:"


@pytest.mark.parametrize(
    ("name", "stop"),
    [
        ("llama2-chat", ("</s>", "[INST]")),
        ("llama3", ("<|eot_id|>", "<|end_of_text|>")),
        ("chatml", ("<|im_end|>", "<|im_start|>", "<|endoftext|>")),
        ("mistral", ("</s>", "[INST]")),
        ("mistral-v3", ("</s>", "[INST]")),
        ("zephyr", ("</s>", "<|user|>")),
        ("gemma", ("<end_of_turn>", "<eos>")),
        ("phi3", ("<|end|>", "<|endoftext|>", "<|user|>", "<|assistant|>")),
        ("vicuna", ("</s>", "USER:")),
        ("alpaca", ("</s>", "### Instruction:")),
    ],
)
def test_preset_stop_strings(name: str, stop: tuple[str, ...]) -> None:
    assert load(name).stop == stop


def test_extra_stop_joins_the_prompters_in_order_without_duplicates() -> None:
    prompter = load("llama2-chat", extra_stop=["[INST]", "\nUser:", "", "\nUser:"])
    assert prompter.stop == ("</s>", "[INST]", "\nUser:")


# ---------------------------------------------------------------------------------------------------
# Where a prompter comes from


def test_none_is_no_prompter() -> None:
    assert load_prompter(None, base_dir=FIXTURES) is None


def test_unknown_name_suggests_the_close_one_and_lists_presets() -> None:
    with pytest.raises(PrompterError) as info:
        load("llama2chat")
    message = str(info.value)
    assert message.startswith("no prompter named 'llama2chat' (did you mean 'llama2-chat'?); presets: alpaca, chatml,")
    assert "\n" not in message


def test_missing_file_is_named() -> None:
    with pytest.raises(PrompterError, match=r"no file templates/nope\.jinja"):
        load("templates/nope.jinja")


def test_jinja_file_with_front_matter(tmp_path: Path) -> None:
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "mine.jinja").write_text(
        '{#---\nstop: ["<END>"]\nbos_token: "<B>"\neos_token: "<E>"\n---#}\n'
        "{{ bos_token }}{% for m in messages %}[{{ m.role }}] {{ m.content }}{{ eos_token }}{% endfor %}\n",
        encoding="utf-8",
    )
    prompter = load_prompter("t/mine.jinja", base_dir=tmp_path, extra_stop=["\n"])
    assert prompter is not None
    assert (prompter.name, prompter.stop, prompter.bos_token, prompter.eos_token) == ("t/mine.jinja", ("<END>", "\n"), "<B>", "<E>")
    assert prompter.render([{"role": "user", "content": "hi"}]) == "<B>[user] hi<E>"


def test_jinja_file_without_front_matter(tmp_path: Path) -> None:
    (tmp_path / "chat_template.jinja").write_text(REFERENCE["chatml"]["template"], encoding="utf-8")
    prompter = load_prompter("chat_template.jinja", base_dir=tmp_path)
    assert prompter is not None
    assert (prompter.stop, prompter.bos_token, prompter.eos_token) == ((), "", "")
    assert prompter.render(EXAMPLE) == REFERENCE["chatml"]["with_system"]


def test_front_matter_with_an_unknown_key_is_refused(tmp_path: Path) -> None:
    (tmp_path / "x.jinja").write_text("{#---\nstops: []\n---#}\nhi", encoding="utf-8")
    with pytest.raises(PrompterError, match=r"unknown front matter key 'stops' \(did you mean 'stop'\?\)"):
        load_prompter("x.jinja", base_dir=tmp_path)


def test_front_matter_that_is_not_yaml_is_refused(tmp_path: Path) -> None:
    (tmp_path / "x.jinja").write_text("{#---\nstop: [unclosed\n---#}\nhi", encoding="utf-8")
    with pytest.raises(PrompterError, match="not valid YAML"):
        load_prompter("x.jinja", base_dir=tmp_path)


def test_syntax_error_names_the_line_at_load_time() -> None:
    with pytest.raises(PrompterError) as info:
        inline("{% for m in messages %}\n{{ m.content }}\n{% endif %}")
    assert "syntax error on line 3" in str(info.value)


def test_tokenizer_config_string_form_with_added_token_dicts() -> None:
    prompter = load("tokenizer_string/tokenizer_config.json")
    assert (prompter.bos_token, prompter.eos_token, prompter.stop) == ("<s>", "</s>", ("</s>",))
    assert prompter.render(EXAMPLE) == REFERENCE["llama2_chat"]["with_system"]
    assert prompter.render(EXAMPLE[1:]) == REFERENCE["llama2_chat"]["without_system"]


def test_tokenizer_config_can_be_named_by_its_folder() -> None:
    assert load("tokenizer_string").render(EXAMPLE) == REFERENCE["llama2_chat"]["with_system"]


def test_tokenizer_config_named_list_uses_default_without_tools() -> None:
    prompter = load("tokenizer_named/tokenizer_config.json", extra_stop=["<|im_start|>"])
    assert (prompter.bos_token, prompter.eos_token, prompter.stop) == ("<|begin_of_text|>", "<|im_end|>", ("<|im_end|>", "<|im_start|>"))
    assert prompter.render(EXAMPLE) == REFERENCE["chatml"]["with_system"]


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather <now> & later, in °C",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}

TOOL_HISTORY = [
    {"role": "system", "content": "You help."},
    {"role": "user", "content": "Weather in Zürich?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Zürich"}'}}],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'},
]


def test_tokenizer_config_named_list_uses_tool_use_with_tools() -> None:
    prompter = load("tokenizer_named/tokenizer_config.json")
    out = prompter.render(TOOL_HISTORY, tools=[WEATHER_TOOL])
    # tojson does not escape HTML and keeps non-ASCII; arguments arrive as an object, not a JSON string.
    assert (
        '\n{"type": "function", "function": {"name": "get_weather", "description": "Weather <now> & later, in °C", "parameters": '
        in out
    )
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Zürich"}}\n</tool_call><|im_end|>\n' in out
    assert out.endswith("<|im_start|>user\n<tool_response>\n{\"temp\": 21}\n</tool_response><|im_end|>\n<|im_start|>assistant\n")


def test_tool_messages_are_refused_by_a_template_that_has_no_place_for_them() -> None:
    with pytest.raises(MappingError) as info:
        load("tokenizer_named/tokenizer_config.json").render(TOOL_HISTORY)
    assert "prompter 'tokenizer_named/tokenizer_config.json'" in info.value.message
    assert "tool_calls" in info.value.message
    with pytest.raises(MappingError, match=r"messages\[1\] is a tool result, but prompter 'chatml'"):
        load("chatml").render([TOOL_HISTORY[1], TOOL_HISTORY[3]])


def test_tools_reach_a_template_that_reads_them_and_are_ignored_by_one_that_does_not() -> None:
    assert load("chatml").render(EXAMPLE, tools=[WEATHER_TOOL]) == REFERENCE["chatml"]["with_system"]
    prompter = inline("{{ tools | map(attribute='function.name') | join(',') }}")
    assert prompter.render(EXAMPLE, tools=[WEATHER_TOOL]) == "get_weather"


def test_special_tokens_of_tokenizer_config_reach_the_template() -> None:
    config = json.loads((FIXTURES / "tokenizer_named" / "tokenizer_config.json").read_text(encoding="utf-8"))
    config["chat_template"] = "{{ pad_token }}|{{ additional_special_tokens | join(' ') }}|{{ bos_token }}"
    prompter = load_prompter_from(config)
    assert prompter.render(EXAMPLE) == "<|endoftext|>|<tool_call> </tool_call>|<|begin_of_text|>"


def load_prompter_from(config: dict[str, Any], tmp: Path | None = None) -> Prompter:
    import tempfile

    folder = Path(tempfile.mkdtemp()) if tmp is None else tmp
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    prompter = load_prompter("tokenizer_config.json", base_dir=folder)
    assert prompter is not None
    return prompter


def test_tokenizer_config_named_list_without_default_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PrompterError, match=r"named chat templates \(tool_use\) but none named 'default'"):
        load_prompter_from({"chat_template": [{"name": "tool_use", "template": "x"}]}, tmp_path)


def test_tokenizer_config_without_a_template_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PrompterError, match="has no chat_template"):
        load_prompter_from({"eos_token": "</s>"}, tmp_path)


def test_chat_template_jinja_beside_the_tokenizer_config_wins(tmp_path: Path) -> None:
    (tmp_path / "chat_template.jinja").write_text(REFERENCE["zephyr"]["template"], encoding="utf-8")
    prompter = load_prompter_from({"chat_template": "ignored", "bos_token": "<s>", "eos_token": "</s>"}, tmp_path)
    assert prompter.render(EXAMPLE) == REFERENCE["zephyr"]["with_system"]


# ---------------------------------------------------------------------------------------------------
# Content as the OpenAI API sends it


def test_text_parts_are_joined_without_separator_and_developer_is_system() -> None:
    messages = [
        {"role": "developer", "content": [{"type": "text", "text": "You are a helpful "}, {"type": "text", "text": "assistant."}]},
        {"role": "user", "content": [{"type": "text", "text": "Hello!"}]},
    ]
    assert load("chatml").render(messages) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n"
    )


def test_image_parts_are_refused_for_a_text_only_backend() -> None:
    messages = [{"role": "user", "content": [{"type": "text", "text": "What is it?"},
                                             {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]
    with pytest.raises(MappingError) as info:
        load("llama3").render(messages)
    assert info.value.message.startswith("prompter 'llama3' feeds a text-only backend; image parts cannot be sent")


def test_render_does_not_touch_the_callers_messages() -> None:
    messages = copy.deepcopy([*TOOL_HISTORY[:2], {"role": "assistant", "content": "Let me"}])
    before = copy.deepcopy(messages)
    load("tokenizer_named/tokenizer_config.json").render(messages)
    assert messages == before


# ---------------------------------------------------------------------------------------------------
# Awkward histories


def test_empty_conversation_is_refused() -> None:
    with pytest.raises(MappingError, match="empty conversation"):
        load("chatml").render([])


@pytest.mark.parametrize("name", [*PRESETS, "plain"])
@pytest.mark.parametrize("history", AWKWARD)
def test_awkward_histories_render_or_are_refused_clearly(name: str, history: str) -> None:
    out = outcome(load(name), AWKWARD[history])
    assert isinstance(out, str)
    if out.startswith("RAISES"):
        assert f"prompter '{name}'" in out


def test_trailing_assistant_message_is_continued_not_repeated() -> None:
    history = AWKWARD["trailing assistant"]
    assert load("chatml").render(history).endswith("Tell me a joke.<|im_end|>\n<|im_start|>assistant\nWhy did the chicken")
    assert load("llama2-chat").render(history).endswith("[INST] Tell me a joke. [/INST] Why did the chicken")
    assert load("llama3").render(history).endswith("<|start_header_id|>assistant<|end_header_id|>\n\nWhy did the chicken")
    assert load("plain").render(history).endswith("User: Tell me a joke.\nAssistant: Why did the chicken")
    # A template that trims contents: the cut is trimmed as well (here the trailing space of "Once upon ").
    assert load("gemma").render(AWKWARD["trailing assistant, no system"]) == (
        "<bos><start_of_turn>user\nHello!<end_of_turn>\n<start_of_turn>model\nOnce upon"
    )
    assert load("zephyr").render(AWKWARD["trailing empty assistant"]) == "<|user|>\nHello!</s>\n<|assistant|>\n"


def test_continuing_a_message_the_template_leaves_out_is_refused_clearly() -> None:
    prompter = inline("{% for m in messages if m.role != 'assistant' %}{{ m.content }}{% endfor %}")
    with pytest.raises(MappingError, match="cannot continue the final assistant message"):
        prompter.render(AWKWARD["trailing assistant"])


def test_system_only_renders() -> None:
    assert load("chatml").render([SYSTEM]) == "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>assistant\n"
    assert load("plain").render([SYSTEM]) == "You are a helpful assistant.\n\nAssistant:"


def test_two_users_in_a_row_is_whatever_the_template_does() -> None:
    history = AWKWARD["two users in a row"]
    assert "<|im_start|>user\nHello!<|im_end|>\n<|im_start|>user\nAnyone there?<|im_end|>\n" in load("chatml").render(history)
    with pytest.raises(MappingError) as info:
        load("llama2-chat").render(history)
    assert info.value.message == (
        "prompter 'llama2-chat' refused these messages: Conversation roles must alternate user/assistant/user/assistant/..."
    )


def test_system_in_the_middle_is_whatever_the_template_does() -> None:
    history = AWKWARD["system in the middle"]
    assert "<|im_start|>system\nBe brief.<|im_end|>\n" in load("chatml").render(history)
    with pytest.raises(MappingError, match="prompter 'mistral-v3' refused these messages: After the optional system message"):
        load("mistral-v3").render(history)


def test_gemma_refuses_a_system_message_with_its_own_words() -> None:
    with pytest.raises(MappingError) as info:
        load("gemma").render(EXAMPLE)
    assert info.value.message == "prompter 'gemma' refused these messages: System role not supported"
    assert info.value.status == 400


def test_add_generation_prompt_false() -> None:
    assert load("chatml").render(EXAMPLE[1:2], add_generation_prompt=False) == "<|im_start|>user\nHello!<|im_end|>\n"


# ---------------------------------------------------------------------------------------------------
# The dialect and the sandbox


def test_dialect_helpers() -> None:
    out = inline(
        "{% generation %}[{{ strftime_now('%Y') | length }}]{% endgeneration %}"
        "{{ {'b': '<&>', 'a': 'é'} | tojson }}{{ {'b': 1, 'a': 2} | tojson(indent=1, sort_keys=True) }}"
        "{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}{{ m.role }}{% endfor %}"
        "{% set ns = namespace(n=0) %}{% set ns.n = ns.n + 1 %}{{ ns.n }}{{ dict(x=1).x }}"
    ).render(EXAMPLE)
    assert out == '[4]{"b": "<&>", "a": "é"}{\n "a": 2,\n "b": 1\n}system11'


def test_variables_reach_the_template_but_not_over_messages() -> None:
    prompter = inline("{{ bos_token }}{{ char }}{{ messages | length }}", bos_token="<s>")
    assert prompter.render(EXAMPLE, variables={"char": "Seraphina", "messages": [], "bos_token": "<B>"}) == "<B>Seraphina4"


@pytest.mark.parametrize(
    ("template", "words"),
    [
        ("{{ ''.__class__ }}", "unsafe"),
        ("{{ ''.__class__.__mro__[1].__subclasses__() }}", "unsafe"),
        ("{{ messages.__class__.__base__ }}", "unsafe"),
        ("{{ raise_exception.__globals__ }}", "unsafe"),
        ("{% set ns = namespace() %}{% set ns._x = 1 %}", "underscore"),
        ("{{ messages.append(1) }}", "unsafe"),
        ("{% for i in range(10**6) %}{% endfor %}", "MAX_RANGE"),
        ("{{ 'a' * 10**9 }}", "longer than"),
        ("{{ 10**9 * 'a' }}", "longer than"),
        ("{{ (['aaaa'] * 10**6) | join }}", "repetition"),
        ("{{ (['aaaa'] * 1000) | join('x' * 2000) }}", "join"),
        ("{{ ('x' * 2000).join(['aaaa'] * 1000) }}", "join"),
        ("{{ 9 ** (9 ** 9) }}", "bits"),
        ("{{ 'a'.ljust(10**9) }}", "width"),
        ("{{ 'a' | center(10**9) }}", "width"),
        ("{{ '{:>999999999}'.format(1) }}", "width"),
        ("{{ '%999999999d' % 1 }}", "width"),
        ("{{ ('a' * 1000) | replace('', 'b' * 10000) }}", "replace"),
        ("{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}", "namespace"),
        ("{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = ns.s + ns.s %}{% endfor %}", "longer than"),
        ("{% for i in range(100000) %}{% for j in range(100000) %}{{ 'abcdefgh' }}{% endfor %}{% endfor %}", "longer than"),
    ],
)
def test_sandbox_stops_the_template_with_a_mapping_error(template: str, words: str) -> None:
    with pytest.raises(MappingError) as info:
        inline(template).render(EXAMPLE)
    assert info.value.message.startswith("prompter 'inline' was stopped")
    assert words in info.value.message
    assert info.value.status == 400


def test_sandbox_stops_a_template_that_runs_too_long() -> None:
    prompter = load(
        {"template": "{% for i in range(100000) %}{% for j in range(100000) %}{% if j.real %}{% endif %}{% endfor %}{% endfor %}"},
        limits=Limits(max_seconds=0.2),
    )
    with pytest.raises(MappingError, match=r"was stopped: the template ran for more than 0\.2 seconds"):
        prompter.render(EXAMPLE)


def test_the_prompt_length_limit() -> None:
    prompter = load("chatml", limits=Limits(max_chars=100))
    assert prompter.render(EXAMPLE[1:2])
    with pytest.raises(MappingError, match="the prompt would be longer than 100 characters"):
        prompter.render(EXAMPLE)


def test_a_template_error_from_the_messages_shape_is_a_mapping_error() -> None:
    with pytest.raises(MappingError, match="prompter 'inline' could not render these messages"):
        inline("{{ messages[0].content.missing.deeper }}").render(EXAMPLE)


# ---------------------------------------------------------------------------------------------------
# The same renders as transformers' own renderer


COMPARED = {"example": EXAMPLE, "no system": EXAMPLE[1:], **AWKWARD}


@pytest.mark.parametrize("key", REFERENCE)
@pytest.mark.parametrize("history", COMPARED)
def test_renders_match_transformers(key: str, history: str) -> None:
    ref = REFERENCE[key]
    messages = COMPARED[history]
    expected = transformers_render(ref["template"], copy.deepcopy(messages), bos_token=ref["bos"], eos_token=ref["eos"])
    got = outcome(inline(ref["template"], bos_token=ref["bos"], eos_token=ref["eos"]), messages)
    if expected.startswith("RAISES"):
        assert got.startswith("RAISES")
    else:
        assert got == expected


PRESET_FILES = Path(__file__).resolve().parent.parent / "prompters"


@pytest.mark.parametrize("name", preset_names())
def test_a_preset_renders_the_same_trusted_as_in_the_sandbox(name: str) -> None:
    """The presets render without the sandbox and through a context that calls built-in methods directly
    (``sandbox.Trusted``); the same file as a user's template goes through Jinja's own paths in the sandbox."""
    trusted = load(name)
    sandboxed = load_prompter(str(PRESET_FILES / f"{name}.jinja"), base_dir=PRESET_FILES)
    assert sandboxed is not None and type(trusted.environment) is not type(sandboxed.environment)
    for history, messages in COMPARED.items():
        for tools in ([WEATHER_TOOL], None) if trusted.tools_rendered else (None,):
            got = outcome(trusted, messages, tools=tools, variables={"user": "Alice"})
            want = outcome(sandboxed, messages, tools=tools, variables={"user": "Alice"})
            assert got.replace(f"'{name}'", "'?'") == want.replace(f"'{sandboxed.name}'", "'?'"), history


def test_a_presets_prompt_is_held_to_the_length_limit_whole() -> None:
    """A trusted render is measured once it is whole: one character over the limit is refused, the limit itself is not."""
    exact = len(load("chatml").render(EXAMPLE))
    assert load("chatml", limits=Limits(max_chars=exact)).render(EXAMPLE)
    with pytest.raises(MappingError, match=f"prompter 'chatml' was stopped: the prompt would be longer than {exact - 1} characters"):
        load("chatml", limits=Limits(max_chars=exact - 1)).render(EXAMPLE)


@pytest.mark.parametrize("history", COMPARED)
def test_plain_preset_matches_transformers(history: str) -> None:
    text = (Path(__file__).resolve().parent.parent / "prompters" / "plain.jinja").read_text(encoding="utf-8")
    messages = COMPARED[history]
    expected = transformers_render(text, copy.deepcopy(messages), user="Alice")
    got = outcome(load("plain"), messages, variables={"user": "Alice"})
    assert got.startswith("RAISES") if expected.startswith("RAISES") else got == expected


def test_tool_use_render_matches_transformers() -> None:
    config = json.loads((FIXTURES / "tokenizer_named" / "tokenizer_config.json").read_text(encoding="utf-8"))
    template = next(t["template"] for t in config["chat_template"] if t["name"] == "tool_use")
    messages = copy.deepcopy(TOOL_HISTORY)
    messages[2]["content"] = ""
    hf_messages = copy.deepcopy(messages)
    hf_messages[2]["tool_calls"][0]["function"]["arguments"] = {"city": "Zürich"}
    expected = transformers_render(template, hf_messages, tools=[WEATHER_TOOL], bos_token="<|begin_of_text|>", eos_token="<|im_end|>")
    assert load("tokenizer_named/tokenizer_config.json").render(messages, tools=[WEATHER_TOOL]) == expected
