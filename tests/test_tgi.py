"""OpenAI clients talking to a TGI server through the proxy, and TGI clients talking to an
OpenAI-compatible server through it; the stub TGI validates every request the way TGI does."""

from __future__ import annotations

import json
import re
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import openai
import pytest

from . import field_table
from .conftest import AUTH, KEY, ROOT, ProxyFactory, http
from .dataset_kit import records
from .servers import serve
from .stubs.openai_upstream import OpenAIStub
from .stubs.tgi_upstream import TGIStub

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}]
LLAMA2 = "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi! [/INST]"


@pytest.fixture
def tgi(stack: ExitStack) -> tuple[TGIStub, str]:
    stub = TGIStub()
    return stub, stack.enter_context(serve(stub.app())).url


@pytest.fixture
def proxy(tgi: tuple[TGIStub, str], start_proxy: ProxyFactory) -> str:
    return start_proxy({"targets": {"default": "local", "local": {"type": "tgi", "url": tgi[1], "prompter": "llama2-chat"}}}).url


@pytest.fixture
def client(proxy: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy + "/v1", api_key=KEY, max_retries=0)


def test_chat(tgi: tuple[TGIStub, str], client: openai.OpenAI) -> None:
    stub = tgi[0]
    answer = client.chat.completions.create(model="llama-2-7b-chat", messages=CHAT)
    sent = stub.seen[-1]
    assert stub.paths[-1] == "/generate"
    assert sent["inputs"] == LLAMA2  # rendered by the prompter, its leading <s> left for TGI to add
    assert sent["parameters"] == {"details": True, "do_sample": True, "stop": ["</s>", "[INST]"]}
    assert answer.choices[0].message.content == "Hello there, friend."
    assert answer.choices[0].finish_reason == "stop"
    assert answer.model == "llama-2-7b-chat"
    assert answer.id.startswith("chatcmpl-") and len(answer.id) > 20
    assert answer.object == "chat.completion" and answer.created > 0
    assert answer.usage is not None
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens, answer.usage.total_tokens) == (7, 6, 13)
    assert client.chat.completions.create(model="m", messages=CHAT).id != answer.id


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"temperature": 0}, {"do_sample": False}),
        ({"temperature": 0.7, "top_p": 1}, {"do_sample": True, "temperature": 0.7}),
        ({"top_p": 0.9}, {"do_sample": True, "top_p": 0.9}),
        ({"frequency_penalty": 0, "presence_penalty": 0}, {"do_sample": True}),
        ({"frequency_penalty": 0.5, "presence_penalty": 2}, {"do_sample": True, "frequency_penalty": 0.5, "repetition_penalty": 2.0}),
        ({"presence_penalty": -2}, {"do_sample": True, "repetition_penalty": 0.5}),
        ({"max_tokens": 50}, {"do_sample": True, "max_new_tokens": 50}),
        ({"max_tokens": 50, "max_completion_tokens": 30}, {"do_sample": True, "max_new_tokens": 30}),
        ({"seed": 42}, {"do_sample": True, "seed": 42}),
        ({"top_k": 40, "repetition_penalty": 1.1, "typical_p": 0.9}, {"do_sample": True, "top_k": 40, "repetition_penalty": 1.1,
                                                                      "typical_p": 0.9}),
        ({"response_format": {"type": "json_object"}}, {"do_sample": True, "grammar": {"type": "json", "value": {"type": "object"}}}),
    ],
)
def test_parameters(tgi: tuple[TGIStub, str], client: openai.OpenAI, extra: dict[str, Any], expected: dict[str, Any]) -> None:
    client.chat.completions.create(model="m", messages=CHAT, extra_body=extra)
    params = tgi[0].seen[-1]["parameters"]
    assert {k: v for k, v in params.items() if k not in ("details", "stop")} == expected


def test_stops_merged_client_first_within_the_limit(tgi: tuple[TGIStub, str], client: openai.OpenAI) -> None:
    stub = tgi[0]
    client.chat.completions.create(model="m", messages=CHAT, stop="END")
    assert stub.seen[-1]["parameters"]["stop"] == ["END", "</s>", "[INST]"]
    stub.reply = ["one", " two", " three", " four"]
    answer = client.chat.completions.create(model="m", messages=CHAT, stop=["A", "B", "C", " three"])
    assert stub.seen[-1]["parameters"]["stop"] == ["A", "B", "C", " three"]  # four is TGI's limit: the client's kept
    assert answer.choices[0].message.content == "one two"
    assert answer.choices[0].finish_reason == "stop"
    # A template stop that did not fit is still honoured by the proxy.
    stub.reply = ["x", "[INST]", " more"]
    answer = client.chat.completions.create(model="m", messages=CHAT, stop=["A", "B", "C", "D"])
    assert answer.choices[0].message.content == "x"


def test_stop_string_stripped_from_answers(tgi: tuple[TGIStub, str], client: openai.OpenAI) -> None:
    stub = tgi[0]
    stub.reply = ["Sure", ".", "\nUser:", " next"]
    answer = client.chat.completions.create(model="m", messages=CHAT, stop="\nUser:")
    assert answer.choices[0].message.content == "Sure."
    assert answer.choices[0].finish_reason == "stop"
    stub.reply = ["a", "b", "c"]
    assert client.chat.completions.create(model="m", messages=CHAT, max_tokens=2).choices[0].finish_reason == "length"


def stream_text(client: openai.OpenAI, **kwargs: Any) -> tuple[list[str], list[Any]]:
    chunks = list(client.chat.completions.create(model="m", messages=CHAT, stream=True, **kwargs))
    return [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content], chunks


