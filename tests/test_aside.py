"""Big answers set aside in the recorder process: the small exchanges behind one are recorded first, unless linking
them could then come out differently; what waits is built later, in order, and counted settled only then; big
answers' files reach the recorder process over the socket beside the pipe, however many at once."""

from __future__ import annotations

import io
import os
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from mooltiproxy.dataset import recorder as recorder_module
from mooltiproxy.dataset.process import ProcessRecorder
from mooltiproxy.dataset.recorder import Recorder
from mooltiproxy.dataset.records import CHAT, Capture
from mooltiproxy.dataset.sinks import JsonlSink, read_jsonl
from mooltiproxy.dataset.tape import Spooled
from mooltiproxy.dataset.wire import encode, receive, send
from mooltiproxy.dataset.worker import Reports

STORY = [{"role": "user", "content": "Tell me a long story."}]
LONG = "".join(f"{i:09d} " for i in range(120_000))  # 1.2 MB: past tape.SPOOL_AT


def _answer(text: str) -> dict[str, Any]:
    return {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}


def _spooled(answer: dict[str, Any]) -> Spooled:
    body = orjson.dumps(answer)
    spool = tempfile.TemporaryFile()  # noqa: SIM115  (Spooled.read closes it)
    spool.write(body)
    return Spooled(spool, len(body))


def chat(request_id: str, messages: list[dict[str, Any]], answer: Any, **fields: Any) -> Capture:
    return Capture(request_id=request_id, endpoint=CHAT, target="t", key="k", client="10.0.0.1",
                   request={"model": "m", "messages": messages, **fields.pop("request", {})}, answer=answer, **fields)


def recording(tmp_path: Path) -> tuple[Recorder, list[tuple[int, int]]]:
    """A recorder as the recorder process runs it (no event loop), and what it reports built: (records so far, exchanges)."""
    recorder = Recorder(JsonlSink(tmp_path, "s"), "s")
    reported: list[tuple[int, int]] = []
    recorder.on_built = lambda built, exchanges: reported.append((built, exchanges))
    recorder.start()
    return recorder, reported


def written(tmp_path: Path) -> dict[str, dict[str, Any]]:
    return {r["meta"]["request_id"]: r for r in read_jsonl(tmp_path / "s.jsonl")}


def test_small_exchanges_behind_a_big_answer_are_recorded_first_unless_they_could_link_to_it(tmp_path: Path) -> None:
    recorder, reported = recording(tmp_path)
    recorder.take([
        chat("hello", [{"role": "user", "content": "Hello!"}], orjson.dumps(_answer("Hi."))),
        chat("big", STORY, _spooled(_answer(LONG))),
        chat("other", [{"role": "user", "content": "Weather?"}], orjson.dumps(_answer("Sunny."))),  # a stranger's question
        chat("named", STORY, orjson.dumps(_answer("Short.")), conversation="c-1"),  # a conversation of its own: another scope
        chat("more", [*STORY, {"role": "assistant", "content": LONG}, {"role": "user", "content": "More."}],
             orjson.dumps(_answer("The end."))),  # continues the big answer
        chat("again", STORY, orjson.dumps(_answer("A short one."))),  # the same turn again: its regeneration
        chat("after", [{"role": "user", "content": "Thanks."}], orjson.dumps(_answer("Welcome."))),
    ])
    assert [w.capture.request_id for w in recorder.aside.queue] == ["big", "more", "again"]
    assert reported == [(4, 4)]  # settled so far: the four recorded; what waits is not (a recorder that died would owe it)

    recorder.build_aside()
    assert not recorder.aside and reported == [(4, 4), (7, 3)]
    recorder.stop()
    records = written(tmp_path)
    assert list(records) == ["hello", "other", "named", "after", "big", "more", "again"]
    big, more, again = records["big"], records["more"], records["again"]
    assert big["conversations"][-1]["value"] == LONG
    assert more["meta"]["parent"] == big["id"] and more["meta"]["thread"] == big["id"]
    assert again["meta"]["alternative_of"] == big["id"]  # as if nothing had waited: the big answer came first
    assert records["named"]["meta"]["alternative_of"] is None and records["named"]["meta"]["thread"] == records["named"]["id"]


