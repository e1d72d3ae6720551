"""Sharing one core with the recorder process (``dataset.pacing``): the proxy gives the core away in short slices only
when the recorder process is behind *and* waits for a core — never when it has one of its own or waits on a disk.

The decisions are tested with a probe the test drives; ``cpu_state`` with real processes pinned to one core."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from mooltiproxy.dataset import pacing
from mooltiproxy.dataset.pacing import CpuState, Pacer, cpu_state, here
from mooltiproxy.dataset.process import ProcessRecorder
from mooltiproxy.dataset.recorder import Recorder as RealRecorder
from mooltiproxy.dataset.records import Capture
from mooltiproxy.dataset.sinks import JsonlSink
from mooltiproxy.dataset.tape import Spooled
from mooltiproxy.dataset.worker import GiveWay

from .conftest import wait_for

linux = pytest.mark.skipif(here() is None, reason="Linux's /proc/<pid>/stat and schedstat")


class Recorder:
    """What the pacer sees of a recorder process: how far behind, whether runnable, the CPU it has had."""

    def __init__(self, behind: int, runnable: bool, share: float, cpu: int = 0) -> None:
        self.behind, self.runnable, self.share = behind, runnable, share  # share: of wall time it gets while not given
        self.cpu = cpu  # the pacer's own core is 0
        self.ran = 0
        self.last = time.monotonic_ns()
        self.slept: list[float] = []

    def probe(self) -> CpuState | None:
        now = time.monotonic_ns()
        self.ran += int((now - self.last) * self.share)
        self.last = now
        return CpuState(self.runnable, self.ran, self.cpu)

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)
        self.slept.append(seconds)
        self.ran += int(seconds * 1e9)  # given the core, it runs
        self.last = time.monotonic_ns()


def busy(share: float = 1.0) -> Callable[[], int]:
    """The event loop's CPU as the pacer reads it: ``share`` of the wall time (1.0: a saturated proxy)."""
    start = time.monotonic_ns()
    return lambda: int((time.monotonic_ns() - start) * share)


def run_pacer(recorder: Recorder, seconds: float = 0.25, loop_share: float = 1.0) -> Pacer:
    async def main() -> Pacer:
        pacer = Pacer(lambda: recorder.behind, recorder.probe, sleep=recorder.sleep, core=lambda: 0, own=busy(loop_share))
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        while loop.time() < end:  # exchanges handed over every LINGER, as ProcessRecorder does
            pacer.poke(loop)
            await asyncio.sleep(0.025)
        return pacer

    return asyncio.run(main())


@linux
def test_a_starved_recorder_process_gets_slices_that_grow_with_its_backlog() -> None:
    given = {}
    some = pacing.BEHIND + 100
    for behind in (some, 100_000):
        recorder = Recorder(behind, True, 0.0)
        pacer = run_pacer(recorder)
        assert pacer.slices >= 5  # a look every TICK (20 ms) over a quarter of a second
        assert pacer.given == pytest.approx(sum(recorder.slept)) and len(recorder.slept) == pacer.slices
        given[behind] = pacer.given / pacer.slices
    assert given[some] == pytest.approx(some * pacing.PER_EXCHANGE, rel=0.3)  # a slice as long as the backlog asks…
    assert given[100_000] == pytest.approx(pacing.MAX_SLICE, rel=0.3)  # …up to a cap


@linux
@pytest.mark.parametrize(("why", "recorder"), [
    ("caught up", Recorder(pacing.BEHIND, True, 0.0)),
    ("a core of its own: it runs", Recorder(100_000, True, 0.9)),
    ("waiting on its disk or database, not on a core", Recorder(100_000, False, 0.0)),
    ("waiting for another core, which this one's sleep would not give it", Recorder(100_000, True, 0.0, cpu=1)),
])
def test_no_slice_is_given_when_it_would_not_help(why: str, recorder: Recorder) -> None:
    pacer = run_pacer(recorder)
    assert pacer.slices == 0 and recorder.slept == [], why


@linux
def test_no_slice_is_given_while_the_event_loop_leaves_the_core_idle_at_moments() -> None:
    """At half load the recorder process runs in the moments the event loop rests, behind the requests it lets go
    first: runnable and short of CPU, it looks starved, yet a slice would only hold up the requests arriving in it."""
    for share, given in ((0.6, False), (0.8, False), (0.95, True)):
        recorder = Recorder(100_000, True, 0.0)
        pacer = run_pacer(recorder, loop_share=share)
        assert (pacer.slices > 0) is given, share


@linux
def test_the_pacer_stops_looking_once_the_recorder_process_caught_up() -> None:
    recorder = Recorder(100_000, True, 0.0)

    async def main() -> tuple[int, int]:
        pacer = Pacer(lambda: recorder.behind, recorder.probe, sleep=recorder.sleep, core=lambda: 0, own=busy())
        pacer.poke(asyncio.get_running_loop())
        await asyncio.sleep(0.1)
        given = pacer.slices
        recorder.behind = 0
        await asyncio.sleep(0.1)
        return given, pacer.slices

    given, after = asyncio.run(main())
    assert given >= 2 and after - given <= 1


# ------------------------------------------------------------------ cpu_state on real processes

SPIN = "import os, sys\nif sys.argv[1] == 'idle': os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))\nwhile True: pass\n"