def test_stream(tgi: tuple[TGIStub, str], client: openai.OpenAI) -> None:
    pieces, chunks = stream_text(client)
    assert tgi[0].paths[-1] == "/generate_stream"
    assert "".join(pieces) == "Hello there, friend."
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert "</s>" not in "".join(pieces)  # the EOS token is special: never text


def test_stream_strips_stops_across_token_boundaries(tgi: tuple[TGIStub, str], client: openai.OpenAI) -> None:
    stub = tgi[0]
    stub.reply = ["Hi", " there", "\nUs", "er:", " more"]
    pieces, chunks = stream_text(client, stop="\nUser:")
    assert "".join(pieces) == "Hi there"
    assert all("\nUs" not in p for p in pieces)
    assert chunks[-1].choices[0].finish_reason == "stop"
    # Text that only looks like the start of a stop string is held back, then sent whole.
    stub.reply = ["a\nU", "nusual", " end"]
    pieces, _ = stream_text(client, stop="\nUser:")
    assert "".join(pieces) == "a\nUnusual end"


def test_stream_include_usage(tgi: tuple[TGIStub, str], client: openai.OpenAI) -> None:
    _, chunks = stream_text(client, stream_options={"include_usage": True})
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (7, 6)
    assert all(c.usage is None for c in chunks[:-1])


def test_a_stream_without_usage_asked_is_recorded_with_tgis_counts(tgi: tuple[TGIStub, str], client: openai.OpenAI,
                                                                    tmp_path: Path) -> None:
    """The client did not ask for usage, so none is sent; the record still has the counts TGI reported."""
    _, chunks = stream_text(client)
    _, merged = stream_text(client, n=2)
    assert all(c.usage is None and c.choices for c in [*chunks, *merged])
    one, first, second = records(tmp_path / "datasets", 3)
    assert one["meta"]["usage"] == {"prompt_tokens": 7, "completion_tokens": 6, "total_tokens": 13}
    assert first["meta"]["usage"] == second["meta"]["usage"] == {"prompt_tokens": 7, "completion_tokens": 12, "total_tokens": 19}


def test_tgis_own_api_relayed_to_a_tgi_target_is_recorded(tgi: tuple[TGIStub, str], proxy: str, tmp_path: Path) -> None:
    """/generate, /generate_stream and the compat route (the text-generation client's) pass through untouched, and
    each exchange is recorded as the completion it is: the prompt, the text, TGI's counts."""
    text_generation = pytest.importorskip("text_generation")
    tg = text_generation.Client(proxy, headers=AUTH, timeout=10)  # posts to "/", stream or not
    assert tg.generate("Hello", max_new_tokens=5).generated_text == "Hello there, friend."
    assert "".join(t.token.text for t in tg.generate_stream("Hey", max_new_tokens=5) if not t.token.special) == "Hello there, friend."
    assert http.post(proxy + "/generate", json={"inputs": "Plain", "parameters": {"details": True}}).status_code == 200
    with http.stream("POST", proxy + "/generate_stream", json={"inputs": "Streamed", "parameters": {"details": True}}) as r:
        assert r.status_code == 200 and sum(1 for line in r.iter_lines() if line.startswith("data:")) > 1
    assert tgi[0].paths == ["/", "/", "/generate", "/generate_stream"]
    found = records(tmp_path / "datasets", 4)
    assert [(r["meta"]["endpoint"], r["meta"]["stream"]) for r in found] == [
        ("/", False), ("/", True), ("/generate", False), ("/generate_stream", False)]
    assert [r["conversations"] for r in found] == [[{"from": "human", "value": q}, {"from": "gpt", "value": "Hello there, friend."}]
                                                   for q in ("Hello", "Hey", "Plain", "Streamed")]
    # /generate tells the prompt's length only with its prefill (decoder_input_details); the stream's details always do.
    assert [(r["meta"]["cut_short"], r["meta"]["finish_reason"], r["meta"]["usage"]) for r in found] == [
        (False, "length", {"completion_tokens": 5}), (False, "length", {"prompt_tokens": 1, "completion_tokens": 5, "total_tokens": 6}),
        (False, "stop", {"completion_tokens": 6}), (False, "stop", {"prompt_tokens": 1, "completion_tokens": 6, "total_tokens": 7})]
    assert found[0]["meta"]["params"]["max_tokens"] == 5


def test_tools_offered_to_a_template_without_a_place_for_them_are_refused(tgi: tuple[TGIStub, str], client: openai.OpenAI) -> None:
    """No bundled prompter renders tools yet: a request offering them is a 400 naming the prompter and the target, not a
    prompt silently without them; with tool_choice "none" the client asked for no tool use, and gets an answer."""
    weather = {"type": "function", "function": {"name": "weather", "parameters": {"type": "object", "properties": {}}}}
    sent = len(tgi[0].seen)
    with pytest.raises(openai.BadRequestError, match="prompter 'llama2-chat' of target 'local' has no place for them") as info:
        client.chat.completions.create(model="m", messages=CHAT, tools=[weather])  # type: ignore[list-item]
    assert info.value.param == "tools" and len(tgi[0].seen) == sent  # nothing went upstream
    answer = client.chat.completions.create(model="m", messages=CHAT, tools=[weather], tool_choice="none")  # type: ignore[list-item]
    assert answer.choices[0].message.content == "Hello there, friend."


