"""Recorded datasets for the curation tests (exports, review page), made with the recorder's own record builder."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from mooltiproxy.dataset.linking import Linker
from mooltiproxy.dataset.records import CHAT, COMPLETION, Capture, build_with_keys
from mooltiproxy.dataset.sinks import read_jsonl

T0 = datetime(2026, 11, 21, 10, 0, tzinfo=UTC).timestamp()
WEATHER = {"type": "function", "function": {"name": "weather", "description": "Weather in a city",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}


def call(name: str, arguments: dict[str, Any], call_id: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": orjson.dumps(arguments).decode()}}


class Recording:
    """A dataset folder being filled with exchanges, one second apart, linked and written as the recorder does
    (one client, so the same conversation sent again soon is its regeneration)."""

    def __init__(self, folder: Path, session: str = "s1") -> None:
        self.folder = folder
        self.session = session
        self.clock = T0
        self.linker = Linker()
        folder.mkdir(parents=True, exist_ok=True)

    def _build(self, capture: Capture, session: str) -> list[dict[str, Any]]:
        records, continues = build_with_keys(capture, session)
        self.linker.link(capture, records, continues)
        return records

    def _write(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        with (self.folder / f"{records[0]['session']}.jsonl").open("ab") as f:
            f.write(b"".join(orjson.dumps(r) + b"\n" for r in records))
        return records

    def _capture(self, endpoint: str, request: dict[str, Any], answer: dict[str, Any] | None, **options: Any) -> Capture:
        self.clock += 1
        return Capture(request_id=os.urandom(6).hex(), endpoint=endpoint, target=options.pop("target", "local"), request=request,
                       answer=answer, latency_ms=12.0, created=self.clock, **options)

    def chat(self, messages: list[dict[str, Any]], *answers: str | dict[str, Any], session: str | None = None,
             tools: list[dict[str, Any]] | None = None, status: int = 200, **options: Any) -> list[dict[str, Any]]:
        """One request and its answer(s): several answers are the n choices of one request."""
        request: dict[str, Any] = {"model": "m", "messages": messages, **({"tools": tools} if tools else {})}
        choices = [{"index": i, "message": a if isinstance(a, dict) else {"role": "assistant", "content": a},
                    "finish_reason": "tool_calls" if isinstance(a, dict) and a.get("tool_calls") else "stop"}
                   for i, a in enumerate(answers)]
        usage = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
        answer = {"model": "m", "choices": choices, "usage": usage} if answers else None
        return self._write(self._build(self._capture(CHAT, request, answer, status=status, **options), session or self.session))

    def completion(self, prompt: str, text: str, *, session: str | None = None, **options: Any) -> dict[str, Any]:
        answer = {"model": "m", "choices": [{"index": 0, "text": text, "finish_reason": "stop"}],
                  "usage": {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}}
        capture = self._capture(COMPLETION, {"model": "m", "prompt": prompt}, answer, **options)
        return self._write(self._build(capture, session or self.session))[0]


SYSTEM = {"role": "system", "content": "Be nice."}


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, Any]:
    return {"role": "assistant", "content": text}


def sample(folder: Path) -> dict[str, dict[str, Any]]:
    """A small dataset with every shape the exports must handle, by name."""
    rec = Recording(folder)
    r: dict[str, dict[str, Any]] = {}
    # A three-turn chat; its second turn regenerated once, its first turn regenerated as a new request.
    (r["a1"],) = rec.chat([SYSTEM, user("one")], "first answer")
    (r["a2"],) = rec.chat([SYSTEM, user("one"), assistant("first answer"), user("two")], "second answer")
    (r["a2b"],) = rec.chat([SYSTEM, user("one"), assistant("first answer"), user("two")], "second answer, again")
    (r["a3"],) = rec.chat([SYSTEM, user("one"), assistant("first answer"), user("two"), assistant("second answer"), user("three")],
                          "third answer")
    (r["a1b"],) = rec.chat([SYSTEM, user("one")], "first answer (retry)")
    # Tools: text said with two parallel calls, then both results and the final answer.
    calls = {"role": "assistant", "content": "Let me look.",
             "tool_calls": [call("weather", {"city": "Paris"}, "c1"), call("weather", {"city": "Rome"}, "c2")]}
    (r["t1"],) = rec.chat([user("Weather in Paris and Rome?")], calls, tools=[WEATHER])
    (r["t2"],) = rec.chat([user("Weather in Paris and Rome?"), calls, {"role": "tool", "tool_call_id": "c1", "content": '{"temp": 20}'},
                           {"role": "tool", "tool_call_id": "c2", "content": "25 degrees"}], "Paris 20, Rome 25.", tools=[WEATHER])
    # Another session and target: a completion; a SillyTavern-style chat; a prefilled answer; n = 2.
    r["p1"] = rec.completion("Once upon", " a time", session="s2", target="other")
    (r["st"],) = rec.chat([{"role": "system", "content": "You are Bob."}, assistant("Hi, I'm Bob!"),
                           {"role": "system", "content": "[Be terse.]"}, user("hello"),
                           {"role": "system", "content": "[Stay in character.]"}], "Hey.", session="s2")
    (r["pre"],) = rec.chat([user("Write a haiku"), assistant("Autumn")], " leaves fall", session="s2")
    r["n1"], r["n2"] = rec.chat([user("Pick a number")], "Seven.", "Three.", session="s2", target="other")
    # What exports leave out: an answer cut short, an error, a tool call whose result is missing.
    (r["cut"],) = rec.chat([user("Tell a long story")], "Once there was", cut_short=True, cut_reason="client disconnected")
    (r["err"],) = rec.chat([user("fail please")], status=500, error="upstream said no")
    (r["broken"],) = rec.chat([user("x"), {"role": "assistant", "content": None, "tool_calls": [call("weather", {"city": "Oslo"}, "c9")]},
                               user("y")], "z", session="s2")
    return r


def start_review_proxy(stack: Any, tmp_path: Path, monkeypatch: Any, config: dict[str, Any] | None = None,
                       env: dict[str, str] | None = None) -> Any:
    """The proxy from a config.yaml in ``tmp_path`` (its dataset in tmp_path/datasets), with the review page, on a free port."""
    import yaml

    from mooltiproxy import create_app, load
    from mooltiproxy.http.server import uvicorn_config

    from .conftest import KEY
    from .servers import serve

    for name, value in {"MOOLTIPROXY_KEY": KEY, **(env or {})}.items():
        monkeypatch.setenv(name, value)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config or {"targets": {"default": "a", "a": {"url": "http://127.0.0.1:9"}}}, sort_keys=False))
    loaded = load(path)
    app = create_app(loaded)
    return stack.enter_context(serve(app, config=uvicorn_config(app, loaded.server, host="127.0.0.1", log_level="warning")))


def records(folder: Path, n: int, timeout: float = 5.0) -> list[dict[str, Any]]:
    """The records the proxy has written to ``folder`` so far, oldest first, once there are (at least) ``n``."""
    deadline = time.monotonic() + timeout
    while True:
        found = [r for f in sorted(folder.glob("*.jsonl")) for r in read_jsonl(f)]
        if len(found) >= n or time.monotonic() > deadline:
            return sorted(found, key=lambda r: r["meta"]["created"])
        time.sleep(0.05)
