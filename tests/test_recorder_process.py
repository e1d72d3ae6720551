"""The recorder in a process of its own (``dataset.recorder: process``): what happens when it dies, when the proxy is
killed, when a terminal's Ctrl-C reaches both — every exchange written, or counted and logged as lost, never neither.
(What is recorded is the same either way: test_recording.py runs its tests over both recorders.)"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import KEY, ProxyFactory, http, metric, proxy_process, wait_for
from .dataset_kit import records
from .servers import free_port
from .stubs.openai_upstream import OpenAIStub

Stub = tuple[OpenAIStub, str]
BODY = {"model": "m", "messages": [{"role": "user", "content": "hello"}]}


def recorder_processes(parent: int) -> list[int]:
    """The recorder processes ``parent`` started (Linux: read from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        state = stat.rsplit(")", 1)[1].split()[0]
        if ppid == parent and state != "Z" and b"mooltiproxy.dataset.worker" in cmdline:
            found.append(int(entry.name))
    return found


def recorder_process(parent: int, other_than: int | None = None) -> int:
    """The one recorder process ``parent`` runs (not ``other_than``), once it is there."""
    def found() -> list[int]:
        return [pid for pid in recorder_processes(parent) if pid != other_than]

    wait_for(lambda: bool(found()), 10, "the recorder process")
    (pid,) = found()
    return pid


def chat(url: str, text: str) -> None:
    answer = http.post(url + "/v1/chat/completions", json={**BODY, "messages": [{"role": "user", "content": text}]})
    assert answer.status_code == 200


pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the recorder process in /proc")


@pytest.fixture
def stop_process() -> Iterator[Callable[[int], None]]:
    """SIGSTOP a process for the test; it runs again when the test ends, passed or failed. Listed after ``start_proxy``
    in a test's arguments, it is torn down first: the proxy's stop waits for its recorder process to finish."""
    stopped: list[int] = []

    def stop(pid: int) -> None:
        os.kill(pid, signal.SIGSTOP)
        stopped.append(pid)

    yield stop
    for pid in stopped:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


def test_a_recorder_process_that_dies_is_replaced_and_what_it_had_not_written_is_counted_lost(
        openai_stub: Stub, start_proxy: ProxyFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture,
        stop_process: Callable[[int], None]) -> None:
    url = start_proxy({"targets": {"default": "a", "a": {"url": openai_stub[1]}}}).url
    first = recorder_process(os.getpid())
    for i in range(3):
        chat(url, f"before {i}")
    records(tmp_path / "datasets", 3)
    wait_for(lambda: metric(url, "mooltiproxy_dataset_records_written_total") == 3, 5, "the written count")

    # Stopped, it takes nothing more in: these three wait in the pipe, sent but not written, when it is killed.
    stop_process(first)
    for i in range(3):
        chat(url, f"unwritten {i}")
    time.sleep(0.3)  # sent into the pipe
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: metric(url, "mooltiproxy_dataset_records_lost_total") == 3, 10, "the three exchanges counted lost")
    assert any("LOST 3 exchange record(s): the recorder process ended with code -9 before writing them" in r.getMessage()
               for r in caplog.records)

    recorder_process(os.getpid(), other_than=first)  # a new one
    for i in range(2):
        chat(url, f"after {i}")
    written = records(tmp_path / "datasets", 5)
    assert sorted(r["conversations"][0]["value"] for r in written) == ["after 0", "after 1", "before 0", "before 1", "before 2"]
    wait_for(lambda: metric(url, "mooltiproxy_dataset_records_written_total") == 5, 5, "the written count, over both processes")
    assert metric(url, "mooltiproxy_dataset_records_lost_total") == 3


