"""OpenAI clients talking to a KoboldAI API server (KoboldCpp, KoboldAI United) through the proxy; the
stub checks every request as KoboldAI's schema does and answers like the legacy API or KoboldCpp."""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any

import openai
import pytest

from . import field_table
from .conftest import KEY, ProxyFactory, http
from .servers import serve
from .stubs.kobold_upstream import KoboldStub

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}]
LLAMA2 = "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi! [/INST]"
TEMPLATE_STOPS = ["</s>", "[INST]"]
WEATHER = {"type": "function", "function": {"name": "get_weather",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}


@pytest.fixture
def kobold(stack: ExitStack) -> tuple[KoboldStub, str]:
    stub = KoboldStub()
    return stub, stack.enter_context(serve(stub.app())).url


def start(start_proxy: ProxyFactory, url: str, **target: Any) -> str:
    return start_proxy({"targets": {"default": "local", "local": {"type": "kobold", "url": url, "prompter": "llama2-chat", **target}}}).url


@pytest.fixture
def proxy(kobold: tuple[KoboldStub, str], start_proxy: ProxyFactory) -> str:
    return start(start_proxy, kobold[1])


@pytest.fixture
def client(proxy: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy + "/v1", api_key=KEY, max_retries=0)


def chat_text(chunks: list[Any]) -> list[str]:
    return [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]


def test_chat(kobold: tuple[KoboldStub, str], client: openai.OpenAI) -> None:
    stub = kobold[0]
    answer = client.chat.completions.create(model="kobold", messages=CHAT)
    assert stub.paths[-1] == "/api/v1/generate"
    # The template's <s> is left for the server, which adds its own BOS.
    assert stub.seen[-1] == {"prompt": LLAMA2, "max_length": 512, "stop_sequence": TEMPLATE_STOPS}
    assert answer.choices[0].message.content == "Hello there, friend."
    assert answer.choices[0].finish_reason == "stop"
    assert answer.id.startswith("chatcmpl-") and answer.model == "kobold"
    assert answer.usage is None  # the KoboldAI API counts no tokens


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        # Kobold refuses temperature 0: greedy is the one likeliest token, top_k 1.
        ({"temperature": 0}, {"top_k": 1}),
        ({"temperature": 0.7, "top_p": 0}, {"top_k": 1}),
        ({"temperature": 0, "top_k": 40}, {"top_k": 1}),
        ({"temperature": 0.7, "top_p": 0.9, "seed": 42}, {"temperature": 0.7, "top_p": 0.9, "sampler_seed": 42}),
        ({"max_tokens": 50, "max_completion_tokens": 30}, {"max_length": 30}),
        ({"presence_penalty": 2, "frequency_penalty": 0.5}, {"rep_pen": 2.0}),
        ({"frequency_penalty": 1}, {"rep_pen": 1.4142}),
        ({"repetition_penalty": 1.1, "presence_penalty": 2}, {"rep_pen": 1.1}),
        ({"top_k": 40, "top_a": 0.2, "tfs": 0.95, "typical_p": 0.9, "rep_pen_range": 320},
         {"top_k": 40, "top_a": 0.2, "tfs": 0.95, "typical": 0.9, "rep_pen_range": 320}),
        ({"response_format": {"type": "text"}, "logit_bias": {}, "user": "ann", "metadata": {"a": "b"}, "store": True}, {}),
    ],
)
def test_parameters(kobold: tuple[KoboldStub, str], client: openai.OpenAI, extra: dict[str, Any], expected: dict[str, Any]) -> None:
    client.chat.completions.create(model="m", messages=CHAT, extra_body=extra)
    sent = kobold[0].seen[-1]
    assert {k: v for k, v in sent.items() if k not in ("prompt", "stop_sequence")} == {"max_length": 512, **expected}


def test_the_stub_refuses_temperature_zero_as_kobold_does(kobold: tuple[KoboldStub, str]) -> None:
    r = http.post(kobold[1] + "/api/v1/generate", json={"prompt": "x", "temperature": 0})
    assert r.status_code == 422 and r.json() == {"detail": {"temperature": ["Must be greater than 0."]}}


def test_target_options(kobold: tuple[KoboldStub, str], start_proxy: ProxyFactory) -> None:
    url = start(start_proxy, kobold[1], options={"max_length": 200, "max_context_length": 4096})
    openai.OpenAI(base_url=url + "/v1", api_key=KEY).chat.completions.create(model="m", messages=CHAT)
    assert kobold[0].seen[-1] == {"prompt": LLAMA2, "max_length": 200, "max_context_length": 4096, "stop_sequence": TEMPLATE_STOPS}


