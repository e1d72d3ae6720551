"""OpenAI clients talking to Ollama through the proxy; the stub Ollama checks every request as Ollama
decodes it and answers in its shapes (NDJSON when streaming)."""

from __future__ import annotations

import base64
import json
from contextlib import ExitStack
from typing import Any

import openai
import pytest

from . import field_table
from .conftest import KEY, ProxyFactory, http
from .servers import serve
from .stubs.ollama_upstream import OllamaStub

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}]
LLAMA2 = "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi! [/INST]"
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n fake image").decode()
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                           "required": ["city"]}}}


@pytest.fixture
def ollama(stack: ExitStack) -> tuple[OllamaStub, str]:
    stub = OllamaStub()
    return stub, stack.enter_context(serve(stub.app())).url


def start(start_proxy: ProxyFactory, url: str, **target: Any) -> str:
    return start_proxy({"targets": {"default": "local", "local": {"type": "ollama", "url": url, **target}}}).url


@pytest.fixture
def proxy(ollama: tuple[OllamaStub, str], start_proxy: ProxyFactory) -> str:
    return start(start_proxy, ollama[1])


@pytest.fixture
def client(proxy: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy + "/v1", api_key=KEY, max_retries=0)


def test_chat(ollama: tuple[OllamaStub, str], client: openai.OpenAI) -> None:
    stub = ollama[0]
    answer = client.chat.completions.create(model="llama3.2", messages=CHAT)
    assert stub.paths[-1] == "/api/chat"
    assert stub.seen[-1] == {"model": "llama3.2", "stream": False, "messages": CHAT, "options": {}}
    assert answer.choices[0].message.content == "Hello there, friend."
    assert answer.choices[0].finish_reason == "stop"
    assert answer.id.startswith("chatcmpl-") and answer.object == "chat.completion" and answer.model == "llama3.2"
    assert answer.usage is not None
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (stub_prompt_tokens(CHAT), 5)


def stub_prompt_tokens(messages: Any) -> int:
    return len(json.dumps(messages).split())


@pytest.mark.parametrize(
    ("extra", "options", "top"),
    [
        ({"temperature": 0}, {"temperature": 0}, {}),
        ({"temperature": 0.7, "top_p": 0.9, "seed": 42}, {"temperature": 0.7, "top_p": 0.9, "seed": 42}, {}),
        ({"max_tokens": 50, "max_completion_tokens": 30}, {"num_predict": 30}, {}),
        ({"frequency_penalty": 0.5, "presence_penalty": -1}, {"frequency_penalty": 0.5, "presence_penalty": -1}, {}),
        ({"top_k": 40, "min_p": 0.05, "repetition_penalty": 1.1}, {"top_k": 40, "min_p": 0.05, "repeat_penalty": 1.1}, {}),
        ({"typical_p": 0.9, "logit_bias": {}, "user": "ann", "metadata": {"a": "b"}, "store": True}, {"typical_p": 0.9}, {}),
        ({"stop": ["END", "\nUser:"]}, {"stop": ["END", "\nUser:"]}, {}),
        ({"options": {"num_ctx": 8192, "mirostat": 2}, "temperature": 1}, {"num_ctx": 8192, "mirostat": 2, "temperature": 1}, {}),
        ({"response_format": {"type": "json_object"}}, {}, {"format": "json"}),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}}, {},
         {"format": {"type": "object"}}),
        ({"reasoning_effort": "minimal"}, {}, {"think": "low"}),
        ({"reasoning_effort": "none"}, {}, {"think": False}),
        ({"think": True, "keep_alive": "1h"}, {}, {"think": True, "keep_alive": "1h"}),
    ],
)
def test_parameters(ollama: tuple[OllamaStub, str], client: openai.OpenAI, extra: dict[str, Any], options: dict[str, Any],
                    top: dict[str, Any]) -> None:
    client.chat.completions.create(model="llama3.2", messages=CHAT, extra_body=extra)
    sent = ollama[0].seen[-1]
    assert sent["options"] == options
    assert {k: v for k, v in sent.items() if k not in ("model", "stream", "messages", "options")} == top


def test_target_options(ollama: tuple[OllamaStub, str], start_proxy: ProxyFactory) -> None:
    url = start(start_proxy, ollama[1], options={"num_ctx": 4096, "keep_alive": "30m"})
    openai.OpenAI(base_url=url + "/v1", api_key=KEY).chat.completions.create(model="llama3.2", messages=CHAT, max_tokens=9)
    sent = ollama[0].seen[-1]
    assert sent["options"] == {"num_ctx": 4096, "num_predict": 9} and sent["keep_alive"] == "30m"