def test_the_model_list_of_a_tgi_target_is_the_model_it_serves(tgi: tuple[TGIStub, str], client: openai.OpenAI) -> None:
    """Listing models on a TGI target gives the model the server serves (its /info), not the proxy's target names."""
    assert [m.id for m in client.models.list().data] == ["stub/llama"]


# Each field TGI's /generate cannot honour, in a request of the API it belongs to: (api, field, extra body).
REFUSED: list[tuple[str, str, dict[str, Any]]] = [
    ("chat", "functions", {"functions": [{"name": "weather", "parameters": {"type": "object", "properties": {}}}]}),
    ("chat", "logit_bias", {"logit_bias": {"50256": -100}}),
    ("chat", "prediction", {"prediction": field_table.PREDICTION}),
    ("chat", "audio", {"audio": field_table.AUDIO}),
    ("chat", "modalities", {"modalities": ["text", "audio"]}),
    ("chat", "reasoning_effort", {"reasoning_effort": "high"}),
    ("chat", "web_search_options", {"web_search_options": {}}),  # empty: the search with its defaults
    ("chat", "min_p", {"min_p": 0.1}),
    ("completions", "suffix", {"suffix": "The end."}),
    ("completions", "echo", {"echo": True}),
    ("completions", "best_of", {"best_of": 3, "n": 2}),
]


@pytest.mark.parametrize(("api", "field", "extra"), REFUSED, ids=[f"{api}-{field}" for api, field, _ in REFUSED])
def test_fields_tgi_cannot_honour_are_refused_by_name(tgi: tuple[TGIStub, str], client: openai.OpenAI, api: str, field: str,
                                                      extra: dict[str, Any]) -> None:
    field_table.refused_by_name(client, api, "m", extra, field, tgi[0].seen)


def test_the_readme_says_what_tgi_refuses() -> None:
    assert field_table.refused("tgi") == {field for _, field, _ in REFUSED}


def test_logprobs_from_tgis_token_details(tgi: tuple[TGIStub, str], client: openai.OpenAI) -> None:
    """Chat logprobs and top_logprobs (TGI's details.tokens and top_n_tokens), stream and not, and completions'."""
    stub = tgi[0]
    answer = client.chat.completions.create(model="m", messages=CHAT, logprobs=True, top_logprobs=2)
    assert stub.seen[-1]["parameters"]["top_n_tokens"] == 2
    content = answer.choices[0].logprobs.content  # type: ignore[union-attr]
    assert "".join(t.token for t in content) == answer.choices[0].message.content  # the EOS token is no text
    assert all(t.logprob == -0.5 and [a.token for a in t.top_logprobs] == [t.token, " else"] for t in content)
    plain = client.chat.completions.create(model="m", messages=CHAT)
    assert plain.choices[0].logprobs is None and "top_n_tokens" not in stub.seen[-1]["parameters"]
    streamed = [c for c in client.chat.completions.create(model="m", messages=CHAT, stream=True, logprobs=True, top_logprobs=1)
                if c.choices and c.choices[0].logprobs]
    tokens = [t for c in streamed for t in c.choices[0].logprobs.content]  # type: ignore[union-attr]
    assert "".join(t.token for t in tokens) == "Hello there, friend." and all(len(t.top_logprobs) == 1 for t in tokens)
    done = client.completions.create(model="m", prompt="Once", logprobs=2)
    probs = done.choices[0].logprobs
    assert probs is not None and "".join(probs.tokens or []) == done.choices[0].text
    assert probs.top_logprobs and all(set(d) == {tok, " else"} for d, tok in zip(probs.top_logprobs, probs.tokens or [], strict=True))


def test_n_by_best_of_and_by_several_calls(tgi: tuple[TGIStub, str], client: openai.OpenAI) -> None:
    stub = tgi[0]
    answer = client.chat.completions.create(model="m", messages=CHAT, n=2)
    assert stub.seen[-1]["parameters"]["best_of"] == 2
    assert [c.message.content for c in answer.choices] == ["Hello there, friend.", "Alt1 answer"]
    assert [c.index for c in answer.choices] == [0, 1]
    before = len(stub.seen)
    answer = client.chat.completions.create(model="m", messages=CHAT, n=3, seed=5)
    assert len(stub.seen) - before == 3
    assert sorted(b["parameters"]["seed"] for b in stub.seen[-3:]) == [5, 6, 7]
    assert [c.index for c in answer.choices] == [0, 1, 2]
    assert answer.usage is not None and answer.usage.prompt_tokens == 7 and answer.usage.completion_tokens == 18
    chunks = list(client.chat.completions.create(model="m", messages=CHAT, n=2, stream=True, stream_options={"include_usage": True}))
    texts: dict[int, str] = {}
    for c in chunks:
        for choice in c.choices:
            texts[choice.index] = texts.get(choice.index, "") + (choice.delta.content or "")
    assert texts == {0: "Hello there, friend.", 1: "Hello there, friend."}
    assert len({c.id for c in chunks}) == 1
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 12


def test_completions(tgi: tuple[TGIStub, str], client: openai.OpenAI) -> None:
    stub = tgi[0]
    answer = client.completions.create(model="m", prompt="Once upon a time", max_tokens=3)
    assert stub.seen[-1] == {"inputs": "Once upon a time",
                             "parameters": {"details": True, "do_sample": True, "max_new_tokens": 3, "stop": ["</s>", "[INST]"]}}
    assert answer.object == "text_completion" and answer.id.startswith("cmpl-")
    assert answer.choices[0].text == "Hello there," and answer.choices[0].finish_reason == "length"
    two = client.completions.create(model="m", prompt=["A", "B"])
    assert [s["inputs"] for s in stub.seen[-2:]] == ["A", "B"]
    assert [c.index for c in two.choices] == [0, 1]
    streamed = "".join(c.choices[0].text for c in client.completions.create(model="m", prompt="x", stream=True) if c.choices)
    assert streamed == "Hello there, friend."


