"""What single steps of the request path cost, in microseconds of one core, for explaining the scenarios.

    python -m bench.micro [--quick]
    python -m bench.micro --big BYTES

Each step runs on its own, warm, best of several repeats (timeit); the figures are CPU the proxy spends
per exchange on the step, not latency. They explain S6 (translation to TGI) and S2's recording on/off.
``--big`` times the record of one answer of BYTES instead, step by step, in milliseconds (S7: a record is
built on the event loop, so a big one holds up every request waiting behind it).
"""

from __future__ import annotations

import sys
import time
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from mooltiproxy import parse
from mooltiproxy.dataset import wire
from mooltiproxy.dataset.records import Capture, build_with_keys, redact
from mooltiproxy.dataset.sinks import JsonlSink
from mooltiproxy.translate.mapping import MapContext
from mooltiproxy.translate.prompting import load_prompter
from mooltiproxy.translate.sandbox import Sandbox

CHAT = {"model": "m", "messages": [{"role": "system", "content": "You are brief."},
                                   {"role": "user", "content": "Say hello to the benchmark, please."}], "max_tokens": 32}
OPENAI_ANSWER = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
                 "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello, benchmark."}, "finish_reason": "stop"}],
                 "usage": {"prompt_tokens": 20, "completion_tokens": 5, "total_tokens": 25}}
TGI_ANSWER = {"generated_text": "Hello, benchmark.", "details": {"finish_reason": "eos_token", "generated_tokens": 5}}


FRAME = 125  # exchanges the proxy sends the recorder process at once: 25 ms of traffic at 5 000 requests a second


def per_call(step: Callable[[], Any], number: int = 2000, repeat: int = 7) -> float:
    """Microseconds per call, the best of ``repeat`` runs of ``number`` calls."""
    return min(timeit.repeat(step, number=number, repeat=repeat)) / number * 1e6


def big_record(size: int, repeat: int = 5) -> None:
    """The record of one chat answer of ``size`` bytes (S7's big answers): parse, build, redact, encode, in ms."""
    choice: dict[str, Any] = {**OPENAI_ANSWER["choices"][0], "message": {"role": "assistant", "content": ""}}  # type: ignore[index]
    answer: dict[str, Any] = {**OPENAI_ANSWER, "choices": [choice]}
    room = max(0, size - len(orjson.dumps(answer)))
    choice["message"]["content"] = "".join(f"{i:09d} " for i in range(room // 10 + 1))[:room]
    raw, raw_chat = orjson.dumps(answer), orjson.dumps(CHAT)
    sink = JsonlSink(Path("."), "unused")
    best: dict[str, float] = {}
    for _ in range(repeat):
        t0 = time.perf_counter()
        parsed = orjson.loads(raw)
        t1 = time.perf_counter()
        capture = Capture(request_id="r", endpoint="/v1/chat/completions", target="t", request=orjson.loads(raw_chat), answer=parsed,
                          key="master", latency_ms=1.0, created=time.time())
        records, _ = build_with_keys(capture, "s")
        t2 = time.perf_counter()
        redacted = [redact(r, []) for r in records]
        t3 = time.perf_counter()
        sink.encode(redacted)
        t4 = time.perf_counter()
        for name, took in (("parse the answer (orjson)", t1 - t0), ("build the record", t2 - t1), ("redact", t3 - t2),
                           ("encode", t4 - t3), ("the whole record", t4 - t0)):
            best[name] = min(best.get(name, took), took)
    print(f"ms for the record of one {len(raw)}-byte answer, best of {repeat}, one core")
    width = max(len(name) for name in best)
    for name, took in best.items():
        print(f"  {name:<{width}}  {took * 1000:7.1f}")


def main() -> None:
    if "--big" in sys.argv[1:]:
        big_record(int(sys.argv[sys.argv.index("--big") + 1]))
        return
    quick = "--quick" in sys.argv[1:]  # a check that every step runs, not a measurement
    number, repeat = (20, 1) if quick else (2000, 7)
    config = parse({"targets": {"t": {"type": "tgi", "url": "http://127.0.0.1:9", "prompter": "llama2-chat"}}}, environ={},
                   base_dir=Path.cwd())
    target = config.built["t"]
    route = target.routes["/v1/chat/completions"]
    assert route.request is not None and route.answer is not None
    request_mapper, answer_mapper = route.request.func, route.answer.func
    trusted = target.prompter
    sandboxed = load_prompter("prompters/llama2-chat.jinja", base_dir=Path(__file__).resolve().parent.parent)
    assert trusted is not None and sandboxed is not None and isinstance(sandboxed.environment, Sandbox)

    def ctx() -> MapContext:
        return MapContext(target=target, path="/v1/chat/completions", model="m", request_id="r", prompter=target.prompter,
                          request=CHAT)

    raw_chat, raw_answer, raw_tgi = orjson.dumps(CHAT), orjson.dumps(OPENAI_ANSWER), orjson.dumps(TGI_ANSWER)
    mapped = ctx()
    generate = request_mapper(dict(CHAT), mapped)
    sink = JsonlSink(Path("."), "unused")  # only its encoding is used; nothing is opened

    def record() -> Any:
        capture = Capture(request_id="r", endpoint="/v1/chat/completions", target="t", request=orjson.loads(raw_chat),
                          answer=orjson.loads(raw_answer), key="master", latency_ms=1.0, created=time.time())
        records, _ = build_with_keys(capture, "s")
        return sink.encode([redact(r, []) for r in records])

    frame = [Capture(request_id=f"r{i}", endpoint="/v1/chat/completions", target="t", request=orjson.loads(raw_chat),
                     answer=orjson.dumps({**OPENAI_ANSWER, "id": f"chatcmpl-{i}"}), key="master", latency_ms=1.0, client="127.0.0.1")
             for i in range(FRAME)]

    steps: list[tuple[str, Callable[[], Any]]] = [
        ("parse the chat request (orjson)", lambda: orjson.loads(raw_chat)),
        ("llama2-chat render, built-in preset (trusted Jinja)", lambda: trusted.render(CHAT["messages"])),
        ("llama2-chat render, the same file as a user template (sandboxed Jinja)", lambda: sandboxed.render(CHAT["messages"])),
        ("tgi.chat_request mapper (render included)", lambda: request_mapper(dict(CHAT), ctx())),
        ("encode the /generate body (orjson)", lambda: orjson.dumps(generate)),
        ("parse the TGI answer (orjson)", lambda: orjson.loads(raw_tgi)),
        ("tgi.chat_answer mapper", lambda: answer_mapper(orjson.loads(raw_tgi), mapped)),
        ("encode the OpenAI answer (orjson)", lambda: orjson.dumps(OPENAI_ANSWER)),
        ("MapContext for one exchange", ctx),
        ("one record: parse both bodies, build, redact, encode", record),
        (f"hand one exchange to the recorder process (a frame of {FRAME}, pickled)", lambda: wire.encode(frame)),
    ]
    per_exchange = {steps[-1][0]: FRAME}  # steps timed over a batch: reported per exchange
    width = max(len(name) for name, _ in steps)
    print(f"µs per call, best of {repeat} × {number}, one core")
    for name, step in steps:
        batch = per_exchange.get(name, 1)
        print(f"  {name:<{width}}  {per_call(step, max(1, number // batch), repeat) / batch:7.1f}")


if __name__ == "__main__":
    main()
