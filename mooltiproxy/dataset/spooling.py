"""Big answers written to their temporary files off the event loop: the loop hands each piece to a thread of its own,
which writes at a low priority, and a relay that gets ahead of it waits.

A non-streamed answer over ``tape.SPOOL_AT`` waits for its record in an unlinked temporary file (``tape.Spooled``).
Written on the event loop, the copies into the page cache were the fast clients' tail in S7: a hundred slow readers'
answers pass the proxy fastest at first (the kernel's socket buffers take megabytes of each at once), every loop turn
then carried their writes, and the fast clients' slow requests came in those first seconds. Without the writes the fast
clients' p99 beside the readers was within a millisecond of their p99 alone; with them on the loop, 4 to 17 ms above it,
and written here, 2.7 and 3.3 ms (bench/RESULTS.md, S7: the copying is still the same core's work). Here the thread
writes in the moments the proxy leaves (``NICE``: where the loop keeps the core busy, the scheduler's weights give it about a tenth), and
each file may be at most ``AHEAD`` bytes behind what was relayed: past that, that answer's relay waits for its writes,
so memory stays bounded and the big answers, not the requests beside them, go at the pace of the disk.

Whoever needs a file whole (the hand-over to the recorder process, or a record built in the proxy) calls
``SpoolFile.finish``, which writes what is left itself rather than wait for the thread's turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import sys
import tempfile
import threading
from collections import deque
from typing import Any

AHEAD = 256 * 1024  # bytes of one answer relayed and not yet written before its relay waits (a piece: upstream.h1)
NICE = 10  # the writing thread's niceness (Linux sets it per thread): its weight is a tenth of the event loop's


class SpoolFile:
    """One answer's temporary file, written through a ``Spooler``. ``write``, ``behind`` and ``drained`` are the event
    loop's; ``finish`` and ``close`` may be called from any thread."""

    __slots__ = ("_drained", "_lock", "_loop", "_pieces", "_queued", "_spooler", "_writing", "error", "file", "pending")

    def __init__(self, spooler: Spooler, loop: asyncio.AbstractEventLoop | None) -> None:
        self.file: Any = tempfile.TemporaryFile(prefix="mooltiproxy-answer-")  # noqa: SIM115  (closed by Spooled.read)
        self.pending = 0  # bytes handed over and not yet written
        self.error: OSError | None = None  # a write failed: the record cannot be built, and finish() says so
        self._pieces: deque[bytes] = deque()
        self._lock = threading.Lock()  # the pieces and the counts: held for moments only, never across a write
        self._writing = threading.Lock()  # held across writes: the pieces reach the file in order, whoever writes them
        self._queued = False  # in the thread's queue, or being written: more pieces need no second wake-up
        self._spooler = spooler
        self._loop = loop
        self._drained: asyncio.Event | None = None

    def write(self, piece: bytes) -> None:
        with self._lock:
            self._pieces.append(piece)
            self.pending += len(piece)
            wake = not self._queued
            self._queued = True
        if wake:
            self._spooler.wake(self)

    def writelines(self, pieces: list[bytes]) -> None:
        for piece in pieces:
            self.write(piece)

    @property
    def behind(self) -> bool:
        return self.pending > AHEAD

    async def drained(self) -> None:
        """Wait until the thread has caught up with this answer to half of ``AHEAD``."""
        while self.pending > AHEAD // 2:
            if self._drained is None:
                self._drained = asyncio.Event()
            self._drained.clear()
            if self.pending <= AHEAD // 2:  # written between the look and the clear
                return
            await self._drained.wait()

    def flush(self) -> None:
        """Write what waits, until nothing does (the thread's turn, or ``finish``'s)."""
        with self._writing:
            while True:
                with self._lock:
                    pieces = list(self._pieces)
                    self._pieces.clear()
                    if not pieces:
                        self._queued = False
                        break
                try:
                    if self.error is None:
                        _write_all(self.file.fileno(), pieces)
                except (OSError, ValueError) as exc:  # ValueError: closed meanwhile (left out of the record)
                    self.error = exc if isinstance(exc, OSError) else OSError(str(exc))
                finally:
                    with self._lock:
                        self.pending -= sum(len(p) for p in pieces)
        drained, loop = self._drained, self._loop
        if drained is not None and loop is not None and self.pending <= AHEAD // 2:
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits any more
                loop.call_soon_threadsafe(drained.set)

    def finish(self) -> Any:
        """Everything handed over written (here, if the thread has not got to it): the file, whole. Raises the
        ``OSError`` a write met."""
        self.flush()
        if self.error is not None:
            raise OSError(f"a big answer could not be written to its temporary file: {self.error}")
        return self.file

    def close(self) -> None:
        """Left out of the record (past ``dataset.max_text``): what waits is dropped with the file."""
        with self._lock:
            self._pieces.clear()
            self.pending = 0
        with self._writing:
            self.file.close()


class Spooler:
    """The thread that writes spooled answers, started when the first one needs it."""

    def __init__(self, nice: int = NICE, *, background: bool = True) -> None:
        """``background=False``: no thread, each piece written as it is handed over (a tape built without a proxy's
        spooler: tests, tools)."""
        self.nice = nice
        self.background = background
        self._waiting: queue.SimpleQueue[SpoolFile | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def open(self) -> SpoolFile:
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        return SpoolFile(self, loop)

    def wake(self, spool: SpoolFile) -> None:
        if not self.background:
            spool.flush()
            return
        if self._thread is None:
            with self._start_lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="mooltiproxy-spooler", daemon=True)
                    self._thread.start()
        self._waiting.put(spool)

    def stop(self) -> None:
        """End the thread (what it had not written, ``finish`` writes)."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._waiting.put(None)
            thread.join(5.0)

    def _run(self) -> None:
        if sys.platform.startswith("linux"):  # a thread's own niceness: Linux's; elsewhere it would be the process's
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self.nice)
        while True:
            spool = self._waiting.get()
            if spool is None:
                return
            spool.flush()


def _write_all(fd: int, pieces: list[bytes]) -> None:
    """``pieces`` written to ``fd`` in as few system calls as it takes."""
    views = [memoryview(p) for p in pieces if p]
    while views:
        done = os.writev(fd, views[:1024])  # IOV_MAX
        while done and views:
            if done >= len(views[0]):
                done -= len(views.pop(0))
            else:
                views[0] = views[0][done:]
                done = 0