def test_tgi_errors_pass_through(tgi: tuple[TGIStub, str], client: openai.OpenAI) -> None:
    stub = tgi[0]
    with pytest.raises(openai.UnprocessableEntityError) as info:
        client.chat.completions.create(model="m", messages=CHAT, extra_body={"top_k": -1})
    assert "Input validation error: `top_k` must be strictly positive" in str(info.value)
    assert info.value.body["code"] == "validation"  # type: ignore[index]
    stub.fail = (424, "generation", "Request failed during generation: boom")
    with pytest.raises(openai.APIStatusError) as info2:
        client.chat.completions.create(model="m", messages=CHAT)
    assert info2.value.status_code == 424 and "boom" in str(info2.value)


def test_error_before_the_first_token_of_a_stream_is_an_http_error(tgi: tuple[TGIStub, str], client: openai.OpenAI) -> None:
    with pytest.raises(openai.UnprocessableEntityError) as info:
        list(client.chat.completions.create(model="m", messages=CHAT, stream=True, extra_body={"top_k": -1}))
    assert "`top_k` must be strictly positive" in str(info.value)


def test_error_inside_a_stream_raises_in_the_sdk(tgi: tuple[TGIStub, str], client: openai.OpenAI) -> None:
    tgi[0].stream_error_after = 2
    got = []
    with pytest.raises(openai.APIError) as info:
        for chunk in client.chat.completions.create(model="m", messages=CHAT, stream=True):
            if chunk.choices and chunk.choices[0].delta.content:
                got.append(chunk.choices[0].delta.content)
    assert "CUDA out of memory" in str(info.value)
    assert got == ["Hello", " there"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"model": "m", "messages": "hi"}, "'messages' must be a list"),
        ({"model": "m", "messages": []}, "'messages' is empty"),
        ({"model": "m", "messages": CHAT, "temperature": "hot"}, "'temperature' must be a number"),
        ({"model": "m", "messages": CHAT, "max_tokens": "ten"}, "'max_tokens' must be a whole number"),
        ({"model": "m", "messages": CHAT, "temperature": 3}, "'temperature' must be between 0 and 2"),
        ({"model": "m", "messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]},
         "Conversation roles must alternate"),
    ],
)
def test_bad_requests_are_400s(tgi: tuple[TGIStub, str], proxy: str, body: dict[str, Any], message: str) -> None:
    before = len(tgi[0].seen)
    r = http.post(proxy + "/v1/chat/completions", json=body)
    assert r.status_code == 400, r.text
    assert message in r.json()["error"]["message"]
    assert len(tgi[0].seen) == before


SPEC = json.loads((ROOT / "tests" / "fixtures" / "tgi_openapi.json").read_text())


def validator(name: str) -> Any:
    """A JSON-schema validator for one schema of TGI's OpenAPI spec."""
    jsonschema = pytest.importorskip("jsonschema")
    schema = _openapi_to_jsonschema({"$ref": f"#/components/schemas/{name}"})
    schema["components"] = _openapi_to_jsonschema(SPEC["components"])
    return jsonschema.Draft202012Validator(schema)


def test_requests_sent_to_tgi_match_its_spec(tgi: tuple[TGIStub, str], client: openai.OpenAI) -> None:
    """Golden requests: everything the proxy sends TGI, checked against tgi_openapi.json."""
    client.chat.completions.create(model="m", messages=CHAT, temperature=0.5, top_p=0.5, max_tokens=9, stop=["x"], seed=1,
                                   frequency_penalty=1, presence_penalty=1)
    client.chat.completions.create(model="m", messages=CHAT, n=2)
    for sent in tgi[0].seen:
        validator("GenerateRequest").validate(sent)
        assert not set(sent["parameters"]) - set(SPEC["components"]["schemas"]["GenerateParameters"]["properties"])


def _openapi_to_jsonschema(node: Any) -> Any:
    """OpenAPI 3.0's ``nullable`` into JSON Schema's type lists."""
    if isinstance(node, list):
        return [_openapi_to_jsonschema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _openapi_to_jsonschema(v) for k, v in node.items() if k not in ("nullable", "example", "default")}
    if node.get("nullable"):
        if "type" in out:
            out["type"] = [out["type"], "null"]
        else:
            out = {"anyOf": [out, {"type": "null"}]}
    return out


# ------------------------------------------------------------------------------------ TGI front


@pytest.fixture
def tgi_front(openai_stub: tuple[OpenAIStub, str], start_proxy: ProxyFactory) -> str:
    return start_proxy({"targets": {"default": "vllm", "vllm": {"url": openai_stub[1], "options": {"model": "served-model"}}}}).url


def test_tgi_front_generate(openai_stub: tuple[OpenAIStub, str], tgi_front: str) -> None:
    stub = openai_stub[0]
    r = http.post(tgi_front + "/generate", json={"inputs": "Hello", "parameters": {"max_new_tokens": 5, "do_sample": False,
                                                                                     "details": True}})
    assert r.status_code == 200
    assert stub.seen[-1].path == "/v1/completions"
    # details: each token's logprob is asked of the server (details.tokens)
    assert stub.seen[-1].body == {"model": "served-model", "prompt": "Hello", "stream": False, "max_tokens": 5, "temperature": 0,
                                  "logprobs": 1}
    body = r.json()
    assert body["generated_text"] == "alpha continues: Hello"
    assert body["details"]["finish_reason"] == "eos_token" and body["details"]["generated_tokens"] == 3
    assert http.post(tgi_front + "/generate", json={"inputs": "Hi"}).json() == {"generated_text": "alpha continues: Hi"}