def test_images_go_as_base64(ollama: tuple[OllamaStub, str], client: openai.OpenAI) -> None:
    client.chat.completions.create(model="llama3.2", messages=[{"role": "user", "content": [
        {"type": "text", "text": "What is this? "},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        {"type": "text", "text": "Be short."}]}])
    assert ollama[0].seen[-1]["messages"] == [{"role": "user", "content": "What is this? Be short.", "images": [PNG]}]


def test_tool_calls_both_ways(ollama: tuple[OllamaStub, str], client: openai.OpenAI) -> None:
    stub = ollama[0]
    stub.tool_calls = [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]
    answer = client.chat.completions.create(model="llama3.2", messages=CHAT, tools=[WEATHER])  # type: ignore[list-item]
    assert stub.seen[-1]["tools"] == [WEATHER]
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    calls = choice.message.tool_calls or []
    assert len(calls) == 1 and calls[0].type == "function" and calls[0].id.startswith("call")
    assert calls[0].function.name == "get_weather" and json.loads(calls[0].function.arguments) == {"city": "Paris"}

    follow_up = [*CHAT, choice.message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": calls[0].id, "content": "18°C, sunny"}]
    client.chat.completions.create(model="llama3.2", messages=follow_up, tools=[WEATHER])  # type: ignore[arg-type,list-item]
    assert stub.seen[-1]["messages"][2:] == [
        {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "content": "18°C, sunny", "tool_name": "get_weather"},
    ]
    client.chat.completions.create(model="llama3.2", messages=CHAT, tools=[WEATHER], tool_choice="none")  # type: ignore[list-item]
    assert "tools" not in stub.seen[-1]


def test_tool_calls_streamed(ollama: tuple[OllamaStub, str], client: openai.OpenAI) -> None:
    ollama[0].tool_calls = [{"function": {"name": "get_weather", "arguments": {"city": "Oslo"}}},
                            {"function": {"name": "get_weather", "arguments": {"city": "Rome"}}}]
    chunks = list(client.chat.completions.create(model="llama3.2", messages=CHAT, tools=[WEATHER], stream=True))  # type: ignore[list-item]
    calls = [c for chunk in chunks if chunk.choices for c in chunk.choices[0].delta.tool_calls or []]
    assert [(c.index, c.function.name, json.loads(c.function.arguments or "")) for c in calls if c.function] == [
        (0, "get_weather", {"city": "Oslo"}), (1, "get_weather", {"city": "Rome"})]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_parallel_tool_calls_false_keeps_the_first_call(ollama: tuple[OllamaStub, str], client: openai.OpenAI) -> None:
    """Ollama has no such switch: a model may still call two tools at once, and the client that asked for one gets one."""
    ollama[0].tool_calls = [{"function": {"name": "get_weather", "arguments": {"city": "Oslo"}}},
                            {"function": {"name": "get_weather", "arguments": {"city": "Rome"}}}]
    answer = client.chat.completions.create(model="llama3.2", messages=CHAT, tools=[WEATHER], parallel_tool_calls=False)  # type: ignore[list-item]
    calls = answer.choices[0].message.tool_calls or []
    assert [json.loads(c.function.arguments) for c in calls] == [{"city": "Oslo"}] and answer.choices[0].finish_reason == "tool_calls"
    chunks = list(client.chat.completions.create(model="llama3.2", messages=CHAT, tools=[WEATHER], stream=True,  # type: ignore[list-item]
                                                 parallel_tool_calls=False))
    streamed = [c for chunk in chunks if chunk.choices for c in chunk.choices[0].delta.tool_calls or []]
    assert [(c.index, json.loads(c.function.arguments or "")) for c in streamed if c.function] == [(0, {"city": "Oslo"})]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    both = client.chat.completions.create(model="llama3.2", messages=CHAT, tools=[WEATHER], parallel_tool_calls=True)  # type: ignore[list-item]
    assert len(both.choices[0].message.tool_calls or []) == 2


# Each field Ollama cannot honour, in a request of the API it belongs to: (api, field, extra body).
REFUSED: list[tuple[str, str, dict[str, Any]]] = [
    ("chat", "functions", {"functions": [{"name": "weather", "parameters": {"type": "object", "properties": {}}}]}),
    ("chat", "logit_bias", {"logit_bias": {"15043": -100}}),
    ("chat", "prediction", {"prediction": field_table.PREDICTION}),
    ("chat", "audio", {"audio": field_table.AUDIO}),
    ("chat", "modalities", {"modalities": ["text", "audio"]}),
    ("chat", "web_search_options", {"web_search_options": {}}),  # empty: the search with its defaults
    ("chat", "logprobs", {"logprobs": True, "top_logprobs": 2}),
    ("completions", "logprobs", {"logprobs": 0}),  # 0 still asks for each token's own logprob
    ("chat", "tool_choice", {"tools": [WEATHER], "tool_choice": "required"}),
    ("completions", "logit_bias", {"logit_bias": {"15043": -100}}),
    ("completions", "echo", {"echo": True}),
    ("completions", "best_of", {"best_of": 3, "n": 2}),
]


@pytest.mark.parametrize(("api", "field", "extra"), REFUSED, ids=[f"{api}-{field}" for api, field, _ in REFUSED])
def test_fields_ollama_cannot_honour_are_refused_by_name(ollama: tuple[OllamaStub, str], client: openai.OpenAI, api: str, field: str,
                                                        extra: dict[str, Any]) -> None:
    field_table.refused_by_name(client, api, "llama3.2", extra, field, ollama[0].seen)


def test_the_readme_says_what_ollama_refuses() -> None:
    assert field_table.refused("ollama") == {field for _, field, _ in REFUSED}


def test_thinking_becomes_reasoning_content(ollama: tuple[OllamaStub, str], client: openai.OpenAI) -> None:
    answer = client.chat.completions.create(model="llama3.2", messages=CHAT, reasoning_effort="high")
    assert ollama[0].seen[-1]["think"] == "high"
    message = answer.choices[0].message
    assert message.content == "Hello there, friend." and getattr(message, "reasoning_content", None) == "Let me think."
    chunks = list(client.chat.completions.create(model="llama3.2", messages=CHAT, extra_body={"think": True}, stream=True))
    reasoning = "".join(getattr(c.choices[0].delta, "reasoning_content", None) or "" for c in chunks if c.choices)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert (reasoning, text) == ("Let me think.", "Hello there, friend.")


def test_stream(ollama: tuple[OllamaStub, str], client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(model="llama3.2", messages=CHAT, stream=True, stream_options={"include_usage": True}))
    assert ollama[0].seen[-1]["stream"] is True
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello there, friend."
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5
    assert len({c.id for c in chunks}) == 1 and all(c.object == "chat.completion.chunk" for c in chunks)


def test_stop_strings_and_length(ollama: tuple[OllamaStub, str], client: openai.OpenAI) -> None:
    answer = client.chat.completions.create(model="llama3.2", messages=CHAT, stop=", fr")
    assert answer.choices[0].message.content == "Hello there" and answer.choices[0].finish_reason == "stop"
    answer = client.chat.completions.create(model="llama3.2", messages=CHAT, max_tokens=2)
    assert answer.choices[0].message.content == "Hello there" and answer.choices[0].finish_reason == "length"
    chunks = list(client.chat.completions.create(model="llama3.2", messages=CHAT, max_tokens=2, stream=True))
    assert chunks[-1].choices[0].finish_reason == "length"


def test_n_takes_n_calls_with_seeds_counting_up(ollama: tuple[OllamaStub, str], client: openai.OpenAI) -> None:
    stub = ollama[0]
    answer = client.chat.completions.create(model="llama3.2", messages=CHAT, n=3, seed=7)
    assert sorted(s["options"]["seed"] for s in stub.seen[-3:]) == [7, 8, 9]
    assert [c.index for c in answer.choices] == [0, 1, 2]
    assert answer.usage is not None and answer.usage.completion_tokens == 15


def test_completions(ollama: tuple[OllamaStub, str], client: openai.OpenAI) -> None:
    stub = ollama[0]
    answer = client.completions.create(model="llama3.2", prompt="Once upon a time", max_tokens=3)
    assert stub.paths[-1] == "/api/generate"
    assert stub.seen[-1] == {"model": "llama3.2", "stream": False, "raw": True, "prompt": "Once upon a time", "options": {"num_predict": 3}}
    assert answer.object == "text_completion" and answer.choices[0].text == "Hello there,"
    assert answer.choices[0].finish_reason == "length"
    two = client.completions.create(model="llama3.2", prompt=["A", "B"])
    assert sorted(s["prompt"] for s in stub.seen[-2:]) == ["A", "B"] and [c.index for c in two.choices] == [0, 1]
    streamed = "".join(c.choices[0].text for c in client.completions.create(model="llama3.2", prompt="x", stream=True) if c.choices)
    assert streamed == "Hello there, friend."
    client.completions.create(model="llama3.2", prompt="def f(", suffix="    return x")
    assert stub.seen[-1]["suffix"] == "    return x" and "raw" not in stub.seen[-1]  # the model's template places the suffix


def test_raw_prompt_renders_chats_with_the_prompter(ollama: tuple[OllamaStub, str], start_proxy: ProxyFactory) -> None:
    stub = ollama[0]
    url = start(start_proxy, ollama[1], prompter="llama2-chat", options={"raw_prompt": True})
    client = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)
    answer = client.chat.completions.create(model="llama3.2", messages=CHAT, stop="END")
    assert stub.paths[-1] == "/api/generate"
    assert stub.seen[-1] == {"model": "llama3.2", "stream": False, "raw": True, "prompt": LLAMA2,
                             "options": {"stop": ["END", "</s>", "[INST]"]}}
    assert answer.choices[0].message.content == "Hello there, friend." and answer.object == "chat.completion"
    chunks = list(client.chat.completions.create(model="llama3.2", messages=CHAT, stream=True))
    assert stub.paths[-1] == "/api/generate"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello there, friend."


