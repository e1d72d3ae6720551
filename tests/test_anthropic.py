"""The Anthropic Messages API both ways: OpenAI clients on an Anthropic target, and the official
``anthropic`` SDK on the proxy's own /v1/messages in front of OpenAI, TGI and Anthropic targets."""

from __future__ import annotations

import json
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from mooltiproxy.dataset.sinks import read_jsonl

from . import field_table
from .conftest import KEY, ProxyFactory
from .servers import serve
from .stubs.anthropic_upstream import AnthropicStub
from .stubs.openai_upstream import OpenAIStub
from .stubs.tgi_upstream import TGIStub

TOOLS = [{"type": "function", "function": {"name": "weather", "description": "Weather in a city",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]


@pytest.fixture
def claude(stack: ExitStack) -> tuple[AnthropicStub, str]:
    stub = AnthropicStub()
    return stub, stack.enter_context(serve(stub.app())).url


@pytest.fixture
def proxy(claude: tuple[AnthropicStub, str], start_proxy: ProxyFactory) -> str:
    return start_proxy({"targets": {"default": "claude", "claude": {"type": "anthropic", "url": claude[1], "api_key_env": "ANT_KEY",
                                                                    "options": {"max_tokens": 1000}}}},
                       env={"ANT_KEY": "sk-ant-test"}).url


@pytest.fixture
def client(proxy: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy + "/v1", api_key=KEY, max_retries=0)


# --------------------------------------------------------------------- OpenAI → Anthropic target


def test_chat_translated(claude: tuple[AnthropicStub, str], client: openai.OpenAI) -> None:
    stub = claude[0]
    answer = client.chat.completions.create(model="claude-x", temperature=1.5, stop="END", messages=[
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}, {"role": "user", "content": "there"}])
    sent, headers = stub.seen[-1], stub.headers[-1]
    assert sent["system"] == "Be brief."
    assert sent["messages"] == [{"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "there"}]}]
    assert sent["max_tokens"] == 1000 and sent["temperature"] == 1.0 and sent["stop_sequences"] == ["END"]
    assert headers["x-api-key"] == "sk-ant-test" and headers["anthropic-version"] == "2023-06-01"
    assert answer.choices[0].message.content == "Hello from Claude." and answer.choices[0].finish_reason == "stop"
    assert answer.usage is not None and (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (11, 6)
    assert answer.model == "claude-x"


def test_conversation_opening_with_the_assistant_gets_a_user_turn(claude: tuple[AnthropicStub, str], client: openai.OpenAI) -> None:
    client.chat.completions.create(model="m", max_tokens=5, messages=[{"role": "assistant", "content": "Hi, I'm here."},
                                                                     {"role": "user", "content": "Good."}])
    assert [m["role"] for m in claude[0].seen[-1]["messages"]] == ["user", "assistant", "user"]


def test_tools_both_ways(claude: tuple[AnthropicStub, str], client: openai.OpenAI) -> None:
    stub = claude[0]
    stub.tool_use = {"id": "toolu_1", "name": "weather", "input": {"city": "Oslo"}}
    answer = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "Weather?"}], tools=TOOLS,  # type: ignore[arg-type]
                                            tool_choice="required", parallel_tool_calls=False)
    assert stub.seen[-1]["tools"] == [{"name": "weather", "description": "Weather in a city",
                                       "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}]
    assert stub.seen[-1]["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content == "Let me check."
    assert choice.message.tool_calls is not None
    call = choice.message.tool_calls[0]
    assert call.id == "toolu_1" and call.function.name == "weather" and json.loads(call.function.arguments) == {"city": "Oslo"}
    stub.tool_use = None
    client.chat.completions.create(model="m", tools=TOOLS, messages=[  # type: ignore[arg-type]
        {"role": "user", "content": "Weather?"}, choice.message.model_dump(exclude_none=True),  # type: ignore[list-item]
        {"role": "tool", "tool_call_id": "toolu_1", "content": "Sunny"}])
    assert stub.seen[-1]["messages"][1]["content"][-1] == {"type": "tool_use", "id": "toolu_1", "name": "weather",
                                                          "input": {"city": "Oslo"}}
    assert stub.seen[-1]["messages"][2] == {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1",
                                                                         "content": "Sunny"}]}


def test_stream(claude: tuple[AnthropicStub, str], client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(model="m", messages=[{"role": "user", "content": "Hi"}], stream=True,
                                                 stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello from Claude."
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == 11 and chunks[-1].usage.completion_tokens == 6
    claude[0].tool_use = {"id": "toolu_2", "name": "weather", "input": {"city": "Rome"}}
    calls = [tc for c in client.chat.completions.create(model="m", messages=[{"role": "user", "content": "W?"}], tools=TOOLS,  # type: ignore[arg-type]
                                                        stream=True) if c.choices for tc in c.choices[0].delta.tool_calls or ()]
    assert calls[0].id == "toolu_2" and calls[0].function is not None and calls[0].function.name == "weather"
    assert json.loads("".join(c.function.arguments or "" for c in calls if c.function)) == {"city": "Rome"}


def test_completions(claude: tuple[AnthropicStub, str], client: openai.OpenAI) -> None:
    answer = client.completions.create(model="m", prompt="Say hi")
    assert claude[0].seen[-1]["messages"] == [{"role": "user", "content": "Say hi"}]
    assert answer.choices[0].text == "Hello from Claude."


def test_errors(claude: tuple[AnthropicStub, str], client: openai.OpenAI) -> None:
    stub = claude[0]
    stub.fail = (529, "overloaded_error", "Overloaded")
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "Hi"}])
    assert info.value.status_code == 529 and "Overloaded" in str(info.value)
    stub.fail = (400, "invalid_request_error", "prompt is too long")
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "Hi"}])
    assert "prompt is too long" in str(bad.value)
    stub.fail = None
    stub.stream_error_after = 1
    with pytest.raises(openai.APIError) as streamed:
        for _ in client.chat.completions.create(model="m", messages=[{"role": "user", "content": "Hi"}], stream=True):
            pass
    assert "Overloaded" in str(streamed.value)


