"""Recording in a process of its own (``dataset.recorder: process``, the default): the proxy's event loop only
pickles what exchanges left, and the recorder process builds, links and writes the records.

Building a record is Python work — parsing the answer, fingerprinting the conversation, linking it, encoding it —
and one interpreter runs one thread at a time: built on the proxy's event loop it took 17 % of the proxy's
requests per second, and a 10 MB answer's record held every waiting request for 34 ms (bench/RESULTS.md, S2 and
S7). Here the event loop spends a few microseconds per exchange; the recorder process is an ordinary
``Recorder`` (the same linking, redaction, holding and spilling), fed through a pipe, with big answers' files
handed over beside it on a Unix socket (``wire``).

The way is bounded as the in-process recorder's is: exchanges not yet sent count against ``dataset.queue``, and a
full queue loses what comes next, counted and logged. The recorder process reports its counts back after each
write. If it dies, what it had not written is counted lost and logged, and a new one is started for what comes
next. It runs in a process group of its own (a terminal's Ctrl-C reaches only the proxy's) and ignores SIGINT,
SIGTERM and SIGHUP (a service manager may signal every process of the service): it ends when the proxy closes the
pipe, after writing everything sent to it — so a proxy killed with SIGKILL still has every exchange it handed
over written.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import queue
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from typing import Any

import orjson

from ..backends.spec import Dialect
from ..config.model import DatasetConfig
from ..ops.logs import JSONFormatter
from .pacing import CpuState, Pacer, cpu_state
from .recorder import LINGER, Complaints, settle
from .records import Capture
from .sinks import Sink
from .tape import Spooled
from .wire import AlreadyRead, encode, installed_dialects, send

log = logging.getLogger("mooltiproxy.dataset")

PIPE_SIZE = 1024 * 1024  # the pipe's buffer, where Linux lets it grow (F_SETPIPE_SZ): fewer wake-ups of either side
RESTART_AFTER = 1.0  # seconds before a recorder process that died is started again
_STOP, _GONE = object(), object()


class RecorderStartError(RuntimeError):
    """The recorder process ended before it could record: its own error is in the log."""


class ProcessRecorder:
    """The proxy's side: the same ``submit``, ``start``, ``stop`` and counts as ``recorder.Recorder``."""

    def __init__(self, sink: Sink, session: str, spec: dict[str, Any], *, queue_size: int = 10_000) -> None:
        self.sink = sink  # not opened here: for its name in messages (the recorder process opens its own)
        self.session = session
        self.spec = spec  # what the recorder process builds its Recorder from (the dataset section, the logging)
        self.queue_size = queue_size
        self._pending: deque[Capture] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._scheduled = False
        self._outbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._queued = 0  # exchanges in the outbox, not yet in the pipe
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._files: socket.socket | None = None  # the proxy's end of the socket big answers' files go through
        self._dialects = installed_dialects()
        self._sent_now = 0  # exchanges the running recorder process has been sent
        self._counter: threading.Thread | None = None  # reads its reports
        self._closing = False  # the proxy is stopping: the recorder process ends because it was asked to
        self._counts: dict[str, int] = {}  # the running recorder process's latest report
        self._before: dict[str, int] = {}  # earlier recorder processes' final counts, summed
        self._lost_here = 0
        self._complain = Complaints()
        self.behind = False  # too many exchanges wait to be sent: new requests wait (back-pressure)
        self._caught_up = asyncio.Event()
        self._caught_up.set()
        self._resuming = False
        self.pacer = Pacer(self._unrecorded, self._recorder_cpu)

    # --------------------------------------------------------------------- counts (the recorder process's, summed)

    def _count(self, name: str) -> int:
        return self._before.get(name, 0) + self._counts.get(name, 0)

    @property
    def written(self) -> int:
        return self._count("written")

    @property
    def lost(self) -> int:
        return self._lost_here + self._count("lost")

    @property
    def spilled(self) -> int:
        return self._count("spilled")

    @property
    def altered(self) -> int:
        return self._count("altered")

    @property
    def held(self) -> int:
        return self._counts.get("held", 0)

    # --------------------------------------------------------------------- the request side (event loop)

    def submit(self, capture: Capture) -> None:
        """Hand over an exchange; never blocks, never raises."""
        waiting = len(self._pending) + self._queued
        if waiting >= self.queue_size:
            self._lose(1, "the recording queue is full (the recorder process is slower than the traffic)")
            return
        self._pending.append(capture)
        if waiting + 1 >= self.queue_size // 2 and not self.behind:
            self._fall_behind(waiting + 1)
        if not self._scheduled and self._loop is not None:
            self._scheduled = True
            self._loop.call_later(LINGER, self._send_and_pace)

    # --------------------------------------------------------------------- back-pressure

    def _fall_behind(self, waiting: int) -> None:
        """Half of ``dataset.queue`` waits: new exchanges wait to start until the recorder process has caught up (to a
        quarter), so the proxy runs at the pace of its recording instead of losing records. (The in-process recorder
        gets this by itself: it builds on the same core the requests need.)"""
        self.behind = True
        self._caught_up.clear()
        self._complain("behind", f"the recorder process is {waiting} exchanges behind: new requests wait for it to catch up",
                       logging.WARNING)

    def _check_caught_up(self) -> None:
        """The writer thread sent a frame: on the event loop, see whether waiting requests may go on."""
        self._resuming = False
        if self.behind and len(self._pending) + self._queued <= self.queue_size // 4:
            self.behind = False
            self._caught_up.set()

    async def caught_up(self) -> None:
        """Wait while the recorder process is behind (``behind``)."""
        await self._caught_up.wait()

    def _send(self) -> None:
        """What gathered, pickled in one frame for the writer thread."""
        self._scheduled = False
        captures = list(self._pending)
        self._pending.clear()
        if captures:
            self._hand(captures)

    def _send_and_pace(self) -> None:
        """The event loop's turn: send what gathered, and share the core if the recorder process waits for it."""
        self._send()
        assert self._loop is not None
        self.pacer.poke(self._loop)

    def _unrecorded(self) -> int:
        """Exchanges handed to the writer thread or the recorder process and not yet recorded, less the big answers (and
        what waits behind them) the recorder process builds when it has time: no reason to give it the proxy's core."""
        counts = self._counts
        return self._queued + self._sent_now - counts.get("done", 0) - counts.get("aside", 0)

    def _recorder_cpu(self) -> CpuState | None:
        proc = self._proc
        return cpu_state(proc.pid) if proc is not None else None

    def _hand(self, captures: list[Capture]) -> None:
        for capture in captures:
            settle(capture)  # a stream's parts are the proxy's objects: put back together here
            dialect = capture.dialect
            if dialect is not None and self._dialects.get(dialect.path) is not dialect:
                _read_here(capture)  # a config's own backend module: the recorder process cannot import it
        try:
            frame, spools = encode(captures)
        except Exception:  # one exchange that cannot be pickled must not cost the others
            for capture in captures:
                try:
                    frame, spools = _encode_deep(capture)
                except Exception as exc:
                    self._lose(1, f"an exchange could not be sent to the recorder process ({type(exc).__name__}: {exc})")
                    continue
                self._queue(1, frame, spools)
            return
        self._queue(len(captures), frame, spools)

    def _queue(self, count: int, frame: bytes, spools: list[Spooled]) -> None:
        with self._lock:
            self._queued += count
        self._outbox.put((count, frame, spools))

    # --------------------------------------------------------------------- life

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._spawn()
        self._thread = threading.Thread(target=self._write_loop, name="mooltiproxy-recorder", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Send what is queued, close the pipe, and wait for the recorder process to write it all."""
        if self._thread is None:
            return
        self._send()
        self._outbox.put(_STOP)
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("the recorder process was not sent every exchange within %g s; records may be lost", timeout)
        self._thread = None

    def _spawn(self) -> None:
        # A process group of its own: a terminal's Ctrl-C signals the proxy's group, and the proxy then closes the pipe.
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        files_fd = theirs.fileno()  # the same number in the recorder process (pass_fds keeps it)
        try:
            proc = subprocess.Popen([sys.executable, "-m", "mooltiproxy.dataset.worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    bufsize=0, close_fds=True, pass_fds=(files_fd,), process_group=0)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        assert proc.stdin is not None and proc.stdout is not None
        with contextlib.suppress(OSError, AttributeError):  # Linux only; elsewhere the pipe keeps its size
            fcntl.fcntl(proc.stdin.fileno(), fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        proc.stdin.write(orjson.dumps({**self.spec, "files_fd": files_fd}) + b"\n")
        # Its first report says the sink is open: a sink that cannot be opened stops the proxy's start, as it does with
        # the in-process recorder, rather than every exchange being lost.
        first = proc.stdout.readline()
        if not first:
            ours.close()
            code = proc.wait()
            raise RecorderStartError(f"the recorder process could not open {self.sink.where} (it ended with code {code}; "
                                     f"its error is in the log above)")
        if self._files is not None:
            self._files.close()  # the socket of a recorder process that died
        self._proc, self._files = proc, ours
        self._counts = orjson.loads(first)
        self._counter = threading.Thread(target=self._read_counts, args=(proc,), name="mooltiproxy-recorder-counts", daemon=True)
        self._counter.start()

    def _read_counts(self, proc: subprocess.Popen[bytes]) -> None:
        """The recorder process's reports: a JSON line of its counts whenever they changed, the last as it ends."""
        assert proc.stdout is not None
        for line in proc.stdout:
            with contextlib.suppress(orjson.JSONDecodeError):
                counts = orjson.loads(line)
                if proc is self._proc:
                    self._counts = counts
        if not self._closing:
            self._outbox.put((_GONE, proc))  # it ended unasked: the writer thread starts another before the next frame

    # --------------------------------------------------------------------- the writer thread

    def _write_loop(self) -> None:
        while True:
            item = self._outbox.get()
            if item is _STOP:
                self._finish()
                return
            if item[0] is _GONE:
                if item[1] is self._proc:
                    self._died(0, None)
                continue
            count, frame, spools = item
            proc, files = self._proc, self._files
            try:
                assert proc is not None and proc.stdin is not None and files is not None
                send(proc.stdin.fileno(), files, frame, spools)
            except (OSError, AssertionError) as exc:
                for spooled in spools:
                    with contextlib.suppress(OSError):
                        spooled.file.close()
                self._died(count, exc)
                continue
            finally:
                with self._lock:
                    self._queued -= count
                if self.behind and not self._resuming and self._loop is not None:
                    self._resuming = True
                    self._loop.call_soon_threadsafe(self._check_caught_up)
            self._sent_now += count

    def _finish(self) -> None:
        self._closing = True
        proc = self._proc
        if proc is None or proc.stdin is None:
            return
        with contextlib.suppress(OSError):
            proc.stdin.close()
        try:
            code = proc.wait(30.0)
        except subprocess.TimeoutExpired:
            log.error("the recorder process did not finish writing within 30 s; records may be lost")
            proc.kill()
            code = proc.wait()
        if self._counter is not None:
            self._counter.join(5.0)  # its last report
        if self._files is not None:
            self._files.close()
        if code != 0 or self._counts.get("done", 0) < self._sent_now:
            self._died(0, None, code)

    def _died(self, count: int, exc: BaseException | None, code: int | None = None) -> None:
        """The recorder process is gone: what it was sent and had not written is lost; a new one takes what comes next."""
        proc = self._proc
        if proc is not None and code is None:
            with contextlib.suppress(OSError):
                proc.kill()
            code = proc.wait()
            if self._counter is not None:
                self._counter.join(5.0)
        counts, self._counts = self._counts, {}
        unrecorded = self._sent_now - counts.get("done", 0) + count
        self._sent_now = 0
        for name in ("written", "lost", "spilled", "altered"):
            self._before[name] = self._before.get(name, 0) + counts.get(name, 0)
        why = f"the recorder process ended with code {code}" + (f" ({exc})" if exc is not None else "")
        if unrecorded > 0:
            self._lose(unrecorded, why + " before writing them")
        elif code:
            log.error("%s", why)
        if threading.current_thread() is self._thread and not self._closing:
            time.sleep(RESTART_AFTER)
            try:
                self._spawn()
                log.warning("a new recorder process records what comes next")
            except (OSError, RecorderStartError) as spawn_error:
                log.error("a new recorder process could not be started (%s); exchanges are lost until one is", spawn_error)

    def _lose(self, n: int, why: str) -> None:
        self._lost_here += n
        self._complain("lost", f"LOST {n} exchange record(s): {why}. {self.lost} lost since start.")


# JSON a client sent is at most 1024 levels deep (orjson's limit); pickling recurses a few frames per level.
DEEP = 4 * 1024 + 200


def _encode_deep(capture: Capture) -> tuple[bytes, list[Spooled]]:
    """One exchange pickled, however deep its JSON nests (a client's deep ``response_format``): the recorder process
    then records it as the in-process recorder does, fitted, with ``meta.altered`` saying how."""
    try:
        return encode([capture])
    except RecursionError:
        pass
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, DEEP))
    try:
        return encode([capture])
    finally:
        sys.setrecursionlimit(limit)


def recorder_spec(dataset: DatasetConfig, session: str) -> dict[str, Any]:
    """What the recorder process needs to know: the dataset section, and how the proxy logs (its lines look the same)."""
    root = logging.getLogger()
    json_logs = any(isinstance(h.formatter, JSONFormatter) for h in root.handlers)
    return {"sink": dataset.sink, "dir": str(dataset.dir), "session": session, "dsn": dataset.dsn, "redact": list(dataset.redact),
            "fsync": dataset.fsync, "queue": dataset.queue, "log_level": logging.getLevelName(root.getEffectiveLevel()).lower(),
            "log_format": "json" if json_logs else "text"}


def _read_here(capture: Capture) -> None:
    """An exchange in a dialect only this process knows, turned into the OpenAI shape before it is sent."""
    dialect: Dialect = capture.dialect
    answer = capture.answer
    if isinstance(answer, Spooled):
        answer = answer.read()
    if isinstance(answer, (bytes, bytearray)):
        try:
            answer = orjson.loads(answer)
        except orjson.JSONDecodeError:
            answer = None
    capture.request = dialect.request(capture.request)
    capture.answer = dialect.answer(answer) if answer is not None else None
    capture.dialect = AlreadyRead(dialect.kind)
