"""Big answers' files written off the event loop (dataset/spooling.py): every byte in order, whoever writes it; a relay
that gets ahead of the writing waits; a file left out is dropped with what waited; the writing thread yields."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from mooltiproxy.dataset import spooling
from mooltiproxy.dataset.records import CHAT
from mooltiproxy.dataset.spooling import AHEAD, Spooler, SpoolFile
from mooltiproxy.dataset.tape import Spooled, Tape

from .conftest import KEY, ProxyFactory, wait_for
from .dataset_kit import records
from .stubs.openai_upstream import OpenAIStub

Stub = tuple[OpenAIStub, str]
PIECE = 64 * 1024


class Held(Spooler):
    """A spooler whose thread does not write until ``release``: what it holds, only ``finish`` writes."""

    def __init__(self) -> None:
        super().__init__()
        self.woken: list[SpoolFile] = []

    def wake(self, spool: SpoolFile) -> None:
        self.woken.append(spool)

    def release(self) -> None:
        for spool in self.woken:
            spool.flush()


def pieces(total: int) -> list[bytes]:
    data = bytes(i % 251 for i in range(total))
    return [data[at:at + PIECE] for at in range(0, total, PIECE)]


def test_a_big_answer_reaches_its_file_whole_and_in_order_through_the_thread() -> None:
    spooler = Spooler()
    try:
        tape = Tape(CHAT, limit=16 * 1024 * 1024, spooler=spooler)
        parts = pieces(3 * 1024 * 1024 + 123)
        for part in parts:
            tape.relayed(part, False)
        assert tape.spool is not None and tape.relayed_body == []
        capture = tape.capture(request_id="r", target="t", request={}, status=200, key=None, stream=False, prompt=None,
                               started=0.0, tried=[])
        assert isinstance(capture.answer, Spooled) and capture.answer.writer is not None
        assert capture.answer.read() == b"".join(parts)
    finally:
        spooler.stop()


def test_what_the_thread_has_not_written_finish_writes_itself() -> None:
    spooler = Held()
    tape = Tape(CHAT, limit=16 * 1024 * 1024, spooler=spooler)
    parts = pieces(2 * 1024 * 1024)
    for part in parts:
        tape.relayed(part, False)
    assert tape.spool is not None and tape.spool.pending == sum(map(len, parts)) and len(spooler.woken) == 1
    capture = tape.capture(request_id="r", target="t", request={}, status=200, key=None, stream=False, prompt=None, started=0.0,
                           tried=[])
    assert isinstance(capture.answer, Spooled)
    assert capture.answer.read() == b"".join(parts)  # Spooled.read finished the writing, in order


def test_a_relay_ahead_of_the_writing_waits_until_half_is_written() -> None:
    async def main() -> list[str]:
        spooler = Held()
        spool = spooler.open()
        said: list[str] = []
        for part in pieces(AHEAD + PIECE):
            spool.write(part)
        assert spool.behind
        waiting = asyncio.ensure_future(spool.drained())
        await asyncio.sleep(0.05)
        said.append("waiting" if not waiting.done() else "went on")
        threading.Thread(target=spooler.release).start()  # the thread's turn comes
        await asyncio.wait_for(waiting, 5)
        said.append(f"went on with {spool.pending} bytes behind")
        spool.close()
        return said

    assert asyncio.run(main()) == ["waiting", "went on with 0 bytes behind"]


def test_an_answer_left_out_drops_what_waited_with_its_file() -> None:
    spooler = Held()
    tape = Tape(CHAT, limit=2 * 1024 * 1024, spooler=spooler)
    for part in pieces(3 * 1024 * 1024):
        tape.relayed(part, False)
    spool = spooler.woken[0]
    assert tape.spool is None and spool.pending == 0 and spool.file.closed
    spooler.release()  # the thread's turn, after: nothing to write, nothing raised
    capture = tape.capture(request_id="r", target="t", request={}, status=200, key=None, stream=False, prompt=None, started=0.0,
                           tried=[])
    assert capture.answer is None and capture.truncated


def test_a_write_that_fails_is_said_when_the_file_is_needed(tmp_path: Path) -> None:
    spooler = Held()
    spool = spooler.open()
    spool.file.close()
    (tmp_path / "read-only").write_bytes(b"")
    spool.file = open(tmp_path / "read-only", "rb")  # noqa: SIM115  (a write to it fails with EBADF)
    spool.write(b"x" * 10)
    with pytest.raises(OSError, match="could not be written to its temporary file"):
        spool.finish()
    assert spool.pending == 0
    spool.file.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a thread's own priority is Linux's")
def test_the_writing_thread_gives_way_to_the_event_loop() -> None:
    spooler = Spooler()
    try:
        spool = spooler.open()
        spool.write(b"x")
        spool.finish()
        thread = next(t for t in threading.enumerate() if t.name == "mooltiproxy-spooler")
        assert thread.native_id is not None
        native_id = thread.native_id
        wait_for(lambda: os.getpriority(os.PRIO_PROCESS, native_id) == spooling.NICE, 5, f"the spooling thread at nice {spooling.NICE}")
        assert os.getpriority(os.PRIO_PROCESS, 0) == 0  # the proxy's own threads keep theirs
        spool.close()
    finally:
        spooler.stop()


def test_a_proxy_whose_spooling_is_behind_relays_each_big_answer_at_its_pace_and_records_it_whole(
        openai_stub: Stub, start_proxy: ProxyFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The writing thread held back: a big answer's relay stops a little past what is written (its memory bounded), a
    small answer beside it is not held, and once the thread writes, the answer arrives whole and is recorded whole."""
    gate = threading.Event()
    run = Spooler._run

    def held_run(self: Spooler) -> None:
        gate.wait(30)
        run(self)

    monkeypatch.setattr(Spooler, "_run", held_run)
    url = start_proxy({"targets": {"default": "a", "a": {"url": openai_stub[1]}}}).url
    text = "".join(f"{i:09d} " for i in range(400_000))  # 4 MB
    body: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "long"}],
                            "stub": {"message": {"role": "assistant", "content": text}}}
    got = bytearray()
    status: list[int] = []

    def read() -> None:
        with httpx.stream("POST", url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"},
                          timeout=60) as big:
            status.append(big.status_code)
            for piece in big.iter_raw(65536):
                got.extend(piece)

    reader = threading.Thread(target=read)
    reader.start()
    time.sleep(1.5)  # the relay goes as far as the file's writing lets it: SPOOL_AT in memory, then AHEAD
    held = len(got)
    assert status == [200] and 1024 * 1024 < held < 2 * 1024 * 1024, held
    small = httpx.post(url + "/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
                       headers={"Authorization": f"Bearer {KEY}"}, timeout=5)
    assert small.status_code == 200 and len(got) == held  # the event loop is not held: only the big answer waits
    gate.set()
    reader.join(30)
    assert text in bytes(got).decode()
    recorded = {r["conversations"][-1]["value"] for r in records(tmp_path / "datasets", 2)}
    assert text in recorded
