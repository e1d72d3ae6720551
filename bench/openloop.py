"""The open-loop generator: requests at a fixed rate, each one's latency timed from when it was due.

A closed-loop client waits for an answer before asking again, so a slow server slows the load and
hides its own queueing (coordinated omission). Here request ``i`` is due at ``t0 + i / rate``
whatever happened before; it goes out on an idle keep-alive connection (a new one when all are
busy), and its latency runs from the due time, so any lateness of the generator itself is counted
too. ``lag`` reports that lateness separately, to show the generator was not the bottleneck.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from .http1 import Conn, Handler, Target
from .stats import summary


class _Timed(Handler):
    __slots__ = ("conn", "due", "run")

    def __init__(self, run: _Run, conn: Conn, due: float) -> None:
        self.run = run
        self.conn = conn
        self.due = due

    def headers(self, status: int, captured: bytes | None, t: float) -> None:
        self.run.statuses[status] += 1
        if captured is not None:
            with contextlib.suppress(ValueError):
                self.run.captured.append(float(captured))

    def done(self, t: float) -> None:
        self.run.latencies.append((t - self.due) * 1000)
        self.run.finish(self.conn)

    def failed(self, exc: BaseException) -> None:
        self.run.errors[type(exc).__name__] += 1
        self.run.finish(None)


class _Run:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.lags: list[float] = []
        self.captured: list[float] = []
        self.statuses: Counter[int] = Counter()
        self.errors: Counter[str] = Counter()
        self.idle: list[Conn] = []
        self.tasks: set[asyncio.Future[None]] = set()
        self.pending = 0
        self.all_sent = False
        self.finished = asyncio.get_running_loop().create_future()

    def finish(self, conn: Conn | None) -> None:
        self.pending -= 1
        if conn is not None and conn.idle:
            self.idle.append(conn)
        if self.all_sent and self.pending == 0 and not self.finished.done():
            self.finished.set_result(None)


class _Clock(threading.Thread):
    """Wakes the event loop when requests fall due. The event loop's own timers tick in whole
    milliseconds, which showed as up to 1 ms of lateness; a thread's ``time.sleep`` is good to tens of
    microseconds."""

    def __init__(self, loop: asyncio.AbstractEventLoop, t0: float, rate: float, n: int, pump: Callable[[], None]) -> None:
        super().__init__(daemon=True)
        self.loop, self.t0, self.rate, self.n, self.pump = loop, t0, rate, n, pump
        self.stopped = threading.Event()

    def run(self) -> None:
        j = 0
        while j < self.n and not self.stopped.is_set():
            delay = self.t0 + j / self.rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            self.loop.call_soon_threadsafe(self.pump)
            j = max(j + 1, int((time.perf_counter() - self.t0) * self.rate) + 1)


async def open_loop(url: str, body: bytes, headers: dict[str, str], *, rate: float, duration: float, capture: str = "",
                    connections: int = 32, timeout: float = 10.0) -> dict[str, Any]:
    """Send ``rate * duration`` requests on schedule; latency, lag and captured-header summaries in ms."""
    # The clock thread needs the GIL back promptly when it wakes.
    sys.setswitchinterval(0.0005)
    target = Target(url, body, headers)
    cap = capture.lower().encode()
    run = _Run()
    opened = connections
    run.idle = [await target.connect(capture=cap) for _ in range(connections)]
    n = max(1, int(rate * duration))
    loop = asyncio.get_running_loop()
    sent_all = loop.create_future()
    t0 = time.perf_counter() + 0.01
    i = 0

    def send(conn: Conn, due: float) -> None:
        run.lags.append((time.perf_counter() - due) * 1000)
        conn.send(target.request, _Timed(run, conn, due))

    async def send_on_new(due: float) -> None:
        nonlocal opened
        opened += 1
        send(await target.connect(capture=cap), due)

    def pump() -> None:
        # Everything already due goes out now, in order; none is skipped or merged.
        nonlocal i
        now = time.perf_counter()
        while i < n and t0 + i / rate <= now:
            due = t0 + i / rate
            run.pending += 1
            if run.idle:
                send(run.idle.pop(), due)
            else:
                run.tasks.add(asyncio.ensure_future(send_on_new(due)))
            i += 1
        if i == n and not sent_all.done():
            sent_all.set_result(None)

    clock = _Clock(loop, t0, rate, n, pump)
    clock.start()
    try:
        await sent_all
    finally:
        clock.stopped.set()
    await asyncio.gather(*run.tasks, return_exceptions=True)
    run.all_sent = True
    if run.pending:
        try:
            await asyncio.wait_for(asyncio.shield(run.finished), timeout)
        except TimeoutError:
            run.errors["timeout"] += run.pending
    for conn in run.idle:
        conn.close()
    ok = run.statuses.get(200, 0)
    return {
        "rate": rate,
        "sent": n,
        "ok": ok,
        "statuses": {str(k): v for k, v in run.statuses.items()},
        "errors": dict(run.errors),
        "connections": opened,
        "latency_ms": summary(run.latencies),
        "lag_ms": summary(run.lags),
        "header_ms": summary(run.captured),
    }
