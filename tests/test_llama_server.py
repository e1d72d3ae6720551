"""The proxy against llama.cpp's own ``llama-server`` running a tiny random-weight model (built by
``tests/backends/llama_server.py``): the ``llamacpp`` type's translation onto ``/completion`` and the
``openai`` type's pass-through, with the OpenAI SDK, sync and async, and what each leaves in the dataset.

The model's words are gibberish, but greedy (temperature 0) and the same for the same prompt, so an
answer through the proxy can be compared with the server's own answer to the same prompt."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from .backends.llama import LlamaServer, running
from .conftest import KEY, ProxyFactory, http
from .dataset_kit import records

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}]
# What the chatml prompter makes of CHAT: the prompt llama-server is sent (its Qwen2 tokenizer adds no BOS).
PROMPT = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n"
GREEDY: dict[str, Any] = {"temperature": 0}


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    # Two slots of 2048 tokens: room for a long generation to be cut off, and a second request beside it.
    with running(tmp_path_factory.mktemp("llama"), "qwen2", slots=2, context=4096) as server:
        yield server


@pytest.fixture
def proxy(llama: LlamaServer, start_proxy: ProxyFactory) -> str:
    return start_proxy({"targets": {"default": "llama", "llama": {"type": "llamacpp", "url": llama.url, "prompter": "chatml"},
                                    "passthrough": {"type": "openai", "url": llama.url}}}).url


@pytest.fixture
def client(proxy: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy + "/v1", api_key=KEY, max_retries=0)


def direct(llama: LlamaServer, prompt: str, **params: Any) -> dict[str, Any]:
    """llama-server's own ``/completion`` answer, asked without the proxy."""
    r = httpx.post(llama.url + "/completion", json={"prompt": prompt, **GREEDY, **params}, timeout=60)
    r.raise_for_status()
    return r.json()  # type: ignore[no-any-return]


def tokens(llama: LlamaServer, text: str) -> list[int]:
    r = httpx.post(llama.url + "/tokenize", json={"content": text, "add_special": True}, timeout=10)
    return r.json()["tokens"]  # type: ignore[no-any-return]