def test_stop_strings_are_cut(kobold: tuple[KoboldStub, str], client: openai.OpenAI) -> None:
    stub = kobold[0]
    stub.reply = ["Sure", ".", "\nUser: next", " more"]
    answer = client.chat.completions.create(model="m", messages=CHAT, stop="\nUser:")
    assert stub.seen[-1]["stop_sequence"] == ["\nUser:", *TEMPLATE_STOPS]  # the client's first
    assert answer.choices[0].message.content == "Sure." and answer.choices[0].finish_reason == "stop"
    # Kobold takes 10 stop sequences; the client's come first, and one left out is still cut here.
    stub.reply = ["one", " two", " three"]
    stops = [f"S{i}" for i in range(11)] + [" three"]
    answer = client.completions.create(model="m", prompt="count", stop=stops)
    assert stub.seen[-1]["stop_sequence"] == stops[:10]
    assert answer.choices[0].text == "one two" and answer.choices[0].finish_reason == "stop"


def test_stream_cuts_stops_across_token_boundaries(kobold: tuple[KoboldStub, str], client: openai.OpenAI) -> None:
    stub = kobold[0]
    stub.reply = ["Hi", " there", "\nUs", "er:", " more"]
    chunks = list(client.chat.completions.create(model="m", messages=CHAT, stop="\nUser:", stream=True))
    assert stub.paths[-1] == "/api/extra/generate/stream"
    assert "".join(chat_text(chunks)) == "Hi there" and all("\nUs" not in p for p in chat_text(chunks))
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[-1].choices[0].finish_reason == "stop"
    assert len({c.id for c in chunks}) == 1
    # Text that only looks like the start of a stop string is held back, then sent whole.
    stub.reply = ["a\nU", "nusual", " end"]
    chunks = list(client.chat.completions.create(model="m", messages=CHAT, stop="\nUser:", stream=True))
    assert "".join(chat_text(chunks)) == "a\nUnusual end" and chunks[-1].choices[0].finish_reason == "stop"


def test_stream_finish_reasons_are_inferred(kobold: tuple[KoboldStub, str], client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(model="m", messages=CHAT, max_tokens=2, stream=True,
                                                 stream_options={"include_usage": True}))
    assert chat_text(chunks) == ["Hello", " there"]
    assert chunks[-1].choices[0].finish_reason == "length"  # as many tokens as max_length
    assert all(c.usage is None for c in chunks)  # no counts to report
    chunks = list(client.chat.completions.create(model="m", messages=CHAT, max_tokens=9, stream=True))
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_koboldcpp_counts_and_finish_reasons(kobold: tuple[KoboldStub, str], client: openai.OpenAI) -> None:
    stub = kobold[0]
    stub.flavor = "koboldcpp"
    answer = client.chat.completions.create(model="m", messages=CHAT, max_tokens=2)
    assert answer.choices[0].message.content == "Hello there" and answer.choices[0].finish_reason == "length"
    assert answer.usage is not None and (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (7, 2)
    # KoboldCpp trims the stop sequence and calls it "length"; its token count tells the truth.
    answer = client.chat.completions.create(model="m", messages=CHAT, stop=", fr")
    assert answer.choices[0].message.content == "Hello there" and answer.choices[0].finish_reason == "stop"
    chunks = list(client.chat.completions.create(model="m", messages=CHAT, stream=True))
    assert "".join(chat_text(chunks)) == "Hello there, friend." and chunks[-1].choices[0].finish_reason == "stop"
    chunks = list(client.chat.completions.create(model="m", messages=CHAT, stream=True, max_tokens=3))
    assert chunks[-1].choices[0].finish_reason == "length"
    client.chat.completions.create(model="m", messages=CHAT, extra_body={"min_p": 0.05})
    assert stub.seen[-1]["min_p"] == 0.05  # KoboldCpp's own sampler fields pass through


def test_n_takes_n_calls_with_seeds_counting_up(kobold: tuple[KoboldStub, str], client: openai.OpenAI) -> None:
    answer = client.chat.completions.create(model="m", messages=CHAT, n=2, seed=3)
    assert sorted(s["sampler_seed"] for s in kobold[0].seen[-2:]) == [3, 4]
    assert [c.index for c in answer.choices] == [0, 1]
    chunks = list(client.chat.completions.create(model="m", messages=CHAT, n=2, stream=True))
    assert {c.choices[0].index for c in chunks if c.choices} == {0, 1}


def test_completions(kobold: tuple[KoboldStub, str], client: openai.OpenAI) -> None:
    stub = kobold[0]
    answer = client.completions.create(model="m", prompt="<s>Once upon a time", max_tokens=3)
    assert stub.seen[-1] == {"prompt": "<s>Once upon a time", "max_length": 3, "stop_sequence": TEMPLATE_STOPS}
    assert answer.object == "text_completion" and answer.choices[0].text == "Hello there,"
    two = client.completions.create(model="m", prompt=["A", "B"])
    assert sorted(s["prompt"] for s in stub.seen[-2:]) == ["A", "B"] and [c.index for c in two.choices] == [0, 1]
    streamed = "".join(c.choices[0].text for c in client.completions.create(model="m", prompt="x", stream=True) if c.choices)
    assert streamed == "Hello there, friend." and stub.paths[-1] == "/api/extra/generate/stream"


# Each field the KoboldAI API cannot honour, in a request of the API it belongs to: (api, field, extra body).
REFUSED: list[tuple[str, str, dict[str, Any]]] = [
    ("chat", "functions", {"functions": [{"name": "weather", "parameters": {"type": "object", "properties": {}}}]}),
    ("chat", "logit_bias", {"logit_bias": {"15043": -100}}),
    ("chat", "reasoning_effort", {"reasoning_effort": "high"}),
    ("chat", "prediction", {"prediction": field_table.PREDICTION}),
    ("chat", "audio", {"audio": field_table.AUDIO}),
    ("chat", "modalities", {"modalities": ["text", "audio"]}),
    ("chat", "web_search_options", {"web_search_options": {}}),  # empty: the search with its defaults
    ("chat", "response_format", {"response_format": {"type": "json_object"}}),
    ("chat", "response_format", {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}}),
    ("chat", "logprobs", {"logprobs": True, "top_logprobs": 2}),
    ("completions", "logprobs", {"logprobs": 0}),  # 0 still asks for each token's own logprob
    ("chat", "presence_penalty", {"presence_penalty": -1}),
    ("chat", "frequency_penalty", {"frequency_penalty": -0.5, "presence_penalty": 1}),
    ("chat", "tool_choice", {"tools": [WEATHER], "tool_choice": "required"}),
    ("chat", "tool_choice", {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}),
    ("completions", "suffix", {"suffix": "The end."}),
    ("completions", "echo", {"echo": True}),
    ("completions", "best_of", {"best_of": 2}),
]


