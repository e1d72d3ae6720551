"""OpenAI clients talking to llama.cpp's ``llama-server`` (``/completion``) through the proxy; the stub
server checks every request and answers with llama-server's shapes and SSE framing."""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any

import openai
import pytest

from . import field_table
from .conftest import KEY, ProxyFactory, http
from .servers import serve
from .stubs.llamacpp_upstream import LlamaCppStub

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}]
CHATML = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n"
LLAMA2 = "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi! [/INST]"


@pytest.fixture
def llama(stack: ExitStack) -> tuple[LlamaCppStub, str]:
    stub = LlamaCppStub()
    return stub, stack.enter_context(serve(stub.app())).url


def start(start_proxy: ProxyFactory, url: str, prompter: str = "llama2-chat", **target: Any) -> str:
    return start_proxy({"targets": {"default": "local", "local": {"type": "llamacpp", "url": url, "prompter": prompter, **target}}}).url


@pytest.fixture
def proxy(llama: tuple[LlamaCppStub, str], start_proxy: ProxyFactory) -> str:
    return start(start_proxy, llama[1])


@pytest.fixture
def client(proxy: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy + "/v1", api_key=KEY, max_retries=0)


def test_chat(llama: tuple[LlamaCppStub, str], client: openai.OpenAI) -> None:
    answer = client.chat.completions.create(model="llama-2", messages=CHAT)
    # The template's <s> is left for the server, which adds a BOS to every string prompt.
    assert llama[0].seen[-1] == {"prompt": LLAMA2, "stream": False, "cache_prompt": True, "stop": ["</s>", "[INST]"]}
    assert answer.choices[0].message.content == "Hello there, friend."
    assert answer.choices[0].finish_reason == "stop"
    assert answer.id.startswith("chatcmpl-") and answer.model == "llama-2"
    assert answer.usage is not None
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens, answer.usage.total_tokens) == (7, 6, 13)


def test_chatml_prompter_and_cache_prompt_option(llama: tuple[LlamaCppStub, str], start_proxy: ProxyFactory) -> None:
    url = start(start_proxy, llama[1], prompter="chatml", options={"cache_prompt": False})
    openai.OpenAI(base_url=url + "/v1", api_key=KEY).chat.completions.create(model="m", messages=CHAT)
    assert llama[0].seen[-1]["prompt"] == CHATML and llama[0].seen[-1]["cache_prompt"] is False


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"temperature": 0}, {"temperature": 0}),
        ({"temperature": 0.7, "top_p": 0.9, "seed": 42}, {"temperature": 0.7, "top_p": 0.9, "seed": 42}),
        ({"max_tokens": 50, "max_completion_tokens": 30}, {"n_predict": 30}),
        ({"frequency_penalty": 0.5, "presence_penalty": -1}, {"frequency_penalty": 0.5, "presence_penalty": -1}),
        ({"top_k": 40, "min_p": 0.05, "typical_p": 0.9, "repetition_penalty": 1.1},
         {"top_k": 40, "min_p": 0.05, "typical_p": 0.9, "repeat_penalty": 1.1}),
        ({"response_format": {"type": "json_object"}}, {"json_schema": {"type": "object"}}),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "array"}}}},
         {"json_schema": {"type": "array"}}),
        # OpenAI's token id → bias map, as the [[token id, bias]] pairs every llama-server takes.
        ({"logit_bias": {"15043": -100, "7": 2.5}}, {"logit_bias": [[15043, -100], [7, 2.5]]}),
        ({"logit_bias": {}}, {}),
    ],
)
def test_parameters(llama: tuple[LlamaCppStub, str], client: openai.OpenAI, extra: dict[str, Any], expected: dict[str, Any]) -> None:
    client.chat.completions.create(model="m", messages=CHAT, extra_body=extra)
    sent = llama[0].seen[-1]
    assert {k: v for k, v in sent.items() if k not in ("prompt", "stream", "cache_prompt", "stop")} == expected