def test_tgi_front_stream(tgi_front: str) -> None:
    with http.stream("POST", tgi_front + "/generate_stream", json={"inputs": "Hi"}) as r:
        lines = [line for line in r.iter_lines() if line]
    assert all(line.startswith("data:{") for line in lines)
    events = [json.loads(line[5:]) for line in lines]
    assert [e["token"]["text"] for e in events] == ["alpha ", "continues: Hi"]
    assert [e["generated_text"] for e in events] == [None, "alpha continues: Hi"]
    assert events[-1]["details"]["finish_reason"] == "eos_token"


def test_tgi_front_answers_match_the_spec(tgi_front: str) -> None:
    """Golden answers: what the TGI front gives TGI clients, checked against tgi_openapi.json."""
    body = http.post(tgi_front + "/generate", json={"inputs": "Hi", "parameters": {"details": True}}).json()
    validator("GenerateResponse").validate(body)
    compat = http.post(tgi_front + "/", json={"inputs": "Hi", "parameters": {"details": True}}).json()
    assert isinstance(compat, list)
    validator("GenerateResponse").validate(compat[0])
    with http.stream("POST", tgi_front + "/generate_stream", json={"inputs": "Hi"}) as r:
        for line in r.iter_lines():
            if line:
                validator("StreamResponse").validate(json.loads(line[5:]))


def test_tgi_front_info_from_the_servers_model_list(openai_stub: tuple[OpenAIStub, str], tgi_front: str) -> None:
    info = http.get(tgi_front + "/info")
    assert info.status_code == 200 and openai_stub[0].seen[-1].path == "/v1/models"
    validator("Info").validate(info.json())
    assert info.json()["model_id"] == "served-model" and info.json()["max_best_of"] == 1


def test_tgi_front_names_the_model_the_server_serves(openai_stub: tuple[OpenAIStub, str], start_proxy: ProxyFactory) -> None:
    """TGI's API names no model: without options.model the proxy asks the server's /v1/models once and sends its first
    model, not the target's name (which vLLM would answer with a 404)."""
    stub = openai_stub[0]
    url = start_proxy({"targets": {"default": "vllm", "vllm": {"url": openai_stub[1]}}}).url
    listed = http.get(openai_stub[1] + "/v1/models").json()["data"][0]["id"]
    for _ in range(2):
        assert http.post(url + "/generate", json={"inputs": "Hi"}).status_code == 200
    paths = [s.path for s in stub.seen]
    assert paths.count("/v1/models") == 2 and paths[-2:] == ["/v1/completions", "/v1/completions"]  # ours, then the proxy's once
    assert stub.seen[-1].body["model"] == listed != "vllm"


def test_tgi_front_with_the_text_generation_client(tgi_front: str) -> None:
    text_generation = pytest.importorskip("text_generation")
    tg = text_generation.Client(tgi_front, headers=AUTH, timeout=10)
    response = tg.generate("Hello", max_new_tokens=5)
    assert response.generated_text == "alpha continues: Hello"
    assert response.details.finish_reason == "eos_token"
    tokens = list(tg.generate_stream("Hey", max_new_tokens=5))
    assert "".join(t.token.text for t in tokens if not t.token.special) == "alpha continues: Hey"
    assert tokens[-1].generated_text == "alpha continues: Hey"


def test_tgi_front_errors_in_tgi_shape(openai_stub: tuple[OpenAIStub, str], tgi_front: str) -> None:
    # The proxy's own errors, in TGI's shape too: text_generation raises what TGI would make it raise.
    r = http.post(tgi_front + "/generate", json={"parameters": {}})
    assert r.status_code == 400 and r.json() == {"error": "A TGI request needs 'inputs', a string.", "error_type": "validation"}
    text_generation = pytest.importorskip("text_generation")
    with pytest.raises(text_generation.errors.UnknownError, match=r"^Incorrect API key"):
        text_generation.Client(tgi_front, headers={"Authorization": "Bearer wrong-key-0123456789"}, timeout=10).generate("x")
    tg = text_generation.Client(tgi_front, headers=AUTH, timeout=10)
    with pytest.raises(text_generation.errors.ValidationError, match="`max_new_tokens` must be strictly positive"):
        tg.generate("x", max_new_tokens=-3)
    for option, value in (("typical_p", 0.5), ("truncate", 10), ("watermark", True), ("decoder_input_details", True)):
        with pytest.raises(text_generation.errors.ValidationError, match=f"`{option}`.*target 'vllm'"):
            tg.generate("x", max_new_tokens=5, **{option: value})
    assert http.post(tgi_front + "/generate", json={"inputs": "x", "parameters": {"grammar": {"type": "regex", "value": "a+"}}}
                     ).json()["error_type"] == "validation"
    sent = openai_stub[0].seen
    tg.generate("x", max_new_tokens=5, grammar={"type": "json", "value": {"type": "object"}})
    assert sent[-1].body["response_format"] == {"type": "json_schema", "json_schema": {"name": "grammar", "schema": {"type": "object"}}}
    assert "stop" not in sent[-1].body  # no empty list of stop strings
    openai_stub[0].fail = (429, "slow down")
    r = http.post(tgi_front + "/generate", json={"inputs": "x"})
    assert r.status_code == 429 and r.json() == {"error": "slow down", "error_type": "stub_error"}
    with pytest.raises(text_generation.errors.RateLimitExceededError):
        text_generation.Client(tgi_front, headers=AUTH, timeout=10).generate("x")


