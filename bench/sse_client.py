"""The SSE-aware client: time to the first event, the gaps between events, and whether ``data: [DONE]`` came.

Three ways to use it: ``closed_loop`` (each of ``concurrency`` workers streams one answer after
another for a while: throughput and latencies), ``burst`` (``n`` streams opened at once and read to
the end, or dropped after a few events), and ``slow_reader`` (a client that asks and then reads
nothing, so only flow control stands between the upstream and the proxy's memory).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

from .http1 import Conn, Handler, Target
from .procs import cpu_seconds
from .stats import summary

_DONE = (b"data: [DONE]", b"data:[DONE]")


class _Stream(Handler):
    """Splits the body into events as bytes arrive and times them."""

    def __init__(self, conn: Conn, drop_after: int | None = None) -> None:
        self.conn = conn
        self.drop_after = drop_after
        self.fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.buf = bytearray()
        self.status = 0
        self.events = 0
        self.sent = 0.0
        self.first: float | None = None
        self.last = 0.0
        self.gaps: list[float] = []
        self.done_seen = False
        self.dropped_at: float | None = None
        self.error: str | None = None

    def start(self, request: bytes) -> None:
        self.sent = time.perf_counter()
        self.conn.send(request, self)

    def headers(self, status: int, captured: bytes | None, t: float) -> None:
        self.status = status

    def body(self, data: bytes, t: float) -> None:
        if self.dropped_at is not None:
            return
        buf = self.buf
        buf += data
        start = 0
        while True:
            idx = buf.find(b"\n\n", start)
            if idx < 0:
                break
            self._event(bytes(buf[start:idx]).strip(), t)
            start = idx + 2
            if self.dropped_at is not None:
                return
        del buf[:start]

    def _event(self, event: bytes, t: float) -> None:
        if not event or event.startswith(b":"):
            return
        self.events += 1
        if self.first is None:
            self.first = t - self.sent
        else:
            self.gaps.append(t - self.last)
        self.last = t
        if event in _DONE:
            self.done_seen = True
        if self.drop_after is not None and self.events >= self.drop_after:
            # The client goes away mid-stream: the time is on the clock the stub stamps cancels with.
            self.dropped_at = time.monotonic()
            self.conn.reusable = False
            self.conn.close()
            self._settle()

    def done(self, t: float) -> None:
        self._settle()

    def failed(self, exc: BaseException) -> None:
        if self.dropped_at is None:
            self.error = type(exc).__name__
        self._settle()

    def _settle(self) -> None:
        if not self.fut.done():
            self.fut.set_result(None)


class _Tally:
    def __init__(self) -> None:
        self.first: list[float] = []
        self.gaps: list[float] = []
        self.events: list[float] = []
        self.statuses: Counter[int] = Counter()
        self.errors: Counter[str] = Counter()
        self.completed = 0
        self.missing_done = 0

    def add(self, s: _Stream, expect_done: bool) -> None:
        if s.error is not None:
            self.errors[s.error] += 1
            return
        self.statuses[s.status] += 1
        if s.status != 200 or s.dropped_at is not None:
            return
        self.completed += 1
        self.events.append(s.events)
        if s.first is not None:
            self.first.append(s.first * 1000)
        self.gaps.extend(g * 1000 for g in s.gaps)
        if expect_done and not s.done_seen:
            self.missing_done += 1

    def result(self) -> dict[str, Any]:
        return {
            "completed": self.completed,
            "missing_done": self.missing_done,
            "statuses": {str(k): v for k, v in self.statuses.items()},
            "errors": dict(self.errors),
            "first_event_ms": summary(self.first),
            "gap_ms": summary(self.gaps),
            "events": summary(self.events),
        }


async def closed_loop(url: str, body: bytes, headers: dict[str, str], *, concurrency: int, duration: float,
                      expect_done: bool = True, timeout: float = 30.0) -> dict[str, Any]:
    """``concurrency`` workers each stream answers back to back until ``duration`` has passed; the ones
    in flight then finish. Throughput is completed streams over the time until the last one ended."""
    target = Target(url, body, headers)
    tally = _Tally()
    start = time.perf_counter()
    end = start + duration
    last_done = start

    async def worker() -> None:
        nonlocal last_done
        conn: Conn | None = None
        while time.perf_counter() < end:
            if conn is None or not conn.idle:
                if conn is not None:
                    conn.close()
                conn = await target.connect()
            s = _Stream(conn)
            s.start(target.request)
            try:
                await asyncio.wait_for(s.fut, timeout)
            except TimeoutError:
                s.error = "timeout"
                conn.close()
                conn = None
            tally.add(s, expect_done)
            last_done = max(last_done, time.perf_counter())
        if conn is not None:
            conn.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    out = tally.result()
    out["concurrency"] = concurrency
    out["elapsed_s"] = last_done - start
    out["throughput"] = tally.completed / (last_done - start) if last_done > start else 0.0
    return out


async def burst(url: str, body: bytes, headers: dict[str, str], *, n: int, drop_after: int | None = None,
                expect_done: bool = True, timeout: float = 60.0, warm_url: str | None = None,
                cpu_pid: int | None = None) -> dict[str, Any]:
    """``n`` connections opened first, then ``n`` streams started together and read to the end (or
    dropped after ``drop_after`` events). With ``warm_url``, each connection first carries one request to it,
    all at once, read to the end: the server has then accepted every connection (and a proxy has its upstream
    connections pooled) before the measured streams start, as with a client's pool of kept-alive connections.
    With ``cpu_pid``, also the CPU seconds that process used while the measured streams ran."""
    target = Target(url, body, headers)
    gate = asyncio.Semaphore(64)

    async def opened() -> Conn:
        async with gate:
            return await target.connect()

    conns = await asyncio.gather(*(opened() for _ in range(n)))
    warm_failed = 0
    if warm_url is not None:
        warm = Target(warm_url, body, headers)
        warming = [_Stream(c) for c in conns]
        for s in warming:
            s.start(warm.request)
        await asyncio.wait([s.fut for s in warming], timeout=timeout)
        warm_failed = sum(1 for s in warming if not s.fut.done() or s.error is not None or s.status != 200 or not s.conn.idle)
    streams = [_Stream(c, drop_after) for c in conns]
    cpu0 = cpu_seconds(cpu_pid) if cpu_pid is not None else 0.0
    t0 = time.perf_counter()
    for s in streams:
        s.start(target.request)
    await asyncio.wait([s.fut for s in streams], timeout=timeout)
    elapsed = time.perf_counter() - t0
    cpu = cpu_seconds(cpu_pid) - cpu0 if cpu_pid is not None else None
    tally = _Tally()
    for s in streams:
        if not s.fut.done():
            s.error = "timeout"
        tally.add(s, expect_done)
    for c in conns:
        c.close()
    drops = [s.dropped_at for s in streams if s.dropped_at is not None]
    out = tally.result()
    out.update(n=n, elapsed_s=elapsed, dropped=len(drops), first_drop=min(drops, default=0.0), last_drop=max(drops, default=0.0),
               warm_failed=warm_failed, cpu_s=cpu)
    return out


async def slow_reader(url: str, body: bytes, headers: dict[str, str], *, hold: float) -> dict[str, Any]:
    """Ask for a stream, read nothing for ``hold`` seconds, then hang up."""
    target = Target(url, body, headers)
    conn = await target.connect(rcvbuf=4096)
    assert conn.transport is not None
    conn.transport.pause_reading()
    conn.send(target.request, Handler())
    await asyncio.sleep(hold)
    conn.close()
    return {"held_s": hold}