def idle(llama: LlamaServer, within: float) -> bool:
    """Whether every slot of the server stops generating within ``within`` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not any(slot["is_processing"] for slot in llama.slots()):
            return True
        time.sleep(0.02)
    return False


# ----------------------------------------------------------------------------- the llamacpp translation


def test_chat_is_the_servers_answer_to_the_rendered_prompt(llama: LlamaServer, client: openai.OpenAI, tmp_path: Path) -> None:
    answer = client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=8, **GREEDY)  # type: ignore[arg-type]
    own = direct(llama, PROMPT, n_predict=8)
    assert answer.choices[0].message.content == own["content"] and own["content"]
    assert answer.choices[0].finish_reason == "length" and answer.model == "tiny"
    assert answer.usage is not None
    # The counts are the server's: its tokenizer's length of the prompt, and n_predict tokens generated.
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (len(tokens(llama, PROMPT)), 8)
    (record,) = records(tmp_path / "datasets", 1)
    assert record["conversations"] == [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Hi!"},
                                       {"from": "gpt", "value": own["content"]}]
    assert record["meta"]["finish_reason"] == "length" and record["meta"]["cut_short"] is False


def test_async_stream_is_the_same_answer_in_pieces(llama: LlamaServer, proxy: str, tmp_path: Path) -> None:
    async def run() -> tuple[list[str], list[Any]]:
        async with openai.AsyncOpenAI(base_url=proxy + "/v1", api_key=KEY, max_retries=0) as aclient:
            stream = await aclient.chat.completions.create(model="tiny", messages=CHAT, max_tokens=12, stream=True,  # type: ignore[arg-type]
                                                           stream_options={"include_usage": True}, **GREEDY)
            chunks = [chunk async for chunk in stream]
        return [c.choices[0].delta.content or "" for c in chunks if c.choices], chunks

    pieces, chunks = asyncio.run(run())
    own = direct(llama, PROMPT, n_predict=12)
    assert "".join(pieces) == own["content"] and len([p for p in pieces if p]) > 1
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 12
    (record,) = records(tmp_path / "datasets", 1)
    # A stream that ran to its end is recorded whole, not as cut short.
    assert record["conversations"][-1]["value"] == own["content"]
    assert record["meta"]["stream"] is True and record["meta"]["cut_short"] is False and record["meta"]["finish_reason"] == "length"


def test_stop_strings_end_the_answer_before_them(llama: LlamaServer, client: openai.OpenAI) -> None:
    whole = direct(llama, PROMPT, n_predict=12)["content"]
    stop = whole[len(whole) // 2:len(whole) // 2 + 4]  # a piece of what the model says, so it is met
    before = whole[:whole.index(stop)]
    answer = client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=12, stop=[stop], **GREEDY)  # type: ignore[arg-type]
    assert answer.choices[0].message.content == before and answer.choices[0].finish_reason == "stop"
    stream = client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=12, stop=stop, stream=True, **GREEDY)  # type: ignore[arg-type]
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == before and chunks[-1].choices[0].finish_reason == "stop"


def test_completions_with_max_tokens(llama: LlamaServer, client: openai.OpenAI, tmp_path: Path) -> None:
    answer = client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=5, **GREEDY)  # type: ignore[arg-type]
    own = direct(llama, "Once upon a time", n_predict=5)
    assert answer.choices[0].text == own["content"] and answer.choices[0].finish_reason == "length"
    assert answer.usage is not None and answer.usage.completion_tokens == 5
    (record,) = records(tmp_path / "datasets", 1)
    assert record["conversations"] == [{"from": "human", "value": "Once upon a time"}, {"from": "gpt", "value": own["content"]}]


def test_chat_logprobs_are_the_servers(llama: LlamaServer, client: openai.OpenAI) -> None:
    answer = client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=6, logprobs=True, top_logprobs=3, **GREEDY)  # type: ignore[arg-type]
    own = direct(llama, PROMPT, n_predict=6, n_probs=3)["completion_probabilities"]
    choice = answer.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content is not None
    got = choice.logprobs.content
    assert [t.token for t in got] == [t["token"] for t in own] and "".join(t.token for t in got) == choice.message.content
    assert [t.logprob for t in got] == pytest.approx([t["logprob"] for t in own])
    assert [t.bytes for t in got] == [t["bytes"] for t in own]
    assert [[a.token for a in t.top_logprobs] for t in got] == [[a["token"] for a in t["top_logprobs"]] for t in own]
    # Greedy: the chosen token is the likeliest of the alternatives.
    assert all(t.top_logprobs[0].token == t.token and len(t.top_logprobs) == 3 for t in got)
    # Asked for logprobs without alternatives: each token's own, and an empty list beside it.
    bare = client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=2, logprobs=True, **GREEDY)  # type: ignore[arg-type]
    assert bare.choices[0].logprobs is not None and bare.choices[0].logprobs.content is not None
    assert [t.top_logprobs for t in bare.choices[0].logprobs.content] == [[], []]
    plain = client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=2, **GREEDY)  # type: ignore[arg-type]
    assert plain.choices[0].logprobs is None


def test_streamed_logprobs_come_with_their_text(llama: LlamaServer, client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=6, logprobs=True, top_logprobs=2, stream=True,  # type: ignore[arg-type]
                                            **GREEDY)
    pieces = [c.choices[0] for c in stream if c.choices and c.choices[0].delta.content]
    own = direct(llama, PROMPT, n_predict=6, n_probs=2)["completion_probabilities"]
    streamed = [t for p in pieces for t in (p.logprobs.content if p.logprobs and p.logprobs.content else [])]
    assert [t.token for t in streamed] == [t["token"] for t in own]
    assert all("".join(t.token for t in p.logprobs.content) == p.delta.content for p in pieces if p.logprobs and p.logprobs.content)


def test_completion_logprobs_in_the_completions_shape(llama: LlamaServer, client: openai.OpenAI) -> None:
    answer = client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=4, logprobs=2, **GREEDY)  # type: ignore[arg-type]
    own = direct(llama, "Once upon a time", n_predict=4, n_probs=2)["completion_probabilities"]
    probs = answer.choices[0].logprobs
    assert probs is not None and probs.tokens is not None and probs.top_logprobs is not None and probs.text_offset is not None
    assert probs.tokens == [t["token"] for t in own] and "".join(probs.tokens) == answer.choices[0].text
    assert probs.token_logprobs == pytest.approx([t["logprob"] for t in own])
    assert [list(alts) for alts in probs.top_logprobs] == [[a["token"] for a in t["top_logprobs"]] for t in own]
    assert probs.text_offset == [sum(len(t) for t in probs.tokens[:i]) for i in range(len(probs.tokens))]
    # Streamed, the offsets run on from chunk to chunk.
    stream = client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=4, logprobs=2, stream=True, **GREEDY)  # type: ignore[arg-type]
    offsets = [o for c in stream if c.choices and c.choices[0].logprobs for o in c.choices[0].logprobs.text_offset or []]
    assert offsets == probs.text_offset


def test_logit_bias_reaches_the_servers_sampler(llama: LlamaServer, client: openai.OpenAI) -> None:
    """Banning the token greedy decoding picks first changes the answer, to the server's own answer with that ban."""
    first = direct(llama, PROMPT, n_predict=4, return_tokens=True)["tokens"][0]
    plain = client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=4, **GREEDY)  # type: ignore[arg-type]
    banned = client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=4, logit_bias={str(first): -100}, **GREEDY)  # type: ignore[arg-type]
    own = direct(llama, PROMPT, n_predict=4, logit_bias=[[first, -100]])["content"]
    assert banned.choices[0].message.content == own != plain.choices[0].message.content