@pytest.mark.parametrize("how", ["SIGINT to the process group", "SIGTERM to the process group", "SIGKILL to the proxy"])
def test_every_exchange_handed_over_is_written_however_the_proxy_ends(openai_stub: Stub, tmp_path: Path, how: str,
                                                                      stop_process: Callable[[int], None]) -> None:
    # As a terminal starts it: in a process group of its own, which Ctrl-C signals whole.
    proc, url = proxy_process(tmp_path, {"targets": {"default": "a", "a": {"url": openai_stub[1]}}}, new_session=True)
    try:
        recorder = recorder_process(proc.pid)
        chat(url, "exchange 0")
        records(tmp_path / "datasets", 1)  # the recorder process is up and running
        # Stopped, the recorder process has written none of these when the proxy ends.
        stop_process(recorder)
        for i in range(1, 20):
            chat(url, f"exchange {i}")
        time.sleep(0.3)  # handed over: in the pipe
        if how == "SIGKILL to the proxy":
            proc.kill()
        else:
            os.killpg(proc.pid, signal.SIGINT if how.startswith("SIGINT") else signal.SIGTERM)
            if how.startswith("SIGTERM"):  # as a service manager may: every process of the service
                os.kill(recorder, signal.SIGTERM)  # pending until it runs again
        time.sleep(0.5)
        os.kill(recorder, signal.SIGCONT)
        proc.wait(30)
        deadline = time.monotonic() + 30
        while Path(f"/proc/{recorder}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not Path(f"/proc/{recorder}").exists(), "the recorder process did not end once the proxy had"
    finally:
        if proc.poll() is None:
            proc.kill()
        out = proc.communicate()[0]
    written = records(tmp_path / "datasets", 20)
    assert len(written) == 20, out
    assert sorted(r["conversations"][0]["value"] for r in written) == sorted(f"exchange {i}" for i in range(20))
    assert "LOST" not in out, out


def test_the_packages_api_imports_on_its_own() -> None:
    """``mooltiproxy`` loads its parts when first asked (the recorder process needs few of them): each name a mapper
    imports from it is there in a fresh interpreter."""
    import mooltiproxy

    probe = "; ".join(f"from mooltiproxy import {name}" for name in mooltiproxy.__all__) + "; print('ok')"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout == "ok\n"


def test_big_answers_reach_the_recorder_process_whole_and_in_order(openai_stub: Stub, start_proxy: ProxyFactory,
                                                                   tmp_path: Path) -> None:
    """Answers past tape.SPOOL_AT wait in a temporary file and are copied from it into the pipe: every byte arrives,
    and the exchange that continues one is linked to it."""
    url = start_proxy({"targets": {"default": "a", "a": {"url": openai_stub[1]}}}).url
    texts = ["".join(f"{i:09d}{n} " for i in range(200_000)) for n in range(2)]  # 2.2 MB each, counting up
    history: list[dict[str, Any]] = []
    for n, text in enumerate(texts):
        history.append({"role": "user", "content": f"turn {n}"})
        answer = http.post(url + "/v1/chat/completions", json={**BODY, "messages": history,
                                                                "stub": {"message": {"role": "assistant", "content": text}}})
        assert answer.status_code == 200 and answer.json()["choices"][0]["message"]["content"] == text
        history.append({"role": "assistant", "content": text})
    first, second = records(tmp_path / "datasets", 2)
    assert first["conversations"][-1]["value"] == texts[0] and second["conversations"][-1]["value"] == texts[1]
    assert second["meta"]["parent"] == first["id"] and second["meta"]["thread"] == first["id"]


def test_a_sink_the_recorder_process_cannot_open_stops_the_proxys_start(openai_stub: Stub, tmp_path: Path) -> None:
    """As with the in-process recorder: a proxy that could record nothing does not start, and says why."""
    (tmp_path / "datasets" / "s1.jsonl").mkdir(parents=True)  # where the session's file must go: a folder
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"targets": {"default": "a", "a": {"url": openai_stub[1]}}, "dataset": {"session": "s1"}}))
    done = subprocess.run([sys.executable, "-m", "mooltiproxy", "serve", "--config", str(path), "--port", str(free_port())],
                          env={**os.environ, "MOOLTIPROXY_KEY": KEY}, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "IsADirectoryError" in done.stderr and "the recorder process could not open" in done.stderr


def test_a_recorder_process_that_falls_behind_slows_the_proxy_and_loses_nothing(
        openai_stub: Stub, start_proxy: ProxyFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture,
        stop_process: Callable[[int], None]) -> None:
    """Past half of dataset.queue waiting to be sent, new requests wait until the recorder process has caught up: the
    proxy runs at the pace of its recording, as the in-process recorder makes it, and no record is lost."""
    url = start_proxy({"targets": {"default": "a", "a": {"url": openai_stub[1]}}, "dataset": {"queue": 40}}).url
    recorder = recorder_process(os.getpid())
    chat(url, "warm")
    records(tmp_path / "datasets", 1)
    stop_process(recorder)  # it takes nothing in: the pipe fills (big prompts), then the queue
    prompt = "x" * 60_000
    done: list[int] = []

    def one(i: int) -> None:
        answer = http.post(url + "/v1/chat/completions", json={**BODY, "messages": [{"role": "user", "content": f"{i} {prompt}"}]},
                           timeout=60)
        done.append(answer.status_code)

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(one, i) for i in range(80)]
        wait_for(lambda: any("new requests wait for it to catch up" in r.getMessage() for r in caplog.records), 20,
                 "the proxy to say it waits for the recorder")
        time.sleep(0.5)
        held = len(done)
        assert held < 80  # the rest wait
        time.sleep(0.5)
        assert len(done) == held  # and stay waiting while the recorder process cannot take anything
        os.kill(recorder, signal.SIGCONT)
        for future in futures:
            future.result(timeout=60)
    assert done == [200] * 80
    assert len(records(tmp_path / "datasets", 81, timeout=20)) == 81
    wait_for(lambda: metric(url, "mooltiproxy_dataset_records_written_total") == 81, 10, "every record written")
    assert metric(url, "mooltiproxy_dataset_records_lost_total") == 0


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="Linux's SCHED_IDLE")
def test_the_recorder_process_runs_only_when_the_proxy_does_not_need_the_core(start_proxy: ProxyFactory, openai_stub: Stub) -> None:
    start_proxy({"targets": {"default": "a", "a": {"url": openai_stub[1]}}})
    recorder = recorder_process(os.getpid())
    def threads() -> list[int]:
        return [int(t.name) for t in Path(f"/proc/{recorder}/task").iterdir()]

    wait_for(lambda: len(threads()) >= 3, 10, "its threads: reading the pipe, writing the sink, reporting")
    assert {os.sched_getscheduler(t) for t in threads()} == {os.SCHED_IDLE}