@pytest.fixture
def one_core() -> Iterator[int]:
    """A core this test and its children keep to; the test's own affinity restored after."""
    before = os.sched_getaffinity(0)
    core = min(before)
    os.sched_setaffinity(0, {core})
    try:
        yield core
    finally:
        os.sched_setaffinity(0, before)


def spinner(kind: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", SPIN, kind])


def spin(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


@linux
@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="Linux's SCHED_IDLE")
def test_cpu_state_sees_an_idle_priority_process_starved_by_a_busy_one_on_its_core(one_core: int) -> None:
    child = spinner("idle")
    try:
        time.sleep(0.3)  # started and switched to SCHED_IDLE
        before = cpu_state(child.pid)
        assert before is not None
        spin(0.3)  # this process holds the core
        during = cpu_state(child.pid)
        assert during is not None and during.runnable and during.cpu == one_core == here()
        assert during.ran - before.ran < 0.5 * 0.3e9  # runnable, in this core's queue, yet it had well under half of it
        # Given the core once this process rests: at once on a quiet machine; a parallel test run's other workers
        # may hold it a while too (the child is idle-priority to them as well).
        def given() -> bool:
            after = cpu_state(child.pid)
            assert after is not None
            return after.ran - during.ran > 0.05e9

        wait_for(given, 10, "the idle-priority child had 50 ms of the core")
    finally:
        child.kill()
        child.wait()


@linux
def test_cpu_state_tells_a_blocked_process_from_a_runnable_one() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        time.sleep(0.3)
        state = cpu_state(child.pid)
        assert state is not None and not state.runnable
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        assert cpu_state(child.pid) is None  # gone: nothing to give the core to
    finally:
        child.kill()
        child.wait()


# ------------------------------------------------------------------ a real recorder process on the proxy's core

@linux
@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="Linux's SCHED_IDLE")
def test_a_recorder_process_on_the_core_of_a_busy_event_loop_records_meanwhile_and_nothing_waits(
        tmp_path: Path, one_core: int) -> None:
    """The event loop never rests (requests on a saturated core): the idle-priority recorder process gets only the
    slices the pacer gives, and records as the exchanges come, without back-pressure stopping anything."""
    spec: dict[str, Any] = {"sink": "jsonl", "dir": str(tmp_path), "session": "s", "dsn": None, "redact": [], "fsync": "interval",
            "queue": 10_000, "log_level": "info", "log_format": "text"}
    recorder = ProcessRecorder(JsonlSink(tmp_path, "s"), "s", spec)
    answer = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}]}
    sent = 3000
    written_while_busy: list[int] = []

    async def main() -> None:
        recorder.start()
        assert cpu_state(recorder._proc.pid).cpu == one_core  # type: ignore[union-attr]  # it inherited the core
        for i in range(sent):  # 3000 exchanges, each after 0.3 ms of the loop's own work, never resting
            spin(0.0003)
            recorder.submit(Capture(request_id=f"r{i}", endpoint="/v1/chat/completions", target="t",
                                    request={"model": "m", "messages": [{"role": "user", "content": f"question {i}"}]},
                                    answer=answer))
            assert not recorder.behind
            await asyncio.sleep(0)
        written_while_busy.append(recorder.written)
        recorder.stop()

    asyncio.run(main())
    assert recorder.pacer.slices > 0 and recorder.pacer.given > 0
    assert written_while_busy[0] >= sent // 2  # recorded while the loop was busy, not all at the end
    assert recorder.written == sent and recorder.lost == 0
    assert sum(1 for f in tmp_path.glob("*.jsonl") for _ in f.open()) == sent


# ------------------------------------------------------------------ the recorder process offers the core back

def test_the_recorder_process_offers_the_core_back_between_records_at_most_every_so_often() -> None:
    now = [0.0]
    offered: list[float] = []
    give = GiveWay(50e-6, clock=lambda: now[0], offer=lambda: offered.append(now[0]))
    for step in (10e-6, 30e-6, 20e-6, 1e-6, 100e-6, 1e-6):
        now[0] += step
        give()
    assert offered == pytest.approx([60e-6, 161e-6])


def test_the_recorder_calls_between_after_every_exchange_and_batch_it_builds_and_before_writing(tmp_path: Path) -> None:
    recorder = RealRecorder(JsonlSink(tmp_path, "s"), "s")
    building, writing = [], []
    recorder.between = lambda: (building if threading.current_thread() is threading.main_thread() else writing).append(1)
    recorder.start()
    answer = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}]}
    body = orjson.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": "x" * 2_000_000},
                                      "finish_reason": "stop"}]})
    spool = tempfile.TemporaryFile()  # noqa: SIM115  (Spooled.read closes it)
    spool.write(body)

    def chat(i: int, answer: Any) -> Capture:
        return Capture(request_id=f"r{i}", endpoint="/v1/chat/completions", target="t", key="k",
                       request={"model": "m", "messages": [{"role": "user", "content": f"question {i}"}]}, answer=answer)

    recorder.take([chat(0, Spooled(spool, len(body))), *(chat(i, answer) for i in range(1, 5))])
    assert len(building) == 4 + 1  # the four small exchanges, built at once, and their batch; the big one waits aside
    recorder.build_aside()
    assert len(building) == 5 + 2
    recorder.stop()
    assert recorder.written == 5 and len(writing) >= 1