def test_models_list(ollama: tuple[OllamaStub, str], client: openai.OpenAI) -> None:
    models = client.models.list().data
    assert ollama[0].paths[-1] == "/api/tags"
    assert [(m.id, m.owned_by, m.object) for m in models] == [
        ("llama3.2:latest", "library", "model"), ("hf.co/bartowski/Qwen3-8B-GGUF:Q4_K_M", "bartowski", "model")]
    assert models[0].created == 1748779200


def test_ollama_errors_pass_through(ollama: tuple[OllamaStub, str], client: openai.OpenAI) -> None:
    stub = ollama[0]
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="mistral", messages=CHAT)
    assert 'model "mistral" not found, try pulling it first' in str(info.value)
    with pytest.raises(openai.NotFoundError):
        list(client.chat.completions.create(model="mistral", messages=CHAT, stream=True))
    stub.fail = (503, "server busy, please try again.  maximum pending requests exceeded")
    with pytest.raises(openai.InternalServerError) as info2:
        client.completions.create(model="llama3.2", prompt="x")
    assert info2.value.status_code == 503 and "maximum pending requests exceeded" in str(info2.value)


def test_errors_inside_a_stream(ollama: tuple[OllamaStub, str], client: openai.OpenAI) -> None:
    stub = ollama[0]
    stub.stream_error_after = 0  # before any token: still a real HTTP error
    with pytest.raises(openai.InternalServerError) as info:
        list(client.chat.completions.create(model="llama3.2", messages=CHAT, stream=True))
    assert "unexpected EOF" in str(info.value)
    stub.stream_error_after = 2
    got = []
    with pytest.raises(openai.APIError) as info2:
        for chunk in client.chat.completions.create(model="llama3.2", messages=CHAT, stream=True):
            got.append(chunk.choices[0].delta.content or "")
    assert "unexpected EOF" in str(info2.value) and "".join(got) == "Hello there"


