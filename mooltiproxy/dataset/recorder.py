"""Recording every exchange: a bounded queue, records built in small slices on an event loop, one thread for
the disk.

This ``Recorder`` runs in two places: in the recorder process (``process.py``, ``dataset.recorder: process``, the
default), fed what the proxy sends it and building records as they come (``take``), except big answers' records,
which wait aside (``aside.py``) until nothing else is to be done (``build_aside``); or in the proxy itself
(``dataset.recorder: loop``), where it works as follows.

The pipeline hands over a ``Capture`` (references, no copies) and moves on. Every ``LINGER`` seconds
the event loop turns what has gathered into records — linked to the earlier exchange each continues,
redacted per ``dataset.redact``, encoded — a few at a time between requests, and hands the encoded
batches to the writer thread, which only writes (and syncs), holding nothing the event loop needs.
Building records on another thread instead made it and the event loop fight over the interpreter
lock: recording then cost 21–31 % of the proxy's requests per second (bench/RESULTS.md, "History").

A batch the sink cannot take (a full disk, a database that went away) is held and tried again, with a
growing pause, in order; what is held is bounded by ``dataset.queue`` records. Beyond that, and at
shutdown, held batches go to a local JSONL file when the sink has one (``spill_path``), else they are
lost. Every spill and loss is counted and logged loudly, never silent; the request has long succeeded.

Records are linked into conversations as they are built (``linking.Linker``).

A big answer (``tape.Spooled``: its bytes waited in a temporary file) is built alone in its slice: its record
takes tens of milliseconds (21 ms for 10 MB, ``bench.micro --big``), and eight of them in one turn held every
waiting request for a quarter of a second (bench/RESULTS.md, S7). Building them on a thread of their own instead,
with the event loop building nothing else meanwhile to keep records linked in order, let the queue fill behind a
run of big records under load, and records were lost; so they stay on the loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import datetime
from typing import Any, Protocol

import orjson

from .aside import Aside, Marks
from .linking import Linker
from .records import Capture, asked, build_with_keys, fit, messages_sent, redact, scope_of, tail_lookup
from .sinks import Sink, fence
from .tape import PendingStream, Spooled
from .wire import AlreadyRead

log = logging.getLogger("mooltiproxy.dataset")

# Seconds a capture waits to be built with the ones that come after it. An exchange is in the file within about
# this plus a slice's work of ending (under 50 ms at rest); a kill -9 loses at most what arrived in that time.
LINGER = 0.025
SYNC_EVERY = 1.0  # seconds between fsyncs under fsync: interval, traffic or not


def new_session() -> str:
    return datetime.now().strftime("%Y%m%d-%H%M%S-") + os.urandom(2).hex()



def settle(capture: Capture) -> None:
    """A streamed answer put back together, and whether the stream was cut short (the rest of a capture is data)."""
    if isinstance(capture.answer, PendingStream):
        pending = capture.answer
        capture.answer, why_cut = pending.resolve()
        capture.cut_short, capture.cut_reason = why_cut is not None, why_cut
        capture.truncated = pending.truncated


class Complaints:
    """Log lines of each kind at most once a second: loud when records are lost or held, but not a line per request
    under a flood. Both recorders' (and the recorder process's) way of saying so."""

    def __init__(self) -> None:
        self._last: dict[str, float] = {}

    def __call__(self, kind: str, message: str, level: int = logging.ERROR) -> None:
        now = time.monotonic()
        if now - self._last.get(kind, -1.0e9) >= 1.0:
            self._last[kind] = now
            log.log(level, "%s", message)


class Recording(Protocol):
    """What the proxy records through: this module's ``Recorder`` (records built on the event loop) or
    ``process.ProcessRecorder`` (built in a process of their own), side by side, chosen by ``dataset.recorder``."""

    sink: Sink
    behind: bool  # new exchanges should wait for ``caught_up`` before they start

    def submit(self, capture: Capture) -> None: ...
    async def caught_up(self) -> None: ...
    def start(self) -> None: ...
    def stop(self, timeout: float = 30.0) -> None: ...
    @property
    def written(self) -> int: ...
    @property
    def lost(self) -> int: ...
    @property
    def spilled(self) -> int: ...
    @property
    def altered(self) -> int: ...
    @property
    def held(self) -> int: ...


_STOP = object()
# Records built per turn of the event loop: each turn delays the requests waiting behind it. At 32 (about
# 0.4 ms a turn) S1's p99 at half capacity was 3.7–4.6 ms over direct; at 8, 1.9–2.4 ms (bench/RESULTS.md).
SLICE = 8
# ... unless captures arrive faster: a slice then builds this fraction of what waits, so the recorder keeps up
# with any load. With 8 a turn at most, a saturated proxy (60 requests and more a turn) fell behind without end
# and lost records once dataset.queue was full (bench/RESULTS.md, S2).
CATCH_UP = 8
# Records encoded but not yet handed to the writer thread: handed over together once the queue is built or this
# many have gathered. A hand-over per slice woke the writer (and had it take the interpreter lock from the event
# loop) up to several hundred times a second under load.
HAND_OVER_AT = 128
RETRY_FIRST, RETRY_MAX = 0.5, 30.0  # seconds between attempts at a sink that failed, doubling
# How many exchanges may wait aside in a recorder process (``take``), of them big answers: past either, the oldest are
# built before more are taken. A big answer waits as the temporary file the proxy spooled it to (one descriptor).
ASIDE_BIGS, ASIDE_ALL = 256, 4096
# Hand-overs the writer may have yet to take when a big answer's record is built: each holds tens of megabytes until
# written, and built faster than the writer wrote them they piled up (368 MB in S7's recorder process on a core of
# its own; 10 MB with this bound).
WRITER_AHEAD = 2


def _nothing() -> None:
    pass


class Recorder:
    def __init__(
        self,
        sink: Sink,
        session: str,
        *,
        redact: list[str] | tuple[str, ...] = (),
        fsync: str = "interval",
        queue_size: int = 10_000,
        sync_every: float = SYNC_EVERY,
    ) -> None:
        self.sink = sink
        self.session = session
        self.patterns = [re.compile(p) for p in redact]
        self.fsync = fsync
        self.sync_every = sync_every
        self.queue_size = queue_size
        self._pending: deque[Capture] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._scheduled = False
        self._outbox: queue.SimpleQueue[Any] = queue.SimpleQueue()  # lists of encoded batches for the writer thread
        self._took = threading.Condition()  # the writer took a hand-over from the outbox
        self._ready: list[tuple[int, Any]] = []  # encoded batches not handed over yet (HAND_OVER_AT)
        self._thread: threading.Thread | None = None
        self.linker = Linker()
        self.built = 0  # records encoded for the writer, and records lost while building them (each settled as it is)
        self.on_built: Callable[[int, int], object] | None = None  # (built so far, exchanges they settle): the recorder process's reports
        # Called between two pieces of work: after each exchange built, each batch encoded, before each write. The
        # recorder process offers its core there (``worker.GiveWay``).
        self.between: Callable[[], object] = _nothing
        self.aside = Aside()  # exchanges waiting to be built (``take``)
        self.behind = False  # never: built on the event loop, records take their turn with the requests
        self.on_written: Callable[[], object] | None = None  # called by the writer thread after each round of writing
        self.written = 0
        self.lost = 0
        self.spilled = 0
        self.altered = 0  # records written with a part fitted (meta.altered says what)
        self.held = 0  # records the writer holds for a sink that failed
        self._failure = ""  # the sink's last error, for the messages
        self._unsynced = False  # written since the last fsync (the writer thread's): synced within SYNC_EVERY even when all goes quiet
        self.syncs = 0
        self._complain = Complaints()

    # --------------------------------------------------------------------- the request side

    def submit(self, capture: Capture) -> None:
        """Hand over an exchange; never blocks, never raises."""
        if len(self._pending) >= self.queue_size:
            self._lose(1, "queue", "the recording queue is full (the disk is slower than the traffic)")
            return
        self._pending.append(capture)
        if not self._scheduled and self._loop is not None:
            self._scheduled = True
            self._loop.call_later(LINGER, self._build)

    # --------------------------------------------------------------------- building (event loop)

    def start(self) -> None:
        """Open the sink and start the writer; call from the event loop that will submit (or, in a recorder process,
        from the thread that will ``take``)."""
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop: records are built when they are taken
            self._loop = None
        self.sink.open()
        for record in self.sink.session_records():
            self.linker.known(record)
        self._thread = threading.Thread(target=self._write_loop, name="mooltiproxy-recorder", daemon=True)
        self._thread.start()
        if self._pending and self._loop is not None:
            self._scheduled = True
            self._loop.call_soon(self._build)

    def _build(self) -> None:
        """One slice: build and encode a few records, then give the event loop back to requests. A big answer is built
        in a slice of its own (see the module's docstring)."""
        records: list[dict[str, Any]] = []
        exchanges = 0
        for _ in range(min(len(self._pending), max(SLICE, len(self._pending) // CATCH_UP))):
            big = isinstance(self._pending[0].answer, Spooled)
            if big and exchanges:
                break  # a big answer gets a slice of its own: the next one
            records.extend(self._records_of(self._pending.popleft()))
            exchanges += 1
            if big:
                break
        self._batch(records, exchanges)
        more = bool(self._pending)
        if not more or sum(count for count, _ in self._ready) >= HAND_OVER_AT:
            self._hand_over()
        if more and self._loop is not None:
            self._loop.call_soon(self._build)
        else:  # done, or ``take`` builds the rest
            self._scheduled = False

    async def caught_up(self) -> None:
        return None

    def take(self, captures: list[Capture]) -> None:
        """Build these exchanges' records now, on this thread, and hand them to the writer (a recorder process's way in:
        it has no requests to give its time back to). A big answer waits aside for ``build_aside``, with whatever must
        be linked after it (``aside.py``); the rest are recorded at once."""
        records: list[dict[str, Any]] = []
        exchanges = 0
        aside = self.aside
        for capture in captures:
            if isinstance(capture.answer, Spooled):
                try:
                    self._read_request(capture)
                    marks = self._marks(capture)
                except Exception:  # a request the recorder cannot read: recorded now, as well as it can be
                    records.extend(self._records_of(capture))
                    exchanges += 1
                    continue
                aside.add(capture, None, marks)
                continue
            built = self._unlinked_or_none(capture)  # None: it cannot be read as it came; its fitted copy is recorded now
            if aside and built is not None:
                marks = self._marks(capture, built)
                if aside.must_wait(marks):
                    aside.add(capture, built, marks)
                    continue
            records.extend(self._records_of(capture, built))
            exchanges += 1
            self.between()
        self._batch(records, exchanges)
        while aside.bigs > ASIDE_BIGS or len(aside) > ASIDE_ALL:
            self.build_aside()
        self._hand_over()

    def writer_ready(self) -> bool:
        """Whether the writer has taken what it was handed, all but ``WRITER_AHEAD``: a big record may be built."""
        return self._outbox.qsize() <= WRITER_AHEAD

    def build_aside(self) -> None:
        """The oldest exchange waiting aside built, linked and handed to the writer, with those behind it up to the next
        big answer (each waited only for what came before it). A big answer's waits for the writer (``writer_ready``)."""
        records: list[dict[str, Any]] = []
        exchanges = 0
        aside = self.aside
        if aside.next_is_big() and self._thread is not None:
            with self._took:
                self._took.wait_for(self.writer_ready, timeout=5.0)
        while aside and not (exchanges and aside.next_is_big()):
            waiting = aside.popleft()
            records.extend(self._records_of(waiting.capture, waiting.built))
            exchanges += 1
            self.between()
        self._batch(records, exchanges)
        self._hand_over()

    def _marks(self, capture: Capture, built: tuple[list[dict[str, Any]], list[str]] | None = None) -> Marks:
        """How the linker will find this exchange and look for earlier ones: from its records once built (``_unlinked``),
        else from its request (a big answer: its own keys are not known before its answer is read)."""
        if built is None:
            request = asked(capture)
            user, conversation, turn, continues, keys = request.user, request.conversation, request.turn, request.continues, ()
        else:
            records, continues = built
            meta = records[0]["meta"]
            user, conversation, turn = meta["user"], meta["conversation"], meta["turn"]
            keys = tuple(k for r in records for k in (r["meta"]["key"], r["meta"]["tail"]) if k)
        lookups = tuple(continues)
        if lookups:
            tail = tail_lookup(messages_sent(capture.request))
            lookups += (tail,) if tail is not None else ()
        return Marks(scope_of(capture.key, user, conversation), turn, conversation, lookups, keys)

    def _batch(self, records: list[dict[str, Any]], exchanges: int) -> None:
        """Encode a batch of records for the writer, and count what it settles: its records, and any lost on the way."""
        if records:
            count, payload = self._encode(records)
            if count:
                self._ready.append((count, payload))
                self.built += count
        if exchanges and self.on_built is not None:
            self.on_built(self.built, exchanges)
        self.between()

    def _hand_over(self) -> None:
        """Give the writer what is encoded, in one piece."""
        if self._ready:
            self._outbox.put(self._ready)
            self._ready = []

    def stop(self, timeout: float = 30.0) -> None:
        """Build and write what is queued, then close the sink."""
        if self._thread is None:
            return
        while self._pending:
            self._build()
        while self.aside:
            self.build_aside()
        self._hand_over()
        self._outbox.put(_STOP)
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("the recorder did not finish writing within %g s; records may be lost", timeout)
        self._thread = None
        self.sink.close()

    # --------------------------------------------------------------------- writing (its own thread)

    def _write_loop(self) -> None:
        last_sync = time.monotonic()
        held: deque[tuple[int, Any]] = deque()  # batches not written yet, oldest first
        next_try, pause = 0.0, RETRY_FIRST
        while True:
            wait = None
            if held:
                wait = max(0.0, next_try - time.monotonic())
            if self._unsynced and self.fsync == "interval":
                due = max(0.0, last_sync + self.sync_every - time.monotonic())
                wait = due if wait is None else min(wait, due)
            try:
                item = self._outbox.get(timeout=wait)
            except queue.Empty:
                item = None
            with self._took:
                self._took.notify()
            if item is _STOP:
                if held:
                    self._write_held(held)
                    while held:
                        self._spill(*held.popleft(), f"the proxy stopped while {self.sink.where} still failed ({self._failure})")
                    self.held = 0
                if self.fsync != "never":
                    self._sync()
                return
            if item is not None:
                held.extend(item)
            if not held:
                pass  # woken to sync, below
            elif time.monotonic() < next_try:
                pass  # the sink failed a moment ago: wait before the next attempt
            else:
                self.between()
                if self._write_held(held):
                    if pause > RETRY_FIRST:
                        log.warning("the dataset is written to %s again; every held record has caught up", self.sink.where)
                    pause = RETRY_FIRST
                else:
                    next_try = time.monotonic() + pause
                    pause = min(pause * 2, RETRY_MAX)
            held_records = sum(count for count, _ in held)
            while held_records > self.queue_size:  # bounded: the oldest go elsewhere
                count, payload = held.popleft()
                held_records -= count
                self.held = held_records
                self._spill(count, payload, f"more than dataset.queue ({self.queue_size}) records waited for {self.sink.where} "
                                            f"({self._failure})")
            self.held = held_records
            if self.on_written is not None:
                self.on_written()
            now = time.monotonic()
            if self._unsynced and (self.fsync == "always" or (self.fsync == "interval" and now - last_sync >= self.sync_every)):
                self._sync()
                last_sync, self._unsynced = now, False

    def _write_held(self, held: deque[tuple[int, Any]]) -> bool:
        """Write held batches in order; False at the first that fails (it stays held)."""
        self._unsynced = self._unsynced or bool(held)
        while held:
            count, payload = held[0]
            try:
                self.sink.write(payload)
            except Exception as exc:
                self._failure = str(exc) or type(exc).__name__
                self._complain("held", f"the dataset could not be written to {self.sink.where} ({exc}); "
                                       f"{sum(c for c, _ in held)} record(s) held, trying again")
                return False
            held.popleft()
            self.written += count
        return True

    def _spill(self, count: int, payload: Any, why: str) -> None:
        path = self.sink.spill_path
        if path is None:
            self._lose(count, "write", why)
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                fence(fd, path)
                data = self.sink.lines(payload)
                if os.write(fd, data) != len(data):
                    raise OSError(f"{path} took only part of the records")
            finally:
                os.close(fd)
        except Exception as exc:
            self._lose(count, "write", f"{why}, and {path} could not take them either ({exc})")
            return
        self.spilled += count
        self._complain("spill", f"{count} record(s) written to {path} instead of {self.sink.where}: {why}. "
                                f"{self.spilled} spilled since start; the dataset commands read that file too")

    def _records_of(self, capture: Capture, built: tuple[list[dict[str, Any]], list[str]] | None = None) -> list[dict[str, Any]]:
        """The exchange's records, linked (``built``: made already by ``_unlinked``). One the recorder cannot build as it
        came (JSON nested deeper than a record can hold, say) is built again from a fitted copy, its changes noted in
        ``meta.altered``; one exchange's problem never costs another's record."""
        try:
            return self._linked(capture, *(built or self._unlinked(capture)))
        except Exception:
            log.warning("exchange %s could not be recorded as it came; recording a fitted copy", capture.request_id, exc_info=True)
        notes: list[str] = []
        capture.request = fit(capture.request, "request", notes)
        capture.answer = fit(capture.answer, "answer", notes)
        try:
            records = self._linked(capture, *self._unlinked(capture))
        except Exception:  # a capture the recorder cannot read at all must not stop the ones after it
            log.exception("could not turn exchange %s into a record", capture.request_id)
            self._lose_building(1, "record", "an exchange could not be turned into a record")
            return []
        for record in records:
            record["meta"]["altered"] = notes
        self.altered += len(records)
        return records

    def _unlinked_or_none(self, capture: Capture) -> tuple[list[dict[str, Any]], list[str]] | None:
        """``_unlinked``, or None when it fails (``_records_of`` then tries a fitted copy)."""
        try:
            return self._unlinked(capture)
        except Exception:
            return None

    def _encode(self, records: list[dict[str, Any]]) -> tuple[int, Any]:
        """The batch encoded for the sink, and how many records it holds. Encoded as one (the common case), else one
        by one: a record that cannot be encoded is fitted (its changes in ``meta.altered``), and only one that
        cannot be encoded even then is lost."""
        try:
            return len(records), self.sink.encode(records)
        except Exception:
            pass
        good = []
        for record in records:
            try:
                self.sink.encode([record])
            except Exception as exc:
                notes: list[str] = []
                fitted = fit(record, "", notes)
                fitted["meta"]["altered"] = notes
                try:
                    self.sink.encode([fitted])
                except Exception:
                    self._lose_building(1, "write", f"a record could not be encoded ({exc})")
                    continue
                log.warning("record %s could not be written as it was (%s); written with: %s", record.get("id"), exc, "; ".join(notes))
                self.altered += 1
                record = fitted
            good.append(record)
        return len(good), self.sink.encode(good) if good else None

    def _read_request(self, capture: Capture) -> None:
        """A stream's answer put back together, and a request relayed in another API's shape turned into the OpenAI one
        it is recorded in (once: its dialect then reads only the answer)."""
        settle(capture)
        dialect = capture.dialect
        if dialect is not None and not isinstance(dialect, _RequestRead):
            capture.request = dialect.request(capture.request)
            capture.dialect = _RequestRead(dialect)

    def _unlinked(self, capture: Capture) -> tuple[list[dict[str, Any]], list[str]]:
        """The exchange's records, not linked yet, and the keys of the earlier records it may continue."""
        self._read_request(capture)
        if isinstance(capture.answer, Spooled):
            capture.answer = capture.answer.read()
        if isinstance(capture.answer, (bytes, bytearray)):
            try:
                capture.answer = orjson.loads(capture.answer)
            except orjson.JSONDecodeError:
                capture.answer = None
        if capture.dialect is not None and capture.answer is not None:  # relayed in another API's shape: recorded in the OpenAI one
            capture.answer = capture.dialect.answer(capture.answer)
            capture.dialect = AlreadyRead(capture.dialect.kind)
        return build_with_keys(capture, self.session)

    def _linked(self, capture: Capture, records: list[dict[str, Any]], continues: list[str]) -> list[dict[str, Any]]:
        self.linker.link(capture, records, continues)
        return [redact(r, self.patterns) for r in records]

    def _sync(self) -> None:
        self.syncs += 1
        try:
            self.sink.sync()
        except OSError as exc:
            log.error("syncing the dataset to disk failed: %s", exc)

    def _lose_building(self, n: int, kind: str, why: str) -> None:
        """Records lost before they reached the writer: settled at once (``built``)."""
        self.built += n
        self._lose(n, kind, why)

    def _lose(self, n: int, kind: str, why: str) -> None:
        self.lost += n
        self._complain(kind, f"LOST {n} exchange record(s): {why}. {self.lost} lost since start.")


class _RequestRead:
    """The dialect of an exchange whose request is already in the OpenAI shape: what is left is reading its answer,
    and the kind it is recorded as (once the answer is read too: ``wire.AlreadyRead``)."""

    __slots__ = ("dialect", "kind")

    def __init__(self, dialect: Any) -> None:
        self.dialect, self.kind = dialect, dialect.kind

    @staticmethod
    def request(request: Any) -> Any:
        return request

    def answer(self, answer: Any) -> Any:
        return self.dialect.answer(answer)