# ----------------------------------------------------------------------------- tool calls (Hermes / Qwen2.5 format)

WEATHER = {"type": "function", "function": {"name": "weather", "description": "Weather in a city",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}
# How Qwen2.5 writes calls, token by token: the JSON between <tool_call> tags, one block per call.
QWEN_CALLS = ["Let me check.", "\n<tool", "_call>", '\n{"name": "weather", ', '"arguments": {"city": "Paris"}}', "\n</tool_call>",
              '\n<tool_call>\n{"name": "weather", "arguments": {"city": "Rome"}}\n</tool_call>']


@pytest.fixture
def qwen(tgi: tuple[TGIStub, str], start_proxy: ProxyFactory) -> openai.OpenAI:
    url = start_proxy({"targets": {"default": "qwen", "qwen": {"type": "tgi", "url": tgi[1], "prompter": "qwen2.5"}}}).url
    return openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)


def test_tool_calls_written_by_the_model_come_back_as_openai_tool_calls(tgi: tuple[TGIStub, str], qwen: openai.OpenAI,
                                                                       tmp_path: Path) -> None:
    stub = tgi[0]
    stub.reply = QWEN_CALLS
    ask = [{"role": "user", "content": "Weather in Paris and Rome?"}]
    answer = qwen.chat.completions.create(model="m", messages=ask, tools=[WEATHER])  # type: ignore[arg-type,list-item]
    assert '"name": "weather"' in stub.seen[-1]["inputs"] and "<tools>" in stub.seen[-1]["inputs"]  # the template shows them
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content == "Let me check."
    calls = choice.message.tool_calls or []
    got = [(c.function.name, json.loads(c.function.arguments)) for c in calls]  # type: ignore[union-attr]
    assert got == [("weather", {"city": "Paris"}), ("weather", {"city": "Rome"})]
    assert len({c.id for c in calls}) == 2
    # Streamed: the text beside the calls as text, each call as one tool_calls delta, nothing of the tags.
    chunks = list(qwen.chat.completions.create(model="m", messages=ask, tools=[WEATHER], stream=True))  # type: ignore[arg-type,list-item]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    deltas = [t for c in chunks if c.choices for t in c.choices[0].delta.tool_calls or []]
    assert text.strip() == "Let me check." and "<tool" not in text  # (the newlines around the calls stream as text)
    assert [(d.index, d.function.name, json.loads(d.function.arguments)) for d in deltas] == [  # type: ignore[union-attr,arg-type]
        (0, "weather", {"city": "Paris"}), (1, "weather", {"city": "Rome"})]
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["tool_calls"]
    # The results go back in the history, laid out by the model's own template; the answer is text again.
    stub.reply = ["Paris 20, Rome 25."]
    history = [*ask, {"role": "assistant", "content": None, "tool_calls": [c.model_dump() for c in calls]},
               {"role": "tool", "tool_call_id": calls[0].id, "content": "20"},
               {"role": "tool", "tool_call_id": calls[1].id, "content": "25"}]
    final = qwen.chat.completions.create(model="m", messages=history, tools=[WEATHER])  # type: ignore[arg-type,list-item]
    assert final.choices[0].message.content == "Paris 20, Rome 25." and final.choices[0].finish_reason == "stop"
    assert "<tool_response>\n20\n</tool_response>\n<tool_response>\n25\n</tool_response>" in stub.seen[-1]["inputs"]
    # Recorded as the call it was.
    recorded = records(tmp_path / "datasets", 3)
    assert recorded[0]["conversations"][-1]["from"] == "function_call"


# How Mistral 7B v0.3 writes calls through TGI, which leaves the [TOOL_CALLS] control token out of its text.
MISTRAL_CALLS = [" [{\"name\": \"weather\", ", '"arguments": {"city": "Paris"}}, ', '{"name": "weather", "arguments": {"city": "Rome"}}]']