def test_stop_types_give_finish_reasons(llama: tuple[LlamaCppStub, str], client: openai.OpenAI) -> None:
    stub = llama[0]
    answer = client.chat.completions.create(model="m", messages=CHAT, stop=[", fr"])
    assert stub.seen[-1]["stop"] == [", fr", "</s>", "[INST]"]
    assert answer.choices[0].message.content == "Hello there" and answer.choices[0].finish_reason == "stop"  # word
    answer = client.chat.completions.create(model="m", messages=CHAT, max_tokens=2)
    assert answer.choices[0].message.content == "Hello there" and answer.choices[0].finish_reason == "length"  # limit
    stub.reply = ["a", "[IN", "ST]", "b"]
    answer = client.chat.completions.create(model="m", messages=CHAT)
    assert answer.choices[0].message.content == "a" and answer.choices[0].finish_reason == "stop"


def test_stream(llama: tuple[LlamaCppStub, str], client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(model="m", messages=CHAT, stream=True, stream_options={"include_usage": True}))
    assert llama[0].seen[-1]["stream"] is True
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content] == \
        ["Hello", " there", ",", " friend", "."]
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].usage is not None and (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (7, 6)
    assert len({c.id for c in chunks}) == 1
    limited = list(client.chat.completions.create(model="m", messages=CHAT, stream=True, max_tokens=3))
    assert limited[-1].choices[0].finish_reason == "length"


def test_n_takes_n_calls_with_seeds_counting_up(llama: tuple[LlamaCppStub, str], client: openai.OpenAI) -> None:
    answer = client.chat.completions.create(model="m", messages=CHAT, n=2, seed=10)
    assert sorted(s["seed"] for s in llama[0].seen[-2:]) == [10, 11]
    assert [c.message.content for c in answer.choices] == ["Hello there, friend."] * 2
    chunks = list(client.chat.completions.create(model="m", messages=CHAT, n=2, stream=True))
    assert {c.choices[0].index for c in chunks if c.choices} == {0, 1}


def test_completions(llama: tuple[LlamaCppStub, str], client: openai.OpenAI) -> None:
    stub = llama[0]
    answer = client.completions.create(model="m", prompt="<s>Once upon a time", max_tokens=3)
    assert stub.seen[-1] == {"prompt": "<s>Once upon a time", "stream": False, "cache_prompt": True, "n_predict": 3,
                             "stop": ["</s>", "[INST]"]}  # a completion prompt is sent exactly as given
    assert answer.object == "text_completion" and answer.choices[0].text == "Hello there,"
    assert answer.choices[0].finish_reason == "length"
    two = client.completions.create(model="m", prompt=["A", "B"])
    assert sorted(s["prompt"] for s in stub.seen[-2:]) == ["A", "B"] and [c.index for c in two.choices] == [0, 1]
    streamed = "".join(c.choices[0].text for c in client.completions.create(model="m", prompt="x", stream=True) if c.choices)
    assert streamed == "Hello there, friend."


# Each field llama.cpp's /completion cannot honour, in a request of the API it belongs to: (api, field, extra body).
REFUSED: list[tuple[str, str, dict[str, Any]]] = [
    ("chat", "functions", {"functions": [{"name": "weather", "parameters": {"type": "object", "properties": {}}}]}),
    ("chat", "reasoning_effort", {"reasoning_effort": "high"}),
    ("chat", "prediction", {"prediction": field_table.PREDICTION}),
    ("chat", "audio", {"audio": field_table.AUDIO}),
    ("chat", "modalities", {"modalities": ["text", "audio"]}),
    ("chat", "web_search_options", {"web_search_options": {}}),  # empty: the search with its defaults
    ("completions", "reasoning_effort", {"reasoning_effort": "low"}),
    ("completions", "suffix", {"suffix": "The end."}),
    ("completions", "echo", {"echo": True}),
    ("completions", "best_of", {"best_of": 3, "n": 2}),
]


@pytest.mark.parametrize(("api", "field", "extra"), REFUSED, ids=[f"{api}-{field}" for api, field, _ in REFUSED])
def test_fields_llamacpp_cannot_honour_are_refused_by_name(llama: tuple[LlamaCppStub, str], client: openai.OpenAI, api: str,
                                                          field: str, extra: dict[str, Any]) -> None:
    field_table.refused_by_name(client, api, "m", extra, field, llama[0].seen)


def test_the_readme_says_what_llamacpp_refuses() -> None:
    assert field_table.refused("llamacpp") == {field for _, field, _ in REFUSED}


def test_best_of_no_more_than_n_is_n_answers(llama: tuple[LlamaCppStub, str], client: openai.OpenAI) -> None:
    answer = client.completions.create(model="m", prompt="Once", n=2, best_of=2)
    assert len(answer.choices) == 2 and all("best_of" not in s for s in llama[0].seen[-2:])


def test_llamacpp_errors_pass_through(llama: tuple[LlamaCppStub, str], client: openai.OpenAI) -> None:
    stub = llama[0]
    stub.n_ctx = 3
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="m", messages=CHAT)
    assert "exceeds the available context size" in str(info.value)
    assert info.value.body["code"] == "exceed_context_size_error"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError):
        list(client.chat.completions.create(model="m", messages=CHAT, stream=True))
    stub.n_ctx = 4096
    stub.fail = (503, "unavailable_error", "Loading model")
    with pytest.raises(openai.InternalServerError) as info2:
        client.completions.create(model="m", prompt="x")
    assert info2.value.status_code == 503 and "Loading model" in str(info2.value)