# Each field the Messages API cannot honour, in a request of the API it belongs to: (api, field, extra body).
REFUSED: list[tuple[str, str, dict[str, Any]]] = [
    ("chat", "functions", {"functions": [{"name": "weather", "parameters": {"type": "object", "properties": {}}}]}),
    ("chat", "presence_penalty", {"presence_penalty": 0.5}),
    ("chat", "frequency_penalty", {"frequency_penalty": 0.5}),
    ("chat", "repetition_penalty", {"repetition_penalty": 1.1}),
    ("chat", "logit_bias", {"logit_bias": {"15043": -100}}),
    ("chat", "seed", {"seed": 0}),  # 0 is a seed like any other
    ("chat", "min_p", {"min_p": 0.05}),
    ("chat", "typical_p", {"typical_p": 0.9}),
    ("chat", "reasoning_effort", {"reasoning_effort": "low"}),
    ("chat", "prediction", {"prediction": field_table.PREDICTION}),
    ("chat", "audio", {"audio": field_table.AUDIO}),
    ("chat", "modalities", {"modalities": ["text", "audio"]}),
    ("chat", "web_search_options", {"web_search_options": {}}),  # empty: the search with its defaults
    ("chat", "response_format", {"response_format": {"type": "json_object"}}),
    ("chat", "logprobs", {"logprobs": True}),
    ("completions", "logprobs", {"logprobs": 0}),  # 0 still asks for each token's own logprob
    ("chat", "n", {"n": 2}),
    ("completions", "prompt", {"prompt": ["One", "Two"]}),
    ("completions", "suffix", {"suffix": "The end."}),
    ("completions", "echo", {"echo": True}),
    ("completions", "best_of", {"best_of": 2}),
    ("completions", "seed", {"seed": 7}),
]


@pytest.mark.parametrize(("api", "field", "extra"), REFUSED, ids=[f"{api}-{field}-{i}" for i, (api, field, _) in enumerate(REFUSED)])
def test_fields_anthropic_cannot_honour_are_refused_by_name(claude: tuple[AnthropicStub, str], client: openai.OpenAI, api: str,
                                                           field: str, extra: dict[str, Any]) -> None:
    field_table.refused_by_name(client, api, "m", extra, field, claude[0].seen, target="claude")