def image(url: str) -> dict[str, Any]:
    return {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"messages": CHAT}, "'model' is required"),
        ({"model": "llama3.2", "messages": []}, "'messages' is empty"),
        ({"model": "llama3.2", "messages": CHAT, "temperature": 3}, "'temperature' must be between 0 and 2"),
        ({"model": "llama3.2", "messages": [image("https://x/y.png")]}, "send it as a data URI"),
        ({"model": "llama3.2", "messages": [image("data:image/png;base64,%%")]}, "base64 data is damaged"),
        ({"model": "llama3.2", "messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]},
         "content part of type 'input_audio'"),
        ({"model": "llama3.2", "messages": [{"role": "function", "name": "f", "content": "x"}]}, "has role 'function'"),
        ({"model": "llama3.2", "messages": [{"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]}]}, "arguments is not valid JSON"),
        ({"model": "llama3.2", "messages": CHAT, "tools": [{"name": "f"}]}, "'tools' must be a list"),
        ({"model": "llama3.2", "messages": CHAT, "think": "max"}, "'think' must be"),
        ({"model": "llama3.2", "messages": CHAT, "reasoning_effort": "huge"}, "'reasoning_effort' must be one of"),
        ({"model": "llama3.2", "messages": CHAT, "response_format": {"type": "grammar"}}, "response_format type 'grammar'"),
        ({"model": "llama3.2", "messages": CHAT, "options": [1]}, "'options' must be an object"),
    ],
)
def test_bad_requests_are_400s(ollama: tuple[OllamaStub, str], proxy: str, body: dict[str, Any], message: str) -> None:
    r = http.post(proxy + "/v1/chat/completions", json=body)
    assert r.status_code == 400, r.text
    assert message in r.json()["error"]["message"]
    assert ollama[0].seen == []
