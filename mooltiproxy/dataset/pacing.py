"""Sharing one core with the recorder process: when it is behind and waits for the core the proxy holds, the event
loop gives the core away in short, regular slices.

The recorder process runs under ``SCHED_IDLE`` (``worker.idle_priority``): on a core the proxy saturates it gets no
time at all, falls behind, and back-pressure (``ProcessRecorder.behind``) then stops new requests until it has caught
up — one long stretch that only the requests arriving in it pay: FAIR's p99/p50 went from 1.27× to 3.90× (bench/
RESULTS.md). Paid in slices of a few milliseconds every 20, the same work is spread over every request. (Slices of
up to 2 ms every 5 cost more of the saturated proxy's throughput: both processes refill their caches after each
switch.) Where the recorder process has a core of its own it never waits for one, and nothing here sleeps; nor where
the event loop itself leaves the core idle at moments: the recorder process has those, and a slice would only make
the requests arriving in it wait (at half load, slices given there made most of S1's latency tail).

Linux only (``/proc/<pid>/stat`` and ``/proc/<pid>/schedstat``: whether its building thread is runnable, on which
core's queue, and the CPU time it has had); elsewhere the recorder process runs at normal priority and the operating
system shares the core by itself.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import NamedTuple

TICK = 0.02  # seconds between looks while the recorder process is behind: the longest a request waits for a slice
# Exchanges handed over and not yet recorded before the proxy looks at all: two frames of a saturated proxy (a frame
# is what 25 ms brought, about 130), four at half load, where the recorder process keeps up in the idle moments. (At
# 64 a frame of half load was enough, and a look that fell just after one gave a slice it did not need.)
BEHIND = 256
STARVED = 0.5  # runnable, yet it ran less than this share of the last tick: it waits for a core, not on a disk
PER_EXCHANGE = 5e-6  # seconds of slice per exchange behind: a quarter of one's cost, so it is still busy as a slice ends
MAX_SLICE = 0.008  # at most 40 % of the core; beyond that back-pressure takes over
BUSY = 0.85  # the event loop's own share of a tick (what it did not give away) from which it holds the core: saturated,
# it measured 0.92-0.95 of what it kept; at half load, 0.6-0.65


class CpuState(NamedTuple):
    runnable: bool  # running or waiting for a core (not sleeping, not waiting on a disk)
    ran: int  # nanoseconds of CPU it has had
    cpu: int  # the core it runs on, or whose queue it waits in


def _stat(where: str) -> list[bytes]:
    """The fields of ``<where>/stat`` after the command's name (which may hold spaces): its 3rd field is first."""
    with open(f"{where}/stat", "rb") as f:
        return f.read().rpartition(b")")[2].split()


def cpu_state(pid: int) -> CpuState | None:
    """The main thread of ``pid`` (in the recorder process, the one that builds records); None where Linux does not
    say (or the process is gone).

    Runnable and not running is the only sign of waiting for a core that is up to date: the run-queue delay in
    ``schedstat`` is added only once a waiting thread gets the core."""
    try:
        fields = _stat(f"/proc/{pid}")
        with open(f"/proc/{pid}/schedstat", "rb") as f:
            ran = int(f.read().split(None, 1)[0])
        return CpuState(fields[0] == b"R", ran, int(fields[36]))  # state is stat's 3rd field, the core its 39th
    except (OSError, ValueError, IndexError):
        return None


def here() -> int | None:
    """The core the calling thread runs on; None where Linux does not say."""
    try:
        return int(_stat("/proc/thread-self")[36])
    except (OSError, ValueError, IndexError):
        return None


class Pacer:
    """Looks every ``TICK`` while ``behind()`` exchanges exceed ``BEHIND``; when the recorder process waits in this
    core's queue and ran less than half of the last tick while the event loop kept the core busy, sleeps on the event
    loop for a slice that grows with how far behind it is."""

    def __init__(self, behind: Callable[[], int], probe: Callable[[], CpuState | None], *,
                 sleep: Callable[[float], None] = time.sleep, core: Callable[[], int | None] = here,
                 own: Callable[[], int] = time.thread_time_ns) -> None:
        """``probe``: the recorder process's ``cpu_state`` (None while there is none to look at); ``core``: this one;
        ``own``: the CPU nanoseconds the event loop's thread has had."""
        self._behind = behind
        self._probe = probe
        self._sleep = sleep
        self._core = core
        self._own = own
        self._loop: asyncio.AbstractEventLoop | None = None
        self._armed = False
        self._able = core() is not None  # whether this platform says
        self._last = (0, 0, 0)  # (monotonic ns, its CPU ns, the event loop's CPU ns) at the last look
        self.slices = 0  # given, and their seconds: for tests and /metrics
        self.given = 0.0

    def poke(self, loop: asyncio.AbstractEventLoop) -> None:
        """Called as exchanges are handed over: start looking if the recorder process is behind."""
        if self._armed or not self._able or self._behind() <= BEHIND:
            return
        state = self._probe()
        if state is None:
            return
        self._loop, self._armed, self._last = loop, True, (time.monotonic_ns(), state.ran, self._own())
        loop.call_later(TICK, self._tick)

    def _tick(self) -> None:
        behind = self._behind()
        state = self._probe() if behind > BEHIND else None
        if state is None:
            self._armed = False
            return
        now, ran, own = time.monotonic_ns(), state.ran, self._own()
        then, ran_then, own_then = self._last
        # Waiting in another core's queue, the core this one gives away would not reach it; and while the event loop
        # rests at moments, the recorder process runs in them (its offers of the core, ``worker.GiveWay``, make it look
        # starved meanwhile: runnable, behind the requests).
        if (state.runnable and ran - ran_then < STARVED * (now - then) and state.cpu == self._core()
                and own - own_then >= BUSY * (now - then)):
            give = min(MAX_SLICE, behind * PER_EXCHANGE)
            # Blocking on purpose: the core is what the recorder process needs, and an await would hand it to the next
            # request instead. One sleep, not steps that look whether it is done: each look takes the core back, and
            # both processes refill their caches after every switch (bench/RESULTS.md: steps cost throughput).
            self._sleep(give)
            self.slices += 1
            self.given += give
            now, ran, own = time.monotonic_ns(), (self._probe() or state).ran, self._own()
        self._last = (now, ran, own)
        assert self._loop is not None
        self._loop.call_later(TICK, self._tick)