def test_the_servers_tokenizer_through_the_proxy(llama: LlamaServer, proxy: str) -> None:
    counted = http.post(proxy + "/tokenize", json={"content": PROMPT, "add_special": True})
    assert counted.status_code == 200 and counted.json()["tokens"] == tokens(llama, PROMPT)
    back = http.post(proxy + "/detokenize", json={"tokens": counted.json()["tokens"]})
    assert back.json()["content"] == PROMPT


def test_counting_a_messages_requests_tokens(llama: LlamaServer, proxy: str) -> None:
    """The Anthropic SDK's count_tokens on a llama.cpp target: the server's own count of the prompt the request makes."""
    counted = anthropic.Anthropic(base_url=proxy, api_key=KEY, max_retries=0).messages.count_tokens(
        model="tiny", system="Be brief.", messages=[{"role": "user", "content": "Hi!"}])
    assert counted.input_tokens == len(tokens(llama, PROMPT)) > 0


def test_a_client_that_leaves_frees_the_servers_slot(llama: LlamaServer, proxy: str, tmp_path: Path) -> None:
    client = openai.OpenAI(base_url=proxy + "/v1", api_key=KEY, max_retries=0)
    started = time.monotonic()
    stream = client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=2000, stream=True, **GREEDY)  # type: ignore[arg-type]
    for _ in zip(stream, range(5), strict=False):
        pass
    assert any(slot["is_processing"] for slot in llama.slots())  # still generating: 2000 tokens take seconds here
    stream.close()
    # The proxy closes its upstream connection, and llama-server stops generating: the slot is free at once.
    assert idle(llama, within=1.0), llama.slots()
    assert time.monotonic() - started < 2.5
    (record,) = records(tmp_path / "datasets", 1)
    assert record["meta"]["cut_short"] is True and record["meta"]["cut_reason"] == "the client disconnected"


# ----------------------------------------------------------------------------- the openai pass-through


def test_openai_type_passes_chat_and_completions_through(llama: LlamaServer, proxy: str, tmp_path: Path) -> None:
    client = openai.OpenAI(base_url=proxy + "/v1", api_key=KEY, max_retries=0, default_headers={"target": "passthrough"})
    body = {"model": "tiny", "messages": CHAT, "max_tokens": 6, **GREEDY}
    own = httpx.post(llama.url + "/v1/chat/completions", json=body, timeout=30).json()
    answer = client.chat.completions.create(**body)
    assert answer.choices[0].message.content == own["choices"][0]["message"]["content"]
    assert answer.usage is not None and answer.usage.completion_tokens == own["usage"]["completion_tokens"] == 6
    pieces = [c.choices[0].delta.content or "" for c in client.chat.completions.create(**body, stream=True) if c.choices]
    assert "".join(pieces) == answer.choices[0].message.content
    text = client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=4, **GREEDY)  # type: ignore[arg-type]
    assert text.choices[0].text == direct(llama, "Once upon a time", n_predict=4)["content"]
    chat, streamed, completion = records(tmp_path / "datasets", 3)
    assert chat["conversations"][-1]["value"] == answer.choices[0].message.content
    assert streamed["meta"]["stream"] is True and streamed["meta"]["cut_short"] is False
    assert completion["conversations"] == [{"from": "human", "value": "Once upon a time"}, {"from": "gpt", "value": text.choices[0].text}]


def test_openai_type_passes_embeddings_through(tmp_path: Path, start_proxy: ProxyFactory) -> None:
    # llama-server computes embeddings only when started for it.
    with running(tmp_path, "qwen2", "--embeddings", "--pooling", "mean", slots=1, context=512) as embedder:
        url = start_proxy({"targets": {"default": "e", "e": {"type": "openai", "url": embedder.url}}}).url
        client = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)
        got = client.embeddings.create(model="tiny", input=["Hello", "world"])
        own = httpx.post(embedder.url + "/v1/embeddings", json={"model": "tiny", "input": ["Hello", "world"]}, timeout=30).json()
    for mine, theirs in zip(got.data, own["data"], strict=True):
        assert mine.embedding == pytest.approx(theirs["embedding"])
    assert len(got.data) == 2 and len(got.data[0].embedding) == 64  # the tiny model's width
    # Embeddings are not conversations: the dataset gets none of them.
    assert records(tmp_path / "datasets", 1, timeout=0.5) == []


