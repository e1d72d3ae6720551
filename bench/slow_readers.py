"""Slow readers of big answers: many clients each read a large non-stream answer at a fixed rate.

Each reader reads what the socket delivers, then stops reading (``pause_reading``) until its average is back
at ``rate`` bytes per second, and so on: read, sleep, read. While it sleeps the kernel's buffers fill and
the server's writes wait, which is the back-pressure a proxy must pass on to its upstream rather than
buffer. Every answer is checked whole: its length and SHA-256 against the same answer fetched once at full
speed from ``reference`` (the upstream itself).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import Counter
from typing import Any

from .http1 import Conn, Handler, Target
from .stats import summary


class _Slow(Handler):
    def __init__(self, conn: Conn, rate: float) -> None:
        self.conn = conn
        self.rate = rate
        self.loop = asyncio.get_running_loop()
        self.fut: asyncio.Future[None] = self.loop.create_future()
        self.hash = hashlib.sha256()
        self.size = 0
        self.status = 0
        self.sent = 0.0
        self.head: float | None = None
        self.first: float | None = None
        self.end: float | None = None
        self.paused = False
        self.pauses = 0
        self.error: str | None = None

    def start(self, request: bytes) -> None:
        self.sent = time.perf_counter()
        self.conn.send(request, self)

    def headers(self, status: int, captured: bytes | None, t: float) -> None:
        self.status = status
        self.head = t

    def body(self, data: bytes, t: float) -> None:
        if self.first is None:
            self.first = t
        self.hash.update(data)
        self.size += len(data)
        if self.rate <= 0:
            return
        wait = self.first + self.size / self.rate - time.perf_counter()
        if wait > 0.002 and not self.paused and self.conn.transport is not None:
            self.paused = True
            self.pauses += 1
            self.conn.transport.pause_reading()
            self.loop.call_later(wait, self._resume)

    def _resume(self) -> None:
        self.paused = False
        if self.conn.transport is not None and not self.conn.transport.is_closing():
            self.conn.transport.resume_reading()

    def done(self, t: float) -> None:
        self.end = t
        if not self.fut.done():
            self.fut.set_result(None)

    def failed(self, exc: BaseException) -> None:
        self.error = type(exc).__name__
        if not self.fut.done():
            self.fut.set_result(None)


async def fetch(url: str, body: bytes, headers: dict[str, str], timeout: float = 60.0) -> tuple[int, int, str]:
    """One answer read at full speed: its status, length and SHA-256."""
    target = Target(url, body, headers)
    conn = await target.connect()
    reader = _Slow(conn, 0)
    reader.start(target.request)
    try:
        await asyncio.wait_for(reader.fut, timeout)
    finally:
        conn.close()
    return reader.status, reader.size, reader.hash.hexdigest()


async def slow_readers(url: str, body: bytes, headers: dict[str, str], *, n: int, rate: float, reference: str,
                       reference_headers: dict[str, str] | None = None, timeout: float = 120.0, spread: float = 0.0) -> dict[str, Any]:
    """``n`` connections opened, then ``n`` requests sent, evenly over ``spread`` seconds (so that the readers do not
    all wake at the same moments), each answer read at ``rate`` bytes/s to its end."""
    status, size, digest = await fetch(reference, body, reference_headers or headers)
    if status != 200:
        raise RuntimeError(f"the reference answer came with status {status}")
    target = Target(url, body, headers)
    gate = asyncio.Semaphore(64)

    async def opened() -> Conn:
        async with gate:
            return await target.connect()

    conns = await asyncio.gather(*(opened() for _ in range(n)))
    readers = [_Slow(c, rate) for c in conns]
    t0 = time.perf_counter()
    loop = asyncio.get_running_loop()
    for i, r in enumerate(readers):
        loop.call_at(loop.time() + spread * i / n, r.start, target.request)
    await asyncio.wait([r.fut for r in readers], timeout=timeout + spread)
    elapsed = time.perf_counter() - t0
    for c in conns:
        c.close()
    statuses: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    whole = short = bad_hash = 0
    heads, durations, rates = [], [], []
    for r in readers:
        if not r.fut.done():
            r.error = "timeout"
        if r.error is not None:
            errors[r.error] += 1
            continue
        statuses[str(r.status)] += 1
        if r.head is not None:
            heads.append((r.head - r.sent) * 1000)
        if r.size != size:
            short += 1
        elif r.hash.hexdigest() != digest:
            bad_hash += 1
        elif r.status == 200:
            whole += 1
        if r.end is not None and r.first is not None:
            durations.append(r.end - r.sent)
            rates.append(r.size / max(1e-9, r.end - r.first) / 1e6)
    return {"n": n, "whole": whole, "short": short, "bad_hash": bad_hash, "statuses": dict(statuses), "errors": dict(errors),
            "expected_size": size, "expected_sha256": digest, "elapsed_s": elapsed, "headers_ms": summary(heads),
            "duration_s": summary(durations), "rate_mb_s": summary(rates), "pauses": sum(r.pauses for r in readers)}
