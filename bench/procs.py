"""The processes a benchmark run starts: pinned to a core, each in its own process group, all ended on exit.

Every child is started through ``Procs.start`` so that nothing outlives the run: each gets its own
session (so Ctrl-C in the terminal reaches only the runner, which then stops them in order), and
``Procs.close`` signals whole process groups, then kills what did not stop.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

PROXY_CORE = 0
LOAD_CORE = 1


class StartError(RuntimeError):
    """A process died or never listened; the message carries the tail of its log."""


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class Procs:
    """Starts and stops the run's processes; a context manager that always cleans up."""

    logdir: Path
    started: list[Proc] = field(default_factory=list)

    def __enter__(self) -> Procs:
        self.logdir.mkdir(parents=True, exist_ok=True)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self, name: str, argv: Sequence[str], *, core: int | None, env: dict[str, str] | None = None,
              cwd: Path | None = None, stdout: int | IO[bytes] | None = None) -> Proc:
        log = self.logdir / f"{name}.log"
        cmd = [*(["taskset", "-c", str(core)] if core is not None else []), *argv]
        with open(log, "ab") as err:
            popen = subprocess.Popen(cmd, stdout=stdout if stdout is not None else err, stderr=err, stdin=subprocess.DEVNULL,
                                     env=env, cwd=cwd, start_new_session=True)
        proc = Proc(name, popen, log)
        self.started.append(proc)
        return proc

    def stop(self, proc: Proc, timeout: float = 5.0) -> None:
        if proc.alive():
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                proc.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                _signal_group(proc.pid, signal.SIGKILL)
                proc.popen.wait(timeout)
        else:
            # The leader is gone, but a child it forked may still hold the group.
            _signal_group(proc.pid, signal.SIGKILL)
        if proc.popen.stdout is not None:
            proc.popen.stdout.close()

    def close(self) -> None:
        # Newest first: load generators before proxies before upstreams.
        for proc in reversed(self.started):
            with contextlib.suppress(Exception):
                self.stop(proc)

    def pids(self) -> list[int]:
        return [p.pid for p in self.started]


def _signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(proc: Proc, port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise StartError(f"{proc.name} exited with status {proc.popen.returncode} before listening:\n{proc.tail()}")
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise StartError(f"{proc.name} did not listen on port {port} within {timeout:g} s:\n{proc.tail()}")


def pid_running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """CPU time (user and system, every thread) a process has used so far, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def quiet(pid: int, *, share: float = 0.05, window: float = 0.5, timeout: float = 60.0) -> float:
    """Wait until a process uses less than ``share`` of a core over ``window`` seconds (work left over from a load,
    such as records being built, done); the seconds waited."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        before = cpu_seconds(pid)
        time.sleep(window)
        if cpu_seconds(pid) - before < share * window:
            break
    return time.monotonic() - t0


class RssSampler:
    """Samples a process's resident memory in a thread while a load runs: baseline, peak, last, and every sample
    (``series``: seconds since the start, bytes)."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        self.pid = pid
        self.interval = interval
        self.baseline = rss_bytes(pid)
        self.peak = self.baseline
        self.last = self.baseline
        self.series: list[tuple[float, int]] = []
        self._t0 = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with contextlib.suppress(OSError, RuntimeError):
                self.last = rss_bytes(self.pid)
                self.peak = max(self.peak, self.last)
                self.series.append((time.monotonic() - self._t0, self.last))

    def at(self, seconds: float) -> int:
        """The sample nearest to ``seconds`` after the start (the baseline before any)."""
        return min(self.series, key=lambda s: abs(s[0] - seconds), default=(0.0, self.baseline))[1]

    def __enter__(self) -> RssSampler:
        self._t0 = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        with contextlib.suppress(OSError, RuntimeError):
            self.last = rss_bytes(self.pid)
            self.peak = max(self.peak, self.last)


@contextlib.contextmanager
def pinned(core: int) -> Iterator[None]:
    """Run the calling process on one core for the duration (the runner stays off the proxy's core)."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {core})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def recorder_process(pid: int, timeout: float = 10.0) -> int | None:
    """The recorder process a proxy started (``dataset.recorder: process``), or None when it has none (Linux /proc)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for task in Path(f"/proc/{pid}/task").glob("*/children"):
            for child in task.read_text().split():
                try:
                    if b"mooltiproxy.dataset.worker" in Path(f"/proc/{child}/cmdline").read_bytes():
                        return int(child)
                except OSError:
                    continue
        time.sleep(0.05)
    return None