def test_the_readme_says_what_anthropic_refuses() -> None:
    assert field_table.refused("anthropic") == {field for _, field, _ in REFUSED}


def test_values_that_ask_for_nothing_are_not_refused(claude: tuple[AnthropicStub, str], client: openai.OpenAI) -> None:
    client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}], user="ann", extra_body={
        "presence_penalty": 0, "frequency_penalty": 0, "repetition_penalty": 1, "typical_p": 1, "logit_bias": {}, "logprobs": False,
        "response_format": {"type": "text"}, "modalities": ["text"], "metadata": {"a": "b"}, "store": True, "service_tier": "auto"})
    sent = claude[0].seen[-1]
    assert sent["metadata"] == {"user_id": "ann"} and set(sent) == {"model", "max_tokens", "messages", "metadata"}
    client.completions.create(model="m", prompt="x", best_of=1, n=1)
    assert claude[0].seen[-1]["messages"] == [{"role": "user", "content": "x"}]


# -------------------------------------------------------------------------- the Messages front


def sdk(url: str, **headers: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=url, api_key=KEY, max_retries=0, default_headers=headers)


def test_anthropic_sdk_in_front_of_an_openai_target(openai_stub: tuple[OpenAIStub, str], start_proxy: ProxyFactory) -> None:
    stub = openai_stub[0]
    url = start_proxy({"targets": {"default": "o", "o": {"url": openai_stub[1]}}}).url
    message = sdk(url).messages.create(model="gpt-x", max_tokens=50, system="Be kind.", stop_sequences=["\n\n"],
                                       messages=[{"role": "user", "content": "Hello"}])
    assert stub.seen[-1].path == "/v1/chat/completions"
    assert stub.seen[-1].body == {"model": "gpt-x", "max_tokens": 50, "stop": ["\n\n"],
                                  "messages": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hello"}]}
    assert message.content[0].type == "text" and message.content[0].text == "alpha says: Hello"
    assert message.stop_reason == "end_turn" and message.usage.input_tokens == 3 and message.usage.output_tokens == 4
    with sdk(url).messages.stream(model="gpt-x", max_tokens=50, messages=[{"role": "user", "content": "Stream"}]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "alpha says: Stream" and final.stop_reason == "end_turn"


def test_anthropic_sdk_with_tools_in_front_of_an_openai_target(openai_stub: tuple[OpenAIStub, str], start_proxy: ProxyFactory) -> None:
    url = start_proxy({"targets": {"default": "o", "o": {"url": openai_stub[1]}}}).url
    call = {"id": "call_9", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}
    message = sdk(url).messages.create(
        model="m", max_tokens=50, messages=[{"role": "user", "content": "Weather?"}],
        tools=[{"name": "weather", "input_schema": {"type": "object"}}],
        extra_body={"stub": {"message": {"role": "assistant", "content": None, "tool_calls": [call]}, "finish_reason": "tool_calls"}},
    )
    assert openai_stub[0].seen[-1].body["tools"] == [{"type": "function", "function": {"name": "weather", "description": "",
                                                                                       "parameters": {"type": "object"}}}]
    block = message.content[0]
    assert block.type == "tool_use" and block.name == "weather" and block.input == {"city": "Paris"} and block.id == "call_9"
    assert message.stop_reason == "tool_use"


def test_anthropic_sdk_in_front_of_tgi(stack: ExitStack, start_proxy: ProxyFactory) -> None:
    tgi = TGIStub()
    url = start_proxy({"targets": {"default": "t", "t": {"type": "tgi", "url": stack.enter_context(serve(tgi.app())).url,
                                                        "prompter": "chatml"}}}).url
    message = sdk(url).messages.create(model="m", max_tokens=20, messages=[{"role": "user", "content": "Hi"}])
    assert tgi.seen[-1]["inputs"] == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert message.content[0].type == "text" and message.content[0].text == "Hello there, friend."
    with sdk(url).messages.stream(model="m", max_tokens=20, messages=[{"role": "user", "content": "Hi"}]) as stream:
        assert "".join(stream.text_stream) == "Hello there, friend."
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    # Ended at one of the request's stop sequences: the Messages API says which, stream and not.
    stopped = sdk(url).messages.create(model="m", max_tokens=20, messages=[{"role": "user", "content": "Hi"}], stop_sequences=[" friend"])
    assert (stopped.content[0].text, stopped.stop_reason, stopped.stop_sequence) == ("Hello there,", "stop_sequence", " friend")  # type: ignore[union-attr]
    with sdk(url).messages.stream(model="m", max_tokens=20, messages=[{"role": "user", "content": "Hi"}],
                                  stop_sequences=[" friend"]) as stream:
        final = stream.get_final_message()
    assert (final.stop_reason, final.stop_sequence) == ("stop_sequence", " friend")
    # Counting a request's tokens: TGI's /tokenize of the prompt the request would make.
    counted = sdk(url).messages.count_tokens(model="m", system="Be brief.", messages=[{"role": "user", "content": "Hi there"}])
    assert tgi.paths[-1] == "/tokenize"
    assert counted.input_tokens == len(tgi.seen[-1]["inputs"].split()) == 7  # the stub counts words: the whole ChatML prompt


def test_anthropic_front_errors_in_anthropic_shape(openai_stub: tuple[OpenAIStub, str], start_proxy: ProxyFactory) -> None:
    url = start_proxy({"targets": {"default": "o", "o": {"url": openai_stub[1]}}}).url
    openai_stub[0].fail = (429, "slow down")
    with pytest.raises(anthropic.RateLimitError) as info:
        sdk(url).messages.create(model="m", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert info.value.body == {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}
    # The proxy's own refusals too, in the Messages API's shape, with its error types.
    with pytest.raises(anthropic.AuthenticationError) as refused:
        anthropic.Anthropic(base_url=url, api_key="wrong", max_retries=0).messages.create(
            model="m", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert refused.value.body["type"] == "error" and refused.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    assert refused.value.body["error"]["message"].startswith("Incorrect API key")  # type: ignore[index]
    with pytest.raises(anthropic.BadRequestError) as bad:
        sdk(url).messages.create(model="m", max_tokens=5, messages=[{"role": "system", "content": "x"}])  # type: ignore[typeddict-item]
    assert bad.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    with pytest.raises(anthropic.BadRequestError, match="'thinking' \\(extended thinking\\) reaches Anthropic targets only; target 'o'"):
        sdk(url).messages.create(model="m", max_tokens=2048, messages=[{"role": "user", "content": "x"}],
                                 thinking={"type": "enabled", "budget_tokens": 1024})
    with pytest.raises(anthropic.NotFoundError) as missing:
        sdk(url).messages.count_tokens(model="m", messages=[{"role": "user", "content": "x"}])
    assert missing.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]


def test_messages_relayed_to_an_anthropic_target_and_recorded(claude: tuple[AnthropicStub, str], proxy: str, tmp_path: Path) -> None:
    stub = claude[0]
    message = sdk(proxy).messages.create(model="claude-x", max_tokens=30, messages=[{"role": "user", "content": "Hi"}])
    assert message.content[0].type == "text" and message.content[0].text == "Hello from Claude."
    assert stub.headers[-1]["x-api-key"] == "sk-ant-test"  # the target's key, not the client's
    with sdk(proxy).messages.stream(model="claude-x", max_tokens=30, messages=[{"role": "user", "content": "Again"}]) as stream:
        assert "".join(stream.text_stream) == "Hello from Claude."
    deadline = time.monotonic() + 5
    found: list[dict[str, Any]] = []
    while len(found) < 2 and time.monotonic() < deadline:
        found = [r for f in (tmp_path / "datasets").glob("*.jsonl") for r in read_jsonl(f)]
        time.sleep(0.05)
    plain, streamed = sorted(found, key=lambda r: r["meta"]["created"])
    assert plain["conversations"] == [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello from Claude."}]
    assert streamed["conversations"][-1] == {"from": "gpt", "value": "Hello from Claude."}
    assert plain["meta"]["endpoint"] == "/v1/messages" and plain["meta"]["usage"]["prompt_tokens"] == 11
    assert streamed["meta"]["cut_short"] is False and streamed["meta"]["finish_reason"] == "stop"
