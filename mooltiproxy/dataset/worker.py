"""The recorder process's main (``python -m mooltiproxy.dataset.worker``, started by ``process.ProcessRecorder``): an
ordinary ``Recorder`` fed the frames the proxy sends on standard input (big answers' files on a Unix socket beside it),
reporting its counts on standard output. What it has set aside (big answers, ``aside.py``) it builds whenever no frame
is waiting, and all of it before it ends.

The first line in is the dataset's settings as JSON (never on the command line: the DSN may hold a password). Each
report out is a JSON line of the counts, with ``done``: how many exchanges sent so far are settled (their records
written, spilled or counted lost), which is how the proxy knows what a recorder process that died had not written,
and ``aside``: how many wait aside (not done, yet not behind: the proxy's pacing leaves them out).
"""

from __future__ import annotations

import contextlib
import functools
import os
import select
import signal
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from ..ops.collector import tune_collector
from ..ops.logs import flush_logs, setup_logging
from .places import make_sink
from .recorder import Recorder
from .wire import Closed, installed_dialects, receive

REPORT_EVERY = 0.1  # seconds between reports while the counts change
GIVE_WAY_EVERY = 50e-6  # seconds of building records between two offers of the core (a small record takes 20 µs)


class Reports:
    """The counts, told to the proxy whenever they changed (a thread), and once more at the end."""

    def __init__(self, recorder: Recorder, out: BinaryIO) -> None:
        self.recorder, self.out = recorder, out
        self.batches: deque[tuple[int, int]] = deque()  # (records built up to this batch's end, the exchanges it settles)
        self.done = 0
        self.last: bytes = b""
        self.lock = threading.Lock()
        self.ended = threading.Event()

    def built(self, built: int, exchanges: int) -> None:
        with self.lock:
            self.batches.append((built, exchanges))

    def tell(self) -> None:
        r = self.recorder
        with self.lock:
            settled = r.written + r.spilled + r.lost
            while self.batches and self.batches[0][0] <= settled:
                self.done += self.batches.popleft()[1]
            line = orjson.dumps({"written": r.written, "lost": r.lost, "spilled": r.spilled, "altered": r.altered, "held": r.held,
                                 "aside": len(r.aside), "done": self.done}) + b"\n"
            if line != self.last and not self.out.closed:
                self.last = line
                try:
                    self.out.write(line)
                    self.out.flush()
                except OSError:  # the proxy is gone (killed): nobody to tell, and everything sent is still written
                    with contextlib.suppress(OSError):
                        self.out.close()

    def run(self) -> None:
        while not self.ended.wait(REPORT_EVERY):
            self.tell()


def idle_priority() -> None:
    """Run only when the proxy does not need the core (Linux's SCHED_IDLE): building records is background work, and a
    request woken meanwhile takes the core at once. Nothing starves: a recorder process that falls behind makes the
    proxy wait for it (``process.ProcessRecorder.behind``), and the core is then its. On one core the proxy recording
    this way answered 0.92–0.94 of its requests per second with recording off, 0.78–0.82 at normal priority
    (bench/RESULTS.md, S2)."""
    if hasattr(os, "SCHED_IDLE"):
        with contextlib.suppress(OSError):
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))


class GiveWay:
    """Offer the core back between records (``sched_yield``) once ``every`` seconds of work have passed since the last
    offer. ``SCHED_IDLE`` alone is not enough: a request that arrives while this process runs can still wait behind
    it, up to a millisecond or so; on one core at half load the proxy waited so about 5 % of the time, which made most
    of its latency tail (bench/RESULTS.md, S1). Offered, the core goes to the proxy if it waits for it; otherwise the
    offer costs a system call."""

    def __init__(self, every: float = GIVE_WAY_EVERY, *, clock: Callable[[], float] = time.perf_counter,
                 offer: Callable[[], object] | None = None) -> None:
        self.every, self.clock = every, clock
        self.offer = offer or os.sched_yield  # POSIX; where it is missing the worker does not use this
        self.last = clock()

    def __call__(self) -> None:
        now = self.clock()
        if now - self.last >= self.every:
            self.offer()
            self.last = self.clock()


def main() -> int:
    # The proxy ends this process by closing the pipe, after sending everything; a signal meant for the proxy's
    # process group must not cut it short.
    for name in ("SIGINT", "SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_IGN)
    idle_priority()  # before any thread starts: each inherits it
    stdin, stdout = sys.stdin.fileno(), sys.stdout.buffer
    spec: dict[str, Any] = orjson.loads(_line(stdin))
    files = socket.socket(fileno=spec["files_fd"])
    setup_logging(spec.get("log_level", "info"), spec.get("log_format", "text"))
    sink = make_sink(spec["sink"], Path(spec["dir"]), spec["session"], spec.get("dsn"))
    assert sink is not None
    recorder = Recorder(sink, spec["session"], redact=spec.get("redact", ()), fsync=spec.get("fsync", "interval"),
                        queue_size=spec.get("queue", 10_000))
    recorder.start()
    reports = Reports(recorder, stdout)
    recorder.on_built = reports.built
    recorder.on_written = reports.tell  # what is written is told at once: the proxy counts the rest lost if this process dies
    if hasattr(os, "sched_yield"):
        recorder.between = GiveWay()
    tune_collector()  # a record allocates as many short-lived objects as a request does
    reports.tell()  # the first report: ready
    reporter = threading.Thread(target=reports.run, name="mooltiproxy-recorder-reports", daemon=True)
    reporter.start()
    dialects = functools.cache(installed_dialects)
    code = 0
    try:
        while True:
            # Nothing else to do: one of what waits aside, then look again; while the writer is behind, frames first.
            while recorder.aside and not select.select([stdin], [], [], 0 if recorder.writer_ready() else 0.005)[0]:
                if recorder.writer_ready():
                    recorder.build_aside()
            frames = receive(stdin, files, dialects)
            recorder.between()  # reading and unpickling a frame was work too
            recorder.take(frames)
    except Closed as exc:
        if exc.args:
            print(f"mooltiproxy recorder: {exc}", file=sys.stderr)
            code = 1
    finally:
        recorder.stop()
        reports.ended.set()
        reporter.join()
        reports.tell()
        flush_logs(wait=True)
    return code


def _line(fd: int) -> bytes:
    """The first line on the pipe, read a byte at a time: nothing after it may be taken from the pipe here."""
    out = bytearray()
    while not out.endswith(b"\n"):
        byte = os.read(fd, 1)
        if not byte:
            break
        out += byte
    return bytes(out)


if __name__ == "__main__":
    sys.exit(main())
