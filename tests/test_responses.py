"""OpenAI's Responses API in front of any target: the OpenAI SDK's ``responses.create`` / ``responses.stream`` (sync
and async) against a TGI stub (a chat rendered by the Qwen2.5 template, calls read from its ``<tool_call>`` blocks)
and an OpenAI-compatible stub; stored responses and ``previous_response_id``; errors in the Responses shape; the
record each exchange leaves."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from .conftest import KEY, ProxyFactory
from .dataset_kit import records
from .servers import serve
from .stubs.openai_upstream import OpenAIStub
from .stubs.tgi_upstream import TGIStub

WEATHER = {"type": "function", "name": "weather", "description": "Weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
QWEN_CALLS = ["Let me check.", "\n<tool_call>\n", '{"name": "weather", "arguments": {"city": "Paris"}}', "\n</tool_call>",
              '\n<tool_call>\n{"name": "weather", "arguments": {"city": "Rome"}}\n</tool_call>']
# The order of a text answer's events, as the API documents it.
TEXT_EVENTS = ["response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
               "response.output_text.delta", "response.output_text.done", "response.content_part.done",
               "response.output_item.done", "response.completed"]


@pytest.fixture
def tgi(stack: Any) -> tuple[TGIStub, str]:
    stub = TGIStub()
    return stub, stack.enter_context(serve(stub.app())).url


@pytest.fixture
def proxy(tgi: tuple[TGIStub, str], openai_stub: tuple[OpenAIStub, str], start_proxy: ProxyFactory) -> str:
    return start_proxy({"targets": {"default": "qwen", "qwen": {"type": "tgi", "url": tgi[1], "prompter": "qwen2.5"},
                                    "vllm": {"url": openai_stub[1]}},
                        "auth": {"keys": {"other": {"key_env": "OTHER_KEY"}}}}, env={"OTHER_KEY": "other-key-0123456789"}).url


@pytest.fixture
def client(proxy: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy + "/v1", api_key=KEY, max_retries=0)


def collapsed(events: list[str]) -> list[str]:
    """Event types with runs of the same one made one (deltas come in runs)."""
    return [e for i, e in enumerate(events) if i == 0 or events[i - 1] != e]


# ---------------------------------------------------------------------------------------- text answers


def test_create_over_a_prompt_string_backend(tgi: tuple[TGIStub, str], client: openai.OpenAI) -> None:
    stub = tgi[0]
    stub.reply = ["Hello", " there."]
    response = client.responses.create(model="qwen-local", input="Hi!", instructions="Be brief.", max_output_tokens=20,
                                       temperature=0)
    assert response.output_text == "Hello there." and response.status == "completed"
    assert response.id.startswith("resp_") and response.model == "qwen-local" and response.instructions == "Be brief."
    # TGI counts the EOS token it generated
    use = response.usage
    assert use is not None and use.output_tokens == 3 and use.total_tokens == use.input_tokens + 3
    # The instructions are the system message, laid out by the model's own template.
    assert stub.seen[-1]["inputs"] == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n"
                                       "<|im_start|>assistant\n")
    assert stub.seen[-1]["parameters"]["max_new_tokens"] == 20 and stub.seen[-1]["parameters"]["do_sample"] is False
    # Cut by the token limit: incomplete, saying why.
    stub.reply = ["one ", "two ", "three"]
    cut = client.responses.create(model="m", input="Count.", max_output_tokens=2)
    assert cut.status == "incomplete" and cut.incomplete_details is not None and cut.incomplete_details.reason == "max_output_tokens"


def test_stream_events_in_their_documented_order(tgi: tuple[TGIStub, str], proxy: str) -> None:
    tgi[0].reply = ["Hello", " there", "."]

    async def run() -> tuple[list[Any], Any]:
        async with openai.AsyncOpenAI(base_url=proxy + "/v1", api_key=KEY, max_retries=0) as aclient, \
                aclient.responses.stream(model="m", input=[{"role": "user", "content": "Hi!"}]) as stream:
            events = [event async for event in stream]
            return events, await stream.get_final_response()

    events, final = asyncio.run(run())
    assert collapsed([e.type for e in events]) == TEXT_EVENTS
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "Hello there."
    assert final.output_text == "Hello there." and final.status == "completed" and final.id == events[0].response.id
    assert events[0].response.status == "in_progress" and final.usage is not None and final.usage.output_tokens == 4  # with EOS


# ----------------------------------------------------------------------------------------------- tools


def test_function_calls_and_their_results_over_tgi(tgi: tuple[TGIStub, str], client: openai.OpenAI, tmp_path: Path) -> None:
    stub = tgi[0]
    stub.reply = QWEN_CALLS
    first = client.responses.create(model="m", input="Weather in Paris and Rome?", tools=[WEATHER])  # type: ignore[list-item]
    assert "<tools>" in stub.seen[-1]["inputs"] and '"name": "weather"' in stub.seen[-1]["inputs"]
    kinds = [item.type for item in first.output]
    assert kinds == ["message", "function_call", "function_call"] and first.output_text == "Let me check."
    calls = [item for item in first.output if item.type == "function_call"]
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("weather", {"city": "Paris"}), ("weather", {"city": "Rome"})]
    assert len({c.call_id for c in calls}) == 2 and all(c.status == "completed" for c in calls)
    # The results, continuing from the stored response: its input and output come before them.
    stub.reply = ["Paris 20, Rome 25."]
    results = [{"type": "function_call_output", "call_id": c.call_id, "output": t} for c, t in zip(calls, ("20", "25"), strict=True)]
    second = client.responses.create(model="m", previous_response_id=first.id, input=results, tools=[WEATHER])  # type: ignore[arg-type,list-item]
    assert second.output_text == "Paris 20, Rome 25." and second.previous_response_id == first.id
    prompt = stub.seen[-1]["inputs"]
    assert "Weather in Paris and Rome?" in prompt and '{"name": "weather", "arguments": {"city": "Paris"}}' in prompt
    assert "<tool_response>\n20\n</tool_response>\n<tool_response>\n25\n</tool_response>" in prompt
    # Streamed: each call an item of its own, its arguments as delta then done.
    stub.reply = QWEN_CALLS
    with client.responses.stream(model="m", input="Weather?", tools=[WEATHER]) as stream:  # type: ignore[list-item]
        events = list(stream)
        final = stream.get_final_response()
    types = collapsed([e.type for e in events])
    assert types[:2] == ["response.created", "response.in_progress"] and types[-1] == "response.completed"
    assert types.count("response.function_call_arguments.done") == 2
    assert [e.item.type for e in events if e.type == "response.output_item.done"] == ["message", "function_call", "function_call"]
    assert [json.loads(i.arguments) for i in final.output if i.type == "function_call"] == [{"city": "Paris"}, {"city": "Rome"}]
    # Each exchange is recorded as the chat it was; the continuation is the first one's thread.
    found = records(tmp_path / "datasets", 3)
    assert found[0]["conversations"][-1]["from"] == "function_call"
    assert found[1]["meta"]["thread"] == found[0]["meta"]["thread"] and found[1]["meta"]["parent"] == found[0]["id"]


def test_tool_choice_and_structured_output_reach_the_backend(openai_stub: tuple[OpenAIStub, str], proxy: str) -> None:
    client = openai.OpenAI(base_url=proxy + "/v1", api_key=KEY, max_retries=0, default_headers={"target": "vllm"})
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"], "additionalProperties": False}
    response = client.responses.create(
        model="served", input=[{"role": "developer", "content": "Answer in JSON."}, {"role": "user", "content": "Where?"}],
        max_output_tokens=50, temperature=0.5, top_p=0.9, parallel_tool_calls=False, tools=[WEATHER],  # type: ignore[list-item]
        tool_choice={"type": "function", "name": "weather"}, reasoning={"effort": "low"},
        text={"format": {"type": "json_schema", "name": "place", "schema": schema, "strict": True}})
    sent = openai_stub[0].seen[-1]
    assert sent.path == "/v1/chat/completions"
    assert sent.body["messages"] == [{"role": "system", "content": "Answer in JSON."}, {"role": "user", "content": "Where?"}]
    assert sent.body["response_format"] == {"type": "json_schema", "json_schema": {"name": "place", "schema": schema, "strict": True}}
    assert sent.body["tools"] == [{"type": "function", "function": {k: v for k, v in WEATHER.items() if k != "type"}}]
    assert sent.body["tool_choice"] == {"type": "function", "function": {"name": "weather"}}
    assert (sent.body["max_tokens"], sent.body["temperature"], sent.body["top_p"]) == (50, 0.5, 0.9)
    assert sent.body["parallel_tool_calls"] is False and sent.body["reasoning_effort"] == "low" and sent.body["model"] == "served"
    assert response.status == "completed" and response.output_text and response.text.format.type == "json_schema"  # type: ignore[union-attr]


# ------------------------------------------------------------------------------------ stored responses


def test_stored_responses_are_the_keys_own(tgi: tuple[TGIStub, str], proxy: str, client: openai.OpenAI) -> None:
    tgi[0].reply = ["Nice to meet you, Ann."]
    first = client.responses.create(model="m", input="I am Ann.")
    assert client.responses.retrieve(first.id).output_text == "Nice to meet you, Ann."
    items = client.responses.input_items.list(first.id)
    assert [(i.type, i.role) for i in items.data] == [("message", "user")]  # type: ignore[union-attr]
    # The next turn sees the first one.
    tgi[0].reply = ["You are Ann."]
    second = client.responses.create(model="m", input="Who am I?", previous_response_id=first.id)
    assert "I am Ann.<|im_end|>\n<|im_start|>assistant\nNice to meet you, Ann.<|im_end|>" in tgi[0].seen[-1]["inputs"]
    assert len(client.responses.input_items.list(second.id).data) == 3
    # Another key sees none of them, and cannot build on them.
    other = openai.OpenAI(base_url=proxy + "/v1", api_key="other-key-0123456789", max_retries=0)
    with pytest.raises(openai.NotFoundError) as err:
        other.responses.retrieve(first.id)
    assert err.value.body["code"] == "response_not_found"  # type: ignore[index]
    sent = len(tgi[0].seen)
    with pytest.raises(openai.NotFoundError) as err:
        other.responses.create(model="m", input="Who am I?", previous_response_id=first.id)
    assert err.value.body["param"] == "previous_response_id" and len(tgi[0].seen) == sent  # type: ignore[index]
    # Deleted, it is gone; store=false keeps nothing.
    assert client.responses.delete(first.id) is None
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(first.id)
    unkept = client.responses.create(model="m", input="Forget this.", store=False)
    assert unkept.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unkept.id)


def test_a_streamed_response_is_stored_too(tgi: tuple[TGIStub, str], client: openai.OpenAI) -> None:
    tgi[0].reply = ["Streamed", " words."]
    with client.responses.stream(model="m", input="Go.") as stream:
        final = stream.get_final_response()
    assert client.responses.retrieve(final.id).output_text == "Streamed words."


def test_a_target_that_speaks_responses_gets_it_relayed(openai_stub: tuple[OpenAIStub, str], start_proxy: ProxyFactory) -> None:
    url = start_proxy({"targets": {"default": "native", "native": {"url": openai_stub[1], "routes": {"/v1/responses": {}}}}}).url
    body = {"model": "gpt", "input": "Hi", "previous_response_id": "resp_upstream"}
    r = httpx.post(url + "/v1/responses", json=body, headers={"authorization": f"Bearer {KEY}"})
    assert r.status_code == 200 and r.json()["path"] == "/v1/responses"
    assert openai_stub[0].seen[-1].body == body  # untouched: the upstream keeps its own responses


# ---------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(("extra", "param", "says"), [
    ({"tools": [{"type": "web_search"}]}, "tools[0]", "only function tools"),
    ({"background": True}, "background", "running a response in the background"),
    ({"truncation": "auto"}, "truncation", "does not shorten"),
    ({"include": ["reasoning.encrypted_content"]}, "include", "message.output_text.logprobs"),
    ({"input": [{"type": "web_search_call", "id": "ws_1"}]}, "input[0].type", "function tools only"),
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0]", "previous_response_id"),
    ({"extra_body": {"temprature": 1}}, "temprature", "Unknown parameter"),
])
def test_what_cannot_be_honoured_is_refused_by_name(tgi: tuple[TGIStub, str], client: openai.OpenAI, extra: dict[str, Any],
                                                    param: str, says: str) -> None:
    sent = len(tgi[0].seen)
    with pytest.raises(openai.BadRequestError) as err:
        client.responses.create(**{"model": "m", "input": "Hi", **extra})
    assert err.value.body["param"] == param and says in err.value.body["message"]  # type: ignore[index]
    assert len(tgi[0].seen) == sent


def test_errors_in_the_responses_shape(tgi: tuple[TGIStub, str], proxy: str, client: openai.OpenAI) -> None:
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=proxy + "/v1", api_key="wrong-key-0123456789", max_retries=0).responses.create(model="m", input="Hi")
    # The upstream's own error, with its status and message.
    tgi[0].fail = (422, "validation", "Input validation error: inputs too long")
    with pytest.raises(openai.UnprocessableEntityError, match="inputs too long"):
        client.responses.create(model="m", input="Hi")
    tgi[0].fail = None
    # Broken off mid-stream: response.failed, then an error event with the message.
    tgi[0].reply = ["one", " two", " three"]
    tgi[0].stream_error_after = 1
    with client.responses.stream(model="m", input="Count.") as stream:
        events = list(stream)
    assert events[0].type == "response.created" and [e.type for e in events[-2:]] == ["response.failed", "error"]
    assert events[-2].response.status == "failed" and "CUDA out of memory" in events[-1].message  # type: ignore[union-attr]
    assert [e.sequence_number for e in events] == list(range(len(events)))


# ----------------------------------------------------------------------------- the OpenAI Agents SDK


@pytest.mark.agents
def test_an_agent_calls_its_tool_through_the_proxy(tgi: tuple[TGIStub, str], proxy: str) -> None:
    """An OpenAI Agents SDK agent on the Responses API, its model a local one behind TGI: it calls its function tool,
    the proxy lays the result into the model's template, and the model's answer ends the run."""
    import agents

    agents.set_tracing_disabled(True)  # its traces would go to OpenAI's servers
    asked: list[str] = []

    @agents.function_tool
    def weather(city: str) -> str:
        """The weather in a city."""
        asked.append(city)
        return "sunny, 21 C"

    tgi[0].replies = [['<tool_call>\n{"name": "weather", "arguments": {"city": "Paris"}}\n</tool_call>'], ["Paris is sunny, 21 C."]]
    model = agents.OpenAIResponsesModel(model="qwen-local", openai_client=openai.AsyncOpenAI(base_url=proxy + "/v1", api_key=KEY,
                                                                                             max_retries=0))
    agent = agents.Agent(name="forecaster", instructions="Answer with the weather tool.", tools=[weather], model=model)
    result = agents.Runner.run_sync(agent, "What is the weather in Paris?")
    assert asked == ["Paris"] and result.final_output == "Paris is sunny, 21 C."
    prompt = tgi[0].seen[-1]["inputs"]
    assert prompt.startswith("<|im_start|>system\nAnswer with the weather tool.") and "<tools>" in prompt
    assert "<tool_response>\nsunny, 21 C\n</tool_response>" in prompt
    # Streamed, as chat front-ends run agents.
    tgi[0].replies = [['<tool_call>\n{"name": "weather", "arguments": {"city": "Rome"}}\n</tool_call>'], ["Rome is sunny", "."]]

    async def streamed() -> Any:
        client = openai.AsyncOpenAI(base_url=proxy + "/v1", api_key=KEY, max_retries=0)  # one per event loop
        again = agent.clone(model=agents.OpenAIResponsesModel(model="qwen-local", openai_client=client))
        run = agents.Runner.run_streamed(again, "And in Rome?")
        async for _ in run.stream_events():
            pass
        return run.final_output

    assert asyncio.run(streamed()) == "Rome is sunny." and asked == ["Paris", "Rome"]


def test_the_readmes_example(tgi: tuple[TGIStub, str], proxy: str, monkeypatch: pytest.MonkeyPatch,
                             capsys: pytest.CaptureFixture[str]) -> None:
    from .test_custom_mappers import readme_example

    tgi[0].replies = [['<tool_call>\n{"name": "weather", "arguments": {"city": "Paris"}}\n</tool_call>'], ["Sunny in Paris."]]
    monkeypatch.setenv("MOOLTIPROXY_KEY", KEY)
    code = readme_example("responses.py").replace("http://127.0.0.1:8000", proxy)
    exec(compile(code, "README.md", "exec"), {})
    assert capsys.readouterr().out == "Sunny in Paris.\n"
    assert "<tool_response>\nsunny\n</tool_response>" in tgi[0].seen[-1]["inputs"]


def test_reasoning_the_backend_returns_is_a_reasoning_item(stack: Any, start_proxy: ProxyFactory) -> None:
    """Over Ollama, whose thinking models answer with their reasoning apart: reasoning.effort becomes Ollama's think, and
    the reasoning comes back as a reasoning item before the message, streamed as reasoning_text events."""
    from .stubs.ollama_upstream import OllamaStub

    stub = OllamaStub()
    url = start_proxy({"targets": {"default": "o", "o": {"type": "ollama", "url": stack.enter_context(serve(stub.app())).url}}}).url
    client = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)
    response = client.responses.create(model="llama3.2", input="Hi!", reasoning={"effort": "high"})
    assert stub.seen[-1]["think"] == "high"
    assert [item.type for item in response.output] == ["reasoning", "message"] and response.output_text == "Hello there, friend."
    assert response.output[0].content[0].text == "Let me think."  # type: ignore[union-attr,index]
    with client.responses.stream(model="llama3.2", input="Hi!", reasoning={"effort": "low"}) as stream:
        events = list(stream)
    assert "".join(e.delta for e in events if e.type == "response.reasoning_text.delta") == "Let me think."
    assert [e.item.type for e in events if e.type == "response.output_item.done"] == ["reasoning", "message"]