@pytest.mark.parametrize(("api", "field", "extra"), REFUSED, ids=[f"{api}-{field}-{i}" for i, (api, field, _) in enumerate(REFUSED)])
def test_fields_kobold_cannot_honour_are_refused_by_name(kobold: tuple[KoboldStub, str], start_proxy: ProxyFactory, api: str,
                                                        field: str, extra: dict[str, Any]) -> None:
    url = start(start_proxy, kobold[1], prompter="qwen2.5")  # a template with a place for tools
    client = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)
    field_table.refused_by_name(client, api, "m", extra, field, kobold[0].seen)


def test_the_readme_says_what_kobold_refuses() -> None:
    assert field_table.refused("kobold") == {field for _, field, _ in REFUSED}


def test_kobold_errors_pass_through(kobold: tuple[KoboldStub, str], client: openai.OpenAI) -> None:
    stub = kobold[0]
    with pytest.raises(openai.UnprocessableEntityError) as info:
        client.chat.completions.create(model="m", messages=CHAT, max_tokens=1000)
    assert "max_length: Must be greater than or equal to 1 and less than or equal to 512." in str(info.value)
    with pytest.raises(openai.UnprocessableEntityError) as info:
        client.chat.completions.create(model="m", messages=CHAT, extra_body={"min_p": 0.1})
    assert "min_p: Unknown field." in str(info.value)
    with pytest.raises(openai.UnprocessableEntityError):
        list(client.chat.completions.create(model="m", messages=CHAT, max_tokens=1000, stream=True))
    stub.fail = (503, "service_unavailable", "Server is busy; please try again later.")
    with pytest.raises(openai.InternalServerError) as info2:
        client.completions.create(model="m", prompt="x")
    assert info2.value.status_code == 503 and "Server is busy" in str(info2.value)
    assert info2.value.body["code"] == "service_unavailable"  # type: ignore[index]


def test_errors_inside_a_stream(kobold: tuple[KoboldStub, str], client: openai.OpenAI) -> None:
    stub = kobold[0]
    stub.flavor = "koboldcpp"
    stub.stream_error_after = 0
    with pytest.raises(openai.InternalServerError) as info:
        list(client.chat.completions.create(model="m", messages=CHAT, stream=True))
    assert "stopped the generation with an error" in str(info.value)
    stub.stream_error_after = 2
    got = []
    with pytest.raises(openai.APIError) as info2:
        for chunk in client.chat.completions.create(model="m", messages=CHAT, stream=True):
            got.append(chunk.choices[0].delta.content or "")
    assert "stopped the generation with an error" in str(info2.value) and "".join(got) == "Hello there"


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        ("/v1/chat/completions", {"model": "m", "messages": []}, "'messages' is empty"),
        ("/v1/chat/completions", {"model": "m", "messages": CHAT, "temperature": 3}, "'temperature' must be between 0 and 2"),
        ("/v1/chat/completions", {"model": "m", "messages": CHAT, "seed": -1}, "'seed' must be between 0 and"),
        ("/v1/chat/completions", {"model": "m", "messages": CHAT, "repetition_penalty": 0.9}, "'repetition_penalty' must be between 1"),
        ("/v1/chat/completions", {"model": "m", "messages": CHAT, "n": 0}, "'n' must be at least 1"),
        ("/v1/completions", {"model": "m", "prompt": "x", "stop": 5}, "'stop' must be a string or a list"),
    ],
)
def test_bad_requests_are_400s(kobold: tuple[KoboldStub, str], proxy: str, path: str, body: dict[str, Any], message: str) -> None:
    r = http.post(proxy + path, json=body)
    assert r.status_code == 400, r.text
    assert message in r.json()["error"]["message"]
    assert kobold[0].seen == []