def test_errors_inside_a_stream(llama: tuple[LlamaCppStub, str], client: openai.OpenAI) -> None:
    stub = llama[0]
    stub.stream_error_after = 0
    with pytest.raises(openai.InternalServerError) as info:
        list(client.chat.completions.create(model="m", messages=CHAT, stream=True))
    assert "Compute error." in str(info.value)
    stub.stream_error_after = 2
    got = []
    with pytest.raises(openai.APIError) as info2:
        for chunk in client.chat.completions.create(model="m", messages=CHAT, stream=True):
            got.append(chunk.choices[0].delta.content or "")
    assert "Compute error." in str(info2.value) and "".join(got) == "Hello there"


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        ("/v1/chat/completions", {"model": "m", "messages": "hi"}, "'messages' must be a list"),
        ("/v1/chat/completions", {"model": "m", "messages": CHAT, "seed": -5}, "'seed' must be between 0 and 4294967295"),
        ("/v1/chat/completions", {"model": "m", "messages": CHAT, "top_k": 1.5}, "'top_k' must be a whole number"),
        ("/v1/chat/completions", {"model": "m", "messages": CHAT, "top_p": 2}, "'top_p' must be between 0 and 1"),
        ("/v1/chat/completions", {"model": "m", "messages": CHAT, "response_format": {"type": "json_schema"}}, "schema must be"),
        ("/v1/chat/completions", {"model": "m", "messages": CHAT, "logprobs": True, "top_logprobs": 21}, "from 0 to 20"),
        ("/v1/chat/completions", {"model": "m", "messages": CHAT, "top_logprobs": 2}, "'top_logprobs' needs 'logprobs': true"),
        ("/v1/completions", {"model": "m", "prompt": "x", "logprobs": 6}, "'logprobs' must be an integer from 0 to 5"),
        ("/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
         "image"),
        ("/v1/completions", {"model": "m", "prompt": [1, 2, 3]}, "token ids cannot be sent"),
        ("/v1/chat/completions", {"model": "m", "messages": CHAT, "logit_bias": [[15043, -100]]}, "'logit_bias' must be an object"),
        ("/v1/chat/completions", {"model": "m", "messages": CHAT, "logit_bias": {"Hello": -100}}, "keys are token ids"),
        ("/v1/chat/completions", {"model": "m", "messages": CHAT, "logit_bias": {"15043": -101}}, "from -100 to 100"),
        ("/v1/completions", {"model": "m", "prompt": "x", "best_of": 0}, "'best_of' must be at least 1"),
    ],
)
def test_bad_requests_are_400s(llama: tuple[LlamaCppStub, str], proxy: str, path: str, body: dict[str, Any], message: str) -> None:
    r = http.post(proxy + path, json=body)
    assert r.status_code == 400, r.text
    assert message in r.json()["error"]["message"]
    assert llama[0].seen == []