def test_what_continues_an_exchange_waiting_behind_a_big_answer_waits_too(tmp_path: Path) -> None:
    recorder, _ = recording(tmp_path)
    first = [*STORY, {"role": "assistant", "content": LONG}, {"role": "user", "content": "More."}]
    recorder.take([chat("big", STORY, _spooled(_answer(LONG))),
                   chat("more", first, orjson.dumps(_answer("The end."))),
                   chat("again", [*first, {"role": "assistant", "content": "The end."}, {"role": "user", "content": "Again."}],
                        orjson.dumps(_answer("Once more.")))])
    assert len(recorder.aside) == 3
    recorder.stop()  # builds what waits, in order
    records = written(tmp_path)
    assert list(records) == ["big", "more", "again"]
    assert records["again"]["meta"]["parent"] == records["more"]["id"] and records["again"]["meta"]["thread"] == records["big"]["id"]


def test_the_recorder_process_reports_what_waits_aside_so_the_proxy_does_not_give_it_the_core_for_that(tmp_path: Path) -> None:
    """The proxy shares its core with a recorder process that is behind (``pacing.py``); big answers waiting aside are
    built when the core is free anyway, so they do not count as behind. They are not done either: a recorder process
    that died now would owe them, and the proxy would count them lost."""
    recorder, _ = recording(tmp_path)
    out = io.BytesIO()
    reports = Reports(recorder, out)
    recorder.on_built = reports.built

    def reported_once(written: int) -> dict[str, int]:
        deadline = time.monotonic() + 5
        while recorder.written < written and time.monotonic() < deadline:
            time.sleep(0.01)
        reports.tell()
        return dict(orjson.loads(out.getvalue().splitlines()[-1]))

    recorder.take([chat("small", [{"role": "user", "content": "Hi"}], orjson.dumps(_answer("Hello."))),
                   chat("big", STORY, _spooled(_answer(LONG)))])
    assert {k: v for k, v in reported_once(1).items() if k in ("written", "done", "aside")} == {"written": 1, "done": 1, "aside": 1}
    recorder.build_aside()
    assert {k: v for k, v in reported_once(2).items() if k in ("written", "done", "aside")} == {"written": 2, "done": 2, "aside": 0}
    recorder.stop()

    proxy = ProcessRecorder(JsonlSink(tmp_path, "unused"), "s", {})
    proxy._sent_now, proxy._counts = 2, {"done": 1, "aside": 1}
    assert proxy._unrecorded() == 0
    proxy._counts = {"done": 1, "aside": 0}
    assert proxy._unrecorded() == 1


def test_past_its_bound_what_waits_longest_is_built_before_more_is_taken(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(recorder_module, "ASIDE_BIGS", 2)
    recorder, reported = recording(tmp_path)
    recorder.take([chat(f"big{n}", [{"role": "user", "content": f"Story {n}."}], _spooled(_answer(LONG))) for n in range(5)])
    assert [w.capture.request_id for w in recorder.aside.queue] == ["big3", "big4"]
    assert sum(exchanges for _, exchanges in reported) == 3
    recorder.stop()
    assert list(written(tmp_path)) == [f"big{n}" for n in range(5)]


def test_big_answers_files_are_handed_over_beside_the_pipe_however_many_in_a_frame(tmp_path: Path) -> None:
    """Past the 253 descriptors one message can carry: sent in several, received as one frame's, every byte intact."""
    answers = [_answer(f"answer {n} " * 50) for n in range(300)]
    captures = [chat(f"c{n}", STORY, _spooled(a)) for n, a in enumerate(answers)]
    frame, spools = encode(captures)
    read_end, write_end = os.pipe()
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    sender = threading.Thread(target=send, args=(write_end, ours, frame, spools))
    sender.start()
    try:
        received = receive(read_end, theirs, dict)
    finally:
        sender.join()
        for fd in (read_end, write_end):
            os.close(fd)
        ours.close()
        theirs.close()
    assert all(s.file.closed for s in spools)  # the proxy's copies
    assert [c.request_id for c in received] == [c.request_id for c in captures]
    for capture, answer in zip(received, answers, strict=True):
        assert isinstance(capture.answer, Spooled)
        assert orjson.loads(capture.answer.read()) == answer
