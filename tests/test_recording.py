"""Dataset capture through the running proxy: whole conversations, threads, alternatives, tools, streams
reassembled whatever their chunking, cut-short exchanges, policy, and writing that loses nothing."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from mooltiproxy.dataset.recorder import Recorder
from mooltiproxy.dataset.records import Capture
from mooltiproxy.dataset.sinks import JsonlSink, SqliteSink, read_jsonl

from .conftest import KEY, ProxyFactory, http
from .dataset_kit import records
from .servers import free_port
from .stubs.openai_upstream import OpenAIStub
from .stubs.raw_upstream import raw_server

Stub = tuple[OpenAIStub, str]



@pytest.fixture(params=["process", "loop"])
def proxy(openai_stub: Stub, start_proxy: ProxyFactory, request: pytest.FixtureRequest) -> str:
    """The proxy, recording in a process of its own and on its event loop: the same records either way."""
    return start_proxy({"targets": {"default": "a", "a": {"url": openai_stub[1]}}, "dataset": {"recorder": request.param}}).url


@pytest.fixture
def client(proxy: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy + "/v1", api_key=KEY, max_retries=0)


def test_a_multi_turn_chat_is_one_thread(client: openai.OpenAI, tmp_path: Path) -> None:
    messages: list[Any] = [{"role": "system", "content": "Be nice."}]
    for question in ("one", "two", "three"):
        messages.append({"role": "user", "content": question})
        answer = client.chat.completions.create(model="m", messages=messages, temperature=0.3, max_tokens=9)
        messages.append({"role": "assistant", "content": answer.choices[0].message.content})
    first, second, third = records(tmp_path / "datasets", 3)
    assert third["conversations"] == [
        {"from": "system", "value": "Be nice."},
        {"from": "human", "value": "one"}, {"from": "gpt", "value": "alpha says: one"},
        {"from": "human", "value": "two"}, {"from": "gpt", "value": "alpha says: two"},
        {"from": "human", "value": "three"}, {"from": "gpt", "value": "alpha says: three"},
    ]
    assert first["meta"]["parent"] is None
    assert second["meta"]["parent"] == first["id"] and third["meta"]["parent"] == second["id"]
    assert {r["meta"]["thread"] for r in (first, second, third)} == {first["id"]}
    meta = third["meta"]
    assert meta["params"] == {"temperature": 0.3, "max_tokens": 9}
    assert meta["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    assert meta["finish_reason"] == "stop" and meta["status"] == 200 and meta["target"] == "a" and meta["key_name"] == "master"
    assert meta["endpoint"] == "/v1/chat/completions" and meta["latency_ms"] > 0 and meta["created"].endswith("Z")
    assert third["tools"] == "[]"


def test_a_regeneration_is_an_alternative_of_the_same_turn(client: openai.OpenAI, tmp_path: Path) -> None:
    first = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}]).choices[0].message.content
    history = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": first}, {"role": "user", "content": "more"}]
    client.chat.completions.create(model="m", messages=history)
    client.chat.completions.create(model="m", messages=history, extra_body={"stub": {"message": {"role": "assistant",
                                                                                                  "content": "another take"}}})
    root, a, b = records(tmp_path / "datasets", 3)
    assert a["meta"]["turn"] == b["meta"]["turn"] and a["meta"]["key"] != b["meta"]["key"]
    assert a["meta"]["parent"] == b["meta"]["parent"] == root["id"]
    assert [a["conversations"][-1]["value"], b["conversations"][-1]["value"]] == ["alpha says: more", "another take"]


def test_tool_calls_and_results(client: openai.OpenAI, tmp_path: Path) -> None:
    tools = [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]
    call = {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Oslo"}'}}
    client.chat.completions.create(model="m", messages=[{"role": "user", "content": "Weather?"}], tools=tools,  # type: ignore[arg-type]
                                   extra_body={"stub": {"message": {"role": "assistant", "content": None, "tool_calls": [call]},
                                                        "finish_reason": "tool_calls"}})
    client.chat.completions.create(model="m", tools=tools, messages=[  # type: ignore[arg-type]
        {"role": "user", "content": "Weather?"}, {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny"}])
    calling, answering = records(tmp_path / "datasets", 2)
    assert calling["conversations"][-1] == {"from": "function_call", "value": '{"name":"weather","arguments":{"city":"Oslo"}}'}
    assert calling["meta"]["finish_reason"] == "tool_calls"
    assert [t["from"] for t in answering["conversations"]] == ["human", "function_call", "observation", "gpt"]
    assert json.loads(answering["tools"]) == [{"name": "weather", "parameters": {"type": "object"}}]
    assert answering["meta"]["parent"] == calling["id"]


def test_every_choice_of_n_is_recorded(client: openai.OpenAI, tmp_path: Path) -> None:
    client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}], n=2, extra_body={"stub": {"n": 2}})
    one, two = records(tmp_path / "datasets", 2)
    assert {one["meta"]["choice"], two["meta"]["choice"]} == {0, 1}
    assert one["meta"]["turn"] == two["meta"]["turn"] and one["meta"]["n"] == 2
    assert {one["conversations"][-1]["value"], two["conversations"][-1]["value"]} == {"alpha says: x", "alpha says: x (1)"}


def test_completions_are_prompt_and_completion(client: openai.OpenAI, tmp_path: Path) -> None:
    client.completions.create(model="m", prompt="Once")
    (record,) = records(tmp_path / "datasets", 1)
    assert record["conversations"] == [{"from": "human", "value": "Once"}, {"from": "gpt", "value": "alpha continues: Once"}]
    assert record["meta"]["endpoint"] == "/v1/completions"


def test_a_stream_is_recorded_whole(client: openai.OpenAI, tmp_path: Path) -> None:
    text = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "stream me"}], stream=True))
    (record,) = records(tmp_path / "datasets", 1)
    assert record["conversations"][-1] == {"from": "gpt", "value": text} and text == "alpha says: stream me"
    assert record["meta"]["stream"] is True and record["meta"]["cut_short"] is False and record["meta"]["finish_reason"] == "stop"


SSE = "".join(
    "data: " + json.dumps({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
                           "choices": [{"index": 0, "delta": d, "finish_reason": f}]}) + "\n\n"
    for d, f in [({"role": "assistant", "content": ""}, None), ({"reasoning_content": "Let me think. "}, None),
                 ({"content": "Grüße, "}, None), ({"content": "мир 🌍"}, None),
                 ({"tool_calls": [{"index": 0, "id": "t1", "type": "function", "function": {"name": "f", "arguments": "{\"a\""}}]},
                  None),
                 ({"tool_calls": [{"index": 0, "function": {"arguments": ": 1}"}}]}, None), ({}, "tool_calls")]
) + "data: [DONE]\n\n"


def test_a_stream_sent_one_byte_at_a_time_reassembles_exactly(proxy: str, tmp_path: Path) -> None:
    with http.stream("POST", proxy + "/v1/chat/completions",
                     json={"model": "m", "messages": [{"role": "user", "content": "u"}], "stream": True,
                           "stub": {"raw": SSE, "bytewise": True}}) as r:
        relayed = b"".join(r.iter_raw())
    assert relayed == SSE.encode()
    (record,) = records(tmp_path / "datasets", 1)
    assert record["conversations"][-2:] == [{"from": "gpt", "value": "Grüße, мир 🌍"},
                                            {"from": "function_call", "value": '{"name":"f","arguments":{"a":1}}'}]
    assert record["meta"]["reasoning"] == "Let me think. " and record["meta"]["cut_short"] is False


def test_reassembly_at_every_byte_boundary() -> None:
    from mooltiproxy.dataset.reassembly import Reassembler

    data = SSE.encode()
    whole = Reassembler()
    whole.feed(data)
    expected = whole.answer()
    for cut in range(1, len(data)):
        r = Reassembler()
        r.feed(data[:cut])
        r.feed(data[cut:])
        assert r.answer() == expected and r.done, cut


def test_a_long_relayed_stream_is_held_as_text_not_bytes() -> None:
    """The tape parses a relayed stream a batch at a time: what it holds raw stays small, however long the
    stream, and the batches' edges (mid-event, mid-character) lose nothing."""
    from mooltiproxy.dataset import tape as tape_module
    from mooltiproxy.dataset.records import CHAT
    from mooltiproxy.dataset.tape import PendingStream, Tape

    pieces = [f"Grüße {i} мир 🌍 " for i in range(2000)]
    data = ("".join(
        "data: " + json.dumps({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
                               "choices": [{"index": 0, "delta": {"content": p}, "finish_reason": None}]}) + "\n\n"
        for p in pieces) + "data: " + json.dumps({"id": "c", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        + "\n\ndata: [DONE]\n\n").encode()
    tape, held, size = Tape(CHAT), 0, 997  # a prime, so chunk edges fall everywhere in the events
    for at in range(0, len(data), size):
        tape.relayed(data[at:at + size], True)
        held = max(held, tape.relayed_size)
    assert len(data) > 100 * tape_module._PARSE_AT and held < tape_module._PARSE_AT + size
    capture = tape.capture(request_id="r", target="t", request={}, status=200, key=None, stream=True, prompt=None, started=0.0,
                           tried=[])
    assert isinstance(capture.answer, PendingStream)
    answer, why_cut = capture.answer.resolve()
    assert why_cut is None and answer["choices"][0]["message"]["content"] == "".join(pieces)


def _big_chat_answer(size: int) -> tuple[str, bytes]:
    """A chat completion's text of ``size`` characters that counts up (a piece lost or moved shows), and its bytes."""
    text = "".join(f"{i:09d} " for i in range(size // 10))
    body = json.dumps({"id": "c", "object": "chat.completion", "created": 1, "model": "m",
                       "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]})
    return text, body.encode()


_LONG_TEXT = "".join(f"{i:09d} " for i in range(20_000))  # past records._LONG: trimmed in place


@pytest.mark.parametrize("text", [
    _LONG_TEXT.strip(),  # nothing to trim: hashed as encoded
    _LONG_TEXT,  # a space at the end
    "\u3000\n\t " + _LONG_TEXT + "\xa0\u2029",  # whitespace beyond ASCII at both ends
    " é" + _LONG_TEXT + "ü\ud800 \u3000",  # non-ASCII next to the trimmed ends, a lone surrogate kept
    " \n" * 40_000,  # nothing but whitespace
    " " * 70_000 + "x",
])
def test_a_long_texts_fingerprint_is_the_trimmed_text(text: str) -> None:
    """A long text (a big answer) is trimmed for its fingerprint without a copy: the same bytes ``str.strip`` and UTF-8
    give, so a follow-up finds it however the two were sent."""
    from mooltiproxy.dataset.records import _canon, _canon_parts

    expected = b"assistant\x1f" + text.strip().encode("utf-8", "surrogatepass")
    assert b"".join(bytes(part) for part in _canon_parts({"role": "assistant", "content": text})) == expected
    assert _canon({"role": "assistant", "content": text}) == expected


@pytest.mark.parametrize("sent", [
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "one"}],  # the tail is the whole: hashed once
    [{"role": "user", "content": "one"}, {"role": "assistant", "content": "1"}, {"role": "user", "content": "two"}],
])
def test_a_big_answers_key_and_tail_are_the_fingerprints_of_what_a_follow_up_sends(sent: list[dict[str, Any]]) -> None:
    from mooltiproxy.dataset.records import CHAT, build_with_keys, fingerprint

    answer = {"role": "assistant", "content": " " + _LONG_TEXT}
    capture = Capture(request_id="r", endpoint=CHAT, target="t", request={"model": "m", "messages": sent},
                      answer={"choices": [{"index": 0, "message": answer, "finish_reason": "stop"}]})
    ((record,), _) = build_with_keys(capture, "s")
    assert record["meta"]["key"] == fingerprint([*sent, answer])
    assert record["meta"]["tail"] == fingerprint([m for m in sent if m["role"] == "system"] + [sent[-1], answer])


def test_a_big_answer_waits_for_its_record_in_a_file_not_in_memory() -> None:
    """Past tape.SPOOL_AT a non-streamed answer goes to a temporary file as it passes: what the tape holds in memory
    stays under SPOOL_AT plus one chunk, and the record gets every byte back. Past dataset.max_text it is dropped,
    file and all, and the record says so."""
    from mooltiproxy.dataset import tape as tape_module
    from mooltiproxy.dataset.records import CHAT
    from mooltiproxy.dataset.tape import Spooled, Tape

    text, body = _big_chat_answer(5 * 1024 * 1024)
    chunk = 65536
    tape, held = Tape(CHAT, limit=16 * 1024 * 1024), 0
    for at in range(0, len(body), chunk):
        tape.relayed(body[at:at + chunk], False)
        held = max(held, sum(len(c) for c in tape.relayed_body))
    assert held <= tape_module.SPOOL_AT + chunk and tape.spool is not None
    capture = tape.capture(request_id="r", target="t", request={}, status=200, key=None, stream=False, prompt=None, started=0.0,
                           tried=[])
    assert isinstance(capture.answer, Spooled) and capture.answer.size == len(body)
    assert json.loads(capture.answer.read())["choices"][0]["message"]["content"] == text

    small = Tape(CHAT, limit=2 * 1024 * 1024)
    for at in range(0, len(body), chunk):
        small.relayed(body[at:at + chunk], False)
    assert small.spool is None and not small.relayed_body  # nothing kept once past the limit
    capture = small.capture(request_id="r", target="t", request={}, status=200, key=None, stream=False, prompt=None, started=0.0,
                            tried=[])
    assert capture.answer is None and capture.truncated


def test_a_big_answers_record_is_built_in_a_slice_of_its_own_and_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A big answer's record is built alone between two turns of the event loop (eight of them in one turn held every
    waiting request for a quarter of a second), in the order the exchanges ended, so the next turn of its
    conversation finds it and links to it."""
    from mooltiproxy.dataset.tape import Spooled

    text, body = _big_chat_answer(2 * 1024 * 1024)
    spool = tempfile.TemporaryFile()  # noqa: SIM115  (Spooled.read closes it)
    spool.write(body)
    first = [{"role": "user", "content": "one"}]
    second = [*first, {"role": "assistant", "content": text}, {"role": "user", "content": "two"}]
    ok = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}]}
    recorder = Recorder(JsonlSink(tmp_path, "s"), "s")
    slices: list[int] = []
    encode = recorder._encode

    def counted(records: list[dict[str, Any]]) -> Any:
        slices.append(len(records))
        return encode(records)

    monkeypatch.setattr(recorder, "_encode", counted)

    async def run() -> None:
        recorder.start()
        recorder.submit(Capture(request_id="before", endpoint="/v1/chat/completions", target="t", key="k",
                                request={"model": "m", "messages": [{"role": "user", "content": "zero"}]}, answer=ok))
        recorder.submit(Capture(request_id="big", endpoint="/v1/chat/completions", target="t", request={"model": "m", "messages": first},
                                answer=Spooled(spool, len(body)), key="k"))
        recorder.submit(Capture(request_id="next", endpoint="/v1/chat/completions", target="t",
                                request={"model": "m", "messages": second}, key="k", answer=ok))
        while recorder._pending or recorder._scheduled:
            await asyncio.sleep(0.01)
        recorder.stop()

    asyncio.run(run())
    assert slices == [1, 1, 1]
    before, big, after = [r for f in sorted(tmp_path.glob("*.jsonl")) for r in read_jsonl(f)]
    assert [r["meta"]["request_id"] for r in (before, big, after)] == ["before", "big", "next"]
    assert big["conversations"][-1]["value"] == text
    assert after["meta"]["parent"] == big["id"] and after["meta"]["thread"] == big["id"]


def test_a_big_answer_through_the_proxy_is_recorded_whole_and_continued(client: openai.OpenAI, tmp_path: Path) -> None:
    text, _ = _big_chat_answer(3 * 1024 * 1024)
    messages: list[Any] = [{"role": "user", "content": "one"}]
    first = client.chat.completions.create(model="m", messages=messages,
                                           extra_body={"stub": {"message": {"role": "assistant", "content": text}}})
    assert first.choices[0].message.content == text
    messages += [{"role": "assistant", "content": text}, {"role": "user", "content": "two"}]
    client.chat.completions.create(model="m", messages=messages)
    big, after = records(tmp_path / "datasets", 2)
    assert big["conversations"][-1]["value"] == text and "truncated" not in big["meta"]
    assert after["meta"]["parent"] == big["id"] and after["meta"]["thread"] == big["id"]


def test_a_dropped_client_leaves_a_cut_short_record(proxy: str, tmp_path: Path) -> None:
    with http.stream("POST", proxy + "/v1/chat/completions", json={
            "model": "m", "messages": [{"role": "user", "content": "long"}], "stream": True,
            "stub": {"chunks": [f"w{i} " for i in range(50)], "delay": 0.05}}) as r:
        for _ in zip(r.iter_lines(), range(4), strict=False):
            pass
    (record,) = records(tmp_path / "datasets", 1)
    assert record["meta"]["cut_short"] is True and record["meta"]["cut_reason"] == "the client disconnected"
    assert record["conversations"][-1]["value"].startswith("w0 ")


def test_a_client_that_leaves_right_after_done_had_the_whole_stream(start_proxy: ProxyFactory, tmp_path: Path) -> None:
    """SDKs stop reading at ``[DONE]`` and close, often before the chunked body's last bytes: that stream was complete.
    The upstream here waits half a second between ``[DONE]`` and the end of its body, so the client is surely gone
    first."""
    events = [b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":"all "}}]}\n\n',
              b'data: {"choices":[{"index":0,"delta":{"content":"of it"},"finish_reason":"stop"}]}\n\n', b"data: [DONE]\n\n"]

    def handler(request: bytes) -> list[bytes]:
        head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
        return [head, *[b"%x\r\n%s\r\n" % (len(e), e) for e in events], *[b""] * 50, b"0\r\n\r\n"]

    with raw_server(handler) as (port, _):
        url = start_proxy({"targets": {"default": "a", "a": {"url": f"http://127.0.0.1:{port}"}}}).url
        with http.stream("POST", url + "/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "x"}],
                                                                    "stream": True}) as r:
            for line in r.iter_lines():
                if line == "data: [DONE]":
                    break
        (record,) = records(tmp_path / "datasets", 1)
    assert record["meta"]["cut_short"] is False and record["meta"]["cut_reason"] is None
    assert record["conversations"][-1]["value"] == "all of it"


def test_streams_read_to_the_end_by_the_sdks_are_never_cut_short(client: openai.OpenAI, proxy: str, tmp_path: Path) -> None:
    """The sync SDK closes its connection once it has read ``[DONE]``; 2–4 % of such streams were once recorded as cut short."""
    n = 100
    for i in range(n):
        stream = client.chat.completions.create(model="m", messages=[{"role": "user", "content": f"q{i}"}], stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == f"alpha says: q{i}"

    async def async_streams() -> None:
        async with openai.AsyncOpenAI(base_url=proxy + "/v1", api_key=KEY, max_retries=0) as aclient:
            async def one(i: int) -> None:
                stream = await aclient.chat.completions.create(model="m", messages=[{"role": "user", "content": f"a{i}"}], stream=True)
                async for _ in stream:
                    pass
            await asyncio.gather(*(one(i) for i in range(n)))

    asyncio.run(async_streams())
    found = records(tmp_path / "datasets", 2 * n)
    assert len(found) == 2 * n
    assert [r["meta"]["cut_reason"] for r in found if r["meta"]["cut_short"]] == []


def test_an_upstream_that_breaks_off_leaves_a_cut_short_record(client: openai.OpenAI, tmp_path: Path) -> None:
    with pytest.raises(openai.APIError):
        for _ in client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}], stream=True,
                                                extra_body={"stub": {"chunks": ["a", "b", "c"], "drop_after": 2}}):
            pass
    (record,) = records(tmp_path / "datasets", 1)
    assert record["meta"]["cut_short"] is True and "broke off" in record["meta"]["cut_reason"]
    assert record["conversations"][-1]["value"] == "ab"


def test_policy_opt_out_errors_and_redaction(openai_stub: Stub, start_proxy: ProxyFactory, tmp_path: Path) -> None:
    url = start_proxy({"targets": {"default": "a", "a": {"url": openai_stub[1]}},
                       "dataset": {"redact": [r"\b\d{4}-\d{4}-\d{4}-\d{4}\b", "(?i)secret-\\w+"]}}).url
    c = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)
    c.chat.completions.create(model="m", messages=[{"role": "user", "content": "skip me"}], extra_headers={"x-mooltiproxy-record": "off"})
    with pytest.raises(openai.RateLimitError):
        c.chat.completions.create(model="m", messages=[{"role": "user", "content": "e"}], extra_body={"stub": {"status": 429}})
    c.chat.completions.create(model="m", messages=[{"role": "user", "content": "card 1234-5678-9012-3456 and SECRET-sauce"}])
    time.sleep(0.3)
    (record,) = records(tmp_path / "datasets", 1)
    assert record["conversations"][0]["value"] == "card [REDACTED] and [REDACTED]"
    assert record["conversations"][1]["value"] == "alpha says: card [REDACTED] and [REDACTED]"
    assert "1234-5678" not in json.dumps(record)


def test_errors_are_recorded_when_asked(openai_stub: Stub, start_proxy: ProxyFactory, tmp_path: Path) -> None:
    url = start_proxy({"targets": {"default": "a", "a": {"url": openai_stub[1]}}, "dataset": {"record_errors": True, "sink": "sqlite"}}).url
    http.post(url + "/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "e"}], "stub": {"status": 503}})
    from mooltiproxy.dataset.store import Store

    deadline = time.monotonic() + 5
    found: list[dict[str, Any]] = []
    while not found and time.monotonic() < deadline:
        found = list(Store(tmp_path / "datasets").records()) if (tmp_path / "datasets" / "mooltiproxy.db").exists() else []
        time.sleep(0.05)
    (record,) = found
    assert record["meta"]["status"] == 503 and "stub error" in record["meta"]["error"]


def test_the_master_key_is_in_no_file(client: openai.OpenAI, tmp_path: Path) -> None:
    client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    records(tmp_path / "datasets", 1)
    for path in tmp_path.rglob("*"):
        if path.is_file() and path.name != "config.yaml":
            assert KEY.encode() not in path.read_bytes(), path


# -------------------------------------------------------------------------------- writing safely


def _capture(i: int) -> Capture:
    return Capture(request_id=f"r{i}", endpoint="/v1/chat/completions", target="t",
                   request={"model": "m", "messages": [{"role": "user", "content": f"q{i}"}]},
                   answer={"choices": [{"index": 0, "message": {"role": "assistant", "content": f"a{i}"}, "finish_reason": "stop"}]})


def test_a_full_queue_and_a_failing_disk_are_counted_and_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    class Broken(JsonlSink):
        def write(self, payload: Any) -> None:
            raise OSError(28, "No space left on device")

    recorder = Recorder(Broken(tmp_path, "s"), "s", queue_size=2)

    async def run() -> None:
        for i in range(5):  # the writer has not started: the queue holds 2
            recorder.submit(_capture(i))
        assert recorder.lost == 3
        recorder.start()
        recorder.stop()

    with caplog.at_level("ERROR", logger="mooltiproxy.dataset"):
        asyncio.run(run())
    assert recorder.lost == 5 and recorder.written == 0
    assert any("LOST" in r.getMessage() and "No space left" in r.getMessage() for r in caplog.records)


def test_the_recorder_keeps_up_with_a_saturated_proxy(tmp_path: Path) -> None:
    """Fifty exchanges ending in every 2 ms turn of the event loop, as at S2's saturating load (25 000 a second): the
    recorder builds as fast as they come, and none is lost to a full queue (building eight a turn at most, it fell
    behind without end)."""
    recorder = Recorder(JsonlSink(tmp_path, "s"), "s", queue_size=1000)

    async def run() -> int:
        recorder.start()
        most = 0
        for turn in range(200):
            for i in range(50):
                recorder.submit(_capture(turn * 50 + i))
            most = max(most, len(recorder._pending))
            time.sleep(0.002)  # the turn's requests
            await asyncio.sleep(0)
        recorder.stop()
        return most

    most = asyncio.run(run())
    assert recorder.lost == 0 and recorder.written == 10_000 and most < 1000


def test_a_sink_that_fails_for_a_while_gets_every_record_later(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import mooltiproxy.dataset.recorder as recorder_module

    monkeypatch.setattr(recorder_module, "RETRY_FIRST", 0.01)

    class Flaky(JsonlSink):
        failures = 3

        def write(self, payload: Any) -> None:
            if self.failures:
                self.failures -= 1
                raise OSError(28, "No space left on device")
            super().write(payload)

    sink = Flaky(tmp_path, "s")
    recorder = Recorder(sink, "s")

    async def run() -> None:
        recorder.start()
        for i in range(5):
            recorder.submit(_capture(i))
            await asyncio.sleep(0.15)  # one batch each
        await asyncio.sleep(0.3)
        recorder.stop()

    with caplog.at_level("WARNING", logger="mooltiproxy.dataset"):
        asyncio.run(run())
    assert (recorder.written, recorder.lost, recorder.spilled, recorder.held) == (5, 0, 0, 0)
    assert [r["conversations"][0]["value"] for r in read_jsonl(sink.path)] == [f"q{i}" for i in range(5)]  # in order
    messages = [r.getMessage() for r in caplog.records]
    assert any("could not be written" in m and "held, trying again" in m for m in messages)
    assert any("written to" in m and "again; every held record has caught up" in m for m in messages)


def test_a_database_sink_that_stays_down_spills_to_a_local_file(tmp_path: Path) -> None:
    class Down(SqliteSink):
        def write(self, payload: Any) -> None:
            raise sqlite3.OperationalError("database is locked")

    sink = Down(tmp_path, "s")
    recorder = Recorder(sink, "s", queue_size=2)

    async def run() -> None:
        recorder.start()
        for i in range(5):
            recorder.submit(_capture(i))
            await asyncio.sleep(0.15)
        recorder.stop()

    asyncio.run(run())
    assert (recorder.written, recorder.lost, recorder.spilled) == (0, 0, 5)
    assert sorted(r["conversations"][0]["value"] for r in read_jsonl(tmp_path / "s.jsonl")) == [f"q{i}" for i in range(5)]


def test_a_session_can_be_continued_and_keeps_its_threads(tmp_path: Path) -> None:
    async def session(capture: Capture) -> None:
        recorder = Recorder(JsonlSink(tmp_path, "s1"), "s1")
        recorder.start()
        recorder.submit(capture)
        recorder.stop()

    asyncio.run(session(_capture(1)))
    follow = _capture(2)
    follow.request["messages"] = [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"},
                                  {"role": "user", "content": "q2"}]
    asyncio.run(session(follow))
    one, two = read_jsonl(tmp_path / "s1.jsonl")
    assert two["meta"]["parent"] == one["id"] and two["meta"]["thread"] == one["id"]


def _serve(config: Path, port: int, session: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "mooltiproxy", "serve", "--config", str(config), "--port", str(port),
                             "--session", session, "--log-level", "warning"],
                            env={**os.environ, "MOOLTIPROXY_KEY": KEY}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _wait_up(port: int) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/health")
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise AssertionError("proxy did not start")


def _fire(ports: list[int], n: int, workers: int = 25, *, dying: bool = False) -> None:
    def one(i: int) -> None:
        try:
            http.post(f"http://127.0.0.1:{ports[i % len(ports)]}/v1/chat/completions",
                      json={"model": "m", "messages": [{"role": "user", "content": f"message {i} " + "x" * (i % 7) * 300}]})
        except httpx.TransportError:
            if not dying:  # the proxy being killed under the traffic is the point of that test
                raise

    threads = [threading.Thread(target=lambda k=k: [one(i) for i in range(k, n, workers)]) for k in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def test_500_concurrent_exchanges_from_several_processes_give_500_intact_records(openai_stub: Stub, tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(f"targets: {{default: a, a: {{url: '{openai_stub[1]}'}}}}\nserver: {{max_connections_per_ip: 5000}}\n")
    ports = [free_port(), free_port(), free_port()]
    procs = [_serve(config, p, "shared") for p in ports]
    try:
        for p in ports:
            _wait_up(p)
        _fire(ports, 500)
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(20)
    assert all(p.returncode == 0 for p in procs)
    lines = (tmp_path / "datasets" / "shared.jsonl").read_bytes().splitlines()
    assert len(lines) == 500
    parsed = [json.loads(line) for line in lines]  # every line whole: no interleaving
    assert len({r["id"] for r in parsed}) == 500
    assert sorted(int(r["conversations"][0]["value"].split()[1]) for r in parsed) == list(range(500))


def test_killing_the_writer_mid_run_leaves_a_readable_file(openai_stub: Stub, tmp_path: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(f"targets: {{default: a, a: {{url: '{openai_stub[1]}'}}}}\ndataset: {{fsync: never}}\n")
    port = free_port()
    proc = _serve(config, port, "killed")
    _wait_up(port)
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            _fire([port], 20, workers=5, dying=True)

    t = threading.Thread(target=traffic)
    t.start()
    time.sleep(1.5)
    proc.kill()  # SIGKILL: no shutdown, no flush
    proc.wait(10)
    stop.set()
    t.join(30)
    path = tmp_path / "datasets" / "killed.jsonl"
    raw = path.read_bytes()
    # Simulate the worst a crash can leave: half a line at the end.
    path.write_bytes(raw + b'{"id": "rec-cut", "conversations": [{"from": "hu')
    with caplog.at_level("WARNING", logger="mooltiproxy.dataset"):
        readable = list(read_jsonl(path))
    assert len(readable) == raw.count(b"\n") and len(readable) > 10
    assert any("not a whole record" in r.getMessage() for r in caplog.records)



def test_what_a_client_received_is_on_disk_within_50_ms_even_for_kill_9(openai_stub: Stub, tmp_path: Path) -> None:
    """Each exchange's record is in the file within 50 ms of the client's having its answer: a kill -9 then loses none."""
    config = tmp_path / "config.yaml"
    config.write_text(f"targets: {{default: a, a: {{url: '{openai_stub[1]}'}}}}\n")
    port = free_port()
    proc = _serve(config, port, "quick")
    _wait_up(port)
    path = tmp_path / "datasets" / "quick.jsonl"
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, max_retries=0)
    waited = []
    try:
        for i in range(20):
            client.chat.completions.create(model="m", messages=[{"role": "user", "content": f"q{i}"}])
            received = time.monotonic()
            while (path.read_bytes().count(b"\n") if path.exists() else 0) < i + 1 and time.monotonic() - received < 1:
                time.sleep(0.002)
            waited.append(time.monotonic() - received)
        for i in range(20, 30):  # and the last ones of a burst, killed 50 ms after the last answer
            client.chat.completions.create(model="m", messages=[{"role": "user", "content": f"q{i}"}])
        time.sleep(0.05)
    finally:
        proc.kill()
        proc.wait(10)
    assert len(list(read_jsonl(path))) == 30
    assert sorted(waited)[-2] < 0.05, waited  # the slowest but one: a loaded machine may stall any single wait


def test_fsync_interval_holds_when_traffic_stops(tmp_path: Path) -> None:
    """Under ``fsync: interval`` the last records are forced to disk within the interval (a second; 0.3 s here), though
    nothing follows them."""
    async def run() -> int:
        recorder = Recorder(JsonlSink(tmp_path, "s"), "s", fsync="interval", sync_every=0.3)
        recorder.start()
        await asyncio.sleep(0.35)  # the first write syncs at once; the next one waits for the interval to pass
        recorder.submit(Capture(request_id="a", endpoint="/v1/chat/completions", target="t", request={"messages": []}))
        while recorder.syncs == 0:
            await asyncio.sleep(0.01)
        recorder.submit(Capture(request_id="b", endpoint="/v1/chat/completions", target="t", request={"messages": []}))
        while recorder.written < 2:
            await asyncio.sleep(0.01)
        before = recorder.syncs
        await asyncio.sleep(0.4)
        after = recorder.syncs
        await asyncio.sleep(0.4)  # quiet, and synced: no more syncs
        assert recorder.syncs == after
        recorder.stop()
        return after - before

    assert asyncio.run(run()) == 1


def test_a_torn_last_line_is_fenced_and_the_next_record_is_readable(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A crash mid-write leaves half a line; the next run appends after it on a line of its own, so only the torn
    record is lost, not the first one written after it."""
    path = tmp_path / "s.jsonl"
    path.write_bytes(b'{"id": "rec-whole", "meta": {}}\n{"id": "rec-cut", "conversations": [{"from": "hu')

    async def run() -> None:
        recorder = Recorder(JsonlSink(tmp_path, "s"), "s")
        recorder.start()
        recorder.submit(Capture(request_id="after", endpoint="/v1/chat/completions", target="t",
                                request={"messages": [{"role": "user", "content": "after the crash"}]}))
        await asyncio.sleep(0.2)
        recorder.stop()

    with caplog.at_level("WARNING", logger="mooltiproxy.dataset"):
        asyncio.run(run())
        found = list(read_jsonl(path))
    assert len(found) == 2 and found[0]["id"] == "rec-whole" and found[1]["meta"]["request_id"] == "after"
    assert any("fenced off" in r.getMessage() for r in caplog.records)