def test_the_servers_errors_reach_the_client(llama: LlamaServer, client: openai.OpenAI) -> None:
    # A prompt longer than a slot's context: llama-server refuses it, and the client reads its reason.
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "word " * 3000}], max_tokens=2)
    assert "context" in str(info.value).lower()


# ------------------------------------------------------------------------- tool_choice held by a grammar

CITY = {"type": "function", "function": {"name": "weather", "description": "Weather in a city", "parameters": {
    "type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]}}, "required": ["city"],
    "additionalProperties": False}}}
TIME = {"type": "function", "function": {"name": "clock", "parameters": {
    "type": "object", "properties": {"zone": {"type": "string", "enum": ["UTC", "CET"]}}, "required": ["zone"],
    "additionalProperties": False}}}


def test_tool_choice_demanding_a_call_is_held_by_the_servers_grammar(llama: LlamaServer, start_proxy: ProxyFactory) -> None:
    """A random-weight model would never call a tool of its own accord; with tool_choice "required" or a named function
    the proxy sends llama.cpp a JSON schema only such a call satisfies, so the gibberish model must call one."""
    url = start_proxy({"targets": {"default": "llama", "llama": {"type": "llamacpp", "url": llama.url, "prompter": "qwen2.5"}}}).url
    client = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)
    ask: dict[str, Any] = {"model": "tiny", "messages": [{"role": "user", "content": "Weather?"}], "max_tokens": 120, **GREEDY}
    named = client.chat.completions.create(tools=[CITY, TIME], tool_choice={"type": "function", "function": {"name": "clock"}}, **ask)
    assert named.choices[0].finish_reason == "tool_calls" and named.choices[0].message.content is None
    call = named.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert call.function.name == "clock" and call.function.arguments  # type: ignore[union-attr]
    assert json.loads(call.function.arguments)["zone"] in ("UTC", "CET")  # type: ignore[union-attr]

    async def streamed() -> tuple[list[Any], str | None]:
        async with openai.AsyncOpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0) as aclient:
            stream = await aclient.chat.completions.create(tools=[CITY, TIME], tool_choice="required", stream=True, **ask)
            calls, finish = [], None
            async for chunk in stream:
                for choice in chunk.choices:
                    calls += choice.delta.tool_calls or []
                    finish = choice.finish_reason or finish
            return calls, finish

    calls, finish = asyncio.run(streamed())
    assert finish == "tool_calls" and len(calls) == 1 and calls[0].function.name in ("weather", "clock")
    assert set(json.loads(calls[0].function.arguments).values()) <= {"Paris", "Rome", "UTC", "CET"}


# --------------------------------------------------------------------- TGI's API in front of the server


def test_tgi_clients_get_token_details_from_the_servers_logprobs(llama: LlamaServer, start_proxy: ProxyFactory) -> None:
    """text_generation against llama-server's OpenAI routes through the proxy's TGI front: details.tokens and
    top_tokens (top_n_tokens) are the server's completions logprobs, streamed token by token as well."""
    import text_generation

    url = start_proxy({"targets": {"default": "cpp", "cpp": {"type": "openai", "url": llama.url}}}).url
    tg = text_generation.Client(url, headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
    answer = tg.generate("Hi!", max_new_tokens=6, do_sample=False, top_n_tokens=2)
    tokens = answer.details.tokens
    assert len(tokens) == answer.details.generated_tokens == 6
    assert "".join(t.text for t in tokens) == answer.generated_text
    assert all(t.logprob is not None and t.logprob <= 0 for t in tokens)
    assert [len(alternatives) for alternatives in answer.details.top_tokens] == [2] * 6
    # Greedy: each token is the best of its step.
    assert all(abs(t.logprob - step[0].logprob) < 1e-4 for t, step in zip(tokens, answer.details.top_tokens, strict=True))
    streamed = [r for r in tg.generate_stream("Hi!", max_new_tokens=6, do_sample=False, top_n_tokens=1) if not r.token.special]
    assert "".join(r.token.text for r in streamed) == answer.generated_text
    assert [round(r.token.logprob, 3) for r in streamed] == [round(t.logprob, 3) for t in tokens]