def test_mistral_calls_and_their_nine_character_ids(tgi: tuple[TGIStub, str], start_proxy: ProxyFactory) -> None:
    url = start_proxy({"targets": {"default": "m", "m": {"type": "tgi", "url": tgi[1], "prompter": "mistral-v3"}}}).url
    client = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)
    stub, ask = tgi[0], [{"role": "user", "content": "Weather in Paris and Rome?"}]
    stub.reply = MISTRAL_CALLS
    answer = client.chat.completions.create(model="m", messages=ask, tools=[WEATHER])  # type: ignore[arg-type,list-item]
    assert stub.seen[-1]["inputs"].startswith('[AVAILABLE_TOOLS] [{"type": "function", "function": {"name": "weather"')
    calls = answer.choices[0].message.tool_calls or []
    assert answer.choices[0].finish_reason == "tool_calls" and answer.choices[0].message.content is None
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [  # type: ignore[union-attr]
        ("weather", {"city": "Paris"}), ("weather", {"city": "Rome"})]
    assert all(len(c.id) == 9 and c.id.isalnum() for c in calls)  # what the model's template takes back
    # The marker itself, where a server keeps special tokens in its text (llama.cpp), with words before it.
    stub.reply = ["Checking.", "[TOOL", "_CALLS] [", '{"name": "weather", "arguments": {"city": "Oslo"}}]']
    chunks = list(client.chat.completions.create(model="m", messages=ask, tools=[WEATHER], stream=True))  # type: ignore[arg-type,list-item]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Checking."
    deltas = [t for c in chunks if c.choices for t in c.choices[0].delta.tool_calls or []]
    assert [(d.index, d.function.name, json.loads(d.function.arguments)) for d in deltas] == [  # type: ignore[union-attr,arg-type]
        (0, "weather", {"city": "Oslo"})]
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["tool_calls"]
    # A client's own ids (OpenAI's call_…) in the history reach the template as 9 characters, paired.
    stub.reply = ["Paris 20."]
    history = [*ask, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_abc123def456", "type": "function", "function": {"name": "weather", "arguments": "{\"city\": \"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "call_abc123def456", "content": "20"}]
    final = client.chat.completions.create(model="m", messages=history, tools=[WEATHER])  # type: ignore[arg-type,list-item]
    assert final.choices[0].message.content == "Paris 20."
    sent = stub.seen[-1]["inputs"]
    short = re.search(r'"id": "([A-Za-z0-9]{9})"\}\]</s>\[TOOL_RESULTS\] \{"content": 20, "call_id": "([A-Za-z0-9]{9})"\}', sent)
    assert short is not None and short.group(1) == short.group(2), sent
    # A text answer that merely opens with "[" is held back, then sent as text.
    stub.reply = ["[1] ", "is a footnote."]
    chunks = list(client.chat.completions.create(model="m", messages=ask, tools=[WEATHER], stream=True))  # type: ignore[arg-type,list-item]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "[1] is a footnote."


def test_a_models_own_tokenizer_config_gets_its_calls_read(tgi: tuple[TGIStub, str], start_proxy: ProxyFactory,
                                                          tmp_path: Path) -> None:
    """A model folder's tokenizer_config.json (here Qwen2.5's template, as its repository ships it): its tools are rendered
    and the calls its model writes read back, as with the preset."""
    body = (Path(__file__).resolve().parent.parent / "prompters" / "qwen2.5.jinja").read_text(encoding="utf-8")
    template = body[body.index("---#}\n") + len("---#}\n"):]
    model = tmp_path / "Qwen2.5-7B-Instruct"
    model.mkdir()
    (model / "tokenizer_config.json").write_text(json.dumps({"chat_template": template, "eos_token": "<|im_end|>",
                                                             "bos_token": None, "pad_token": "<|endoftext|>"}))
    url = start_proxy({"targets": {"default": "q", "q": {"type": "tgi", "url": tgi[1], "prompter": str(model)}}}).url
    client = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)
    tgi[0].reply = QWEN_CALLS
    answer = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "Weather?"}], tools=[WEATHER])  # type: ignore[list-item]
    assert "<tools>" in tgi[0].seen[-1]["inputs"]
    assert [c.function.name for c in answer.choices[0].message.tool_calls or []] == ["weather", "weather"]  # type: ignore[union-attr]


def test_tool_choice_that_cannot_be_honoured_is_refused_by_name(tgi: tuple[TGIStub, str], qwen: openai.OpenAI) -> None:
    ask: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "Weather?"}], "tools": [WEATHER]}
    sent = len(tgi[0].seen)
    with pytest.raises(openai.BadRequestError) as err:
        qwen.chat.completions.create(tool_choice={"type": "function", "function": {"name": "clock"}}, **ask)
    assert err.value.body["param"] == "tool_choice" and "'clock'" in err.value.body["message"]  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as err:
        qwen.chat.completions.create(tool_choice="required", response_format={"type": "json_object"}, **ask)
    assert err.value.body["param"] == "tool_choice" and "one schema only" in err.value.body["message"]  # type: ignore[index]
    assert len(tgi[0].seen) == sent  # nothing went upstream
    # "required" over several tools: a grammar any one of their calls satisfies.
    tgi[0].reply = ['{"name": "weather", "arguments": {"city": "Oslo"}}']
    answer = qwen.chat.completions.create(tool_choice="required", **ask)
    assert [c.function.name for c in answer.choices[0].message.tool_calls or []] == ["weather"]  # type: ignore[union-attr]
    assert tgi[0].seen[-1]["parameters"]["grammar"]["value"]["required"] == ["name", "arguments"]


def test_parallel_tool_calls_false_keeps_the_first_call(tgi: tuple[TGIStub, str], qwen: openai.OpenAI) -> None:
    tgi[0].reply = QWEN_CALLS  # the model writes two calls all the same
    ask: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "Weather?"}], "tools": [WEATHER],
                           "parallel_tool_calls": False}
    answer = qwen.chat.completions.create(**ask)
    assert [json.loads(c.function.arguments) for c in answer.choices[0].message.tool_calls or []] == [{"city": "Paris"}]  # type: ignore[union-attr]
    chunks = list(qwen.chat.completions.create(stream=True, **ask))
    deltas = [t for c in chunks if c.choices for t in c.choices[0].delta.tool_calls or []]
    assert [json.loads(d.function.arguments) for d in deltas] == [{"city": "Paris"}]  # type: ignore[union-attr,arg-type]
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["tool_calls"]


def test_what_only_looks_like_a_call_stays_text(tgi: tuple[TGIStub, str], qwen: openai.OpenAI) -> None:
    tgi[0].reply = ["Use <tool_call>", "not json", "</tool_call> like this."]
    ask = [{"role": "user", "content": "How?"}]
    answer = qwen.chat.completions.create(model="m", messages=ask, tools=[WEATHER])  # type: ignore[arg-type,list-item]
    message = answer.choices[0].message
    assert message.content == "Use <tool_call>not json</tool_call> like this." and not message.tool_calls
    chunks = list(qwen.chat.completions.create(model="m", messages=ask, tools=[WEATHER], stream=True))  # type: ignore[arg-type,list-item]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Use <tool_call>not json</tool_call> like this."
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    # Without tools offered, nothing is read for calls at all.
    tgi[0].reply = QWEN_CALLS
    plain = qwen.chat.completions.create(model="m", messages=ask)  # type: ignore[arg-type]
    assert "<tool_call>" in (plain.choices[0].message.content or "") and not plain.choices[0].message.tool_calls


def test_the_anthropic_sdk_gets_tool_use_blocks_from_a_prompt_string_backend(tgi: tuple[TGIStub, str], start_proxy: ProxyFactory) -> None:
    import anthropic

    url = start_proxy({"targets": {"default": "qwen", "qwen": {"type": "tgi", "url": tgi[1], "prompter": "qwen2.5"}}}).url
    tgi[0].reply = QWEN_CALLS
    message = anthropic.Anthropic(base_url=url, api_key=KEY, max_retries=0).messages.create(
        model="m", max_tokens=200, messages=[{"role": "user", "content": "Weather in Paris and Rome?"}],
        tools=[{"name": "weather", "description": "Weather in a city", "input_schema": WEATHER["function"]["parameters"]}])  # type: ignore[list-item,index]
    assert message.stop_reason == "tool_use"
    assert [(b.type, getattr(b, "input", None)) for b in message.content] == [
        ("text", None), ("tool_use", {"city": "Paris"}), ("tool_use", {"city": "Rome"})]


def test_llama31_calls_are_json_answers(tgi: tuple[TGIStub, str], start_proxy: ProxyFactory) -> None:
    """Llama 3.1 answers a call with nothing but {"name", "parameters"}: read whole, stream and not; an answer that
    only opens like JSON, or is plain text, stays text."""
    url = start_proxy({"targets": {"default": "l", "l": {"type": "tgi", "url": tgi[1], "prompter": "llama3.1"}}}).url
    client = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)
    stub, ask = tgi[0], [{"role": "user", "content": "Weather in Paris?"}]
    stub.reply = ['{"name": "weather", ', '"parameters": {"city": ', '"Paris"}}']
    answer = client.chat.completions.create(model="m", messages=ask, tools=[WEATHER])  # type: ignore[arg-type,list-item]
    assert "Given the following functions" in stub.seen[-1]["inputs"]  # the template's own tool prompt
    calls = answer.choices[0].message.tool_calls or []
    assert answer.choices[0].finish_reason == "tool_calls" and answer.choices[0].message.content is None
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [("weather", {"city": "Paris"})]  # type: ignore[union-attr]
    chunks = list(client.chat.completions.create(model="m", messages=ask, tools=[WEATHER], stream=True))  # type: ignore[arg-type,list-item]
    deltas = [t for c in chunks if c.choices for t in c.choices[0].delta.tool_calls or []]
    assert [(d.function.name, json.loads(d.function.arguments)) for d in deltas] == [("weather", {"city": "Paris"})]  # type: ignore[union-attr,arg-type]
    assert not "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    for reply in (["{not", " json}"], ["It is", " sunny."]):
        stub.reply = reply
        said = client.chat.completions.create(model="m", messages=ask, tools=[WEATHER])  # type: ignore[arg-type,list-item]
        assert said.choices[0].message.content == "".join(reply) and said.choices[0].finish_reason == "stop"
        streamed = list(client.chat.completions.create(model="m", messages=ask, tools=[WEATHER], stream=True))  # type: ignore[arg-type,list-item]
        assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == "".join(reply)


def test_langchain_tools_and_structured_output_over_tgi(tgi: tuple[TGIStub, str], start_proxy: ProxyFactory) -> None:
    """LangChain's bind_tools and with_structured_output(method="function_calling"), the way agents use a model, over a
    local model behind TGI."""
    from langchain_openai import ChatOpenAI

    url = start_proxy({"targets": {"default": "qwen", "qwen": {"type": "tgi", "url": tgi[1], "prompter": "qwen2.5"}}}).url
    llm = ChatOpenAI(base_url=url + "/v1", api_key=KEY, model="m", max_retries=0)  # type: ignore[arg-type]
    tgi[0].reply = ['<tool_call>\n{"name": "weather", "arguments": {"city": "Paris"}}\n</tool_call>']
    message = llm.bind_tools([WEATHER]).invoke("Weather in Paris?")
    assert [(c["name"], c["args"]) for c in message.tool_calls] == [("weather", {"city": "Paris"})]  # type: ignore[attr-defined]
    assert "<tools>" in tgi[0].seen[-1]["inputs"]
    schema = {"title": "weather", "description": "Weather in a city", "type": "object",
              "properties": {"city": {"type": "string"}}, "required": ["city"]}
    # A named tool_choice: TGI's grammar holds generation to that call's JSON, which is read as the call.
    tgi[0].reply = ['{"name": "weather", "arguments": {"city": "Paris"}}']
    assert llm.with_structured_output(schema, method="function_calling").invoke("Weather in Paris?") == {"city": "Paris"}
    grammar = tgi[0].seen[-1]["parameters"]["grammar"]
    assert grammar["type"] == "json" and grammar["value"]["properties"]["name"] == {"type": "string", "enum": ["weather"]}
    assert grammar["value"]["properties"]["arguments"]["properties"] == {"city": {"type": "string"}}
