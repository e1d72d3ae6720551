"""Logging setup: plain lines or JSON objects (``--log-format json``), one per event, never a secret.

The access log line of each request carries its fields (client, method, path, status, target, key
name, timings, request id) as a record attribute, so the JSON form has them as fields, not text.

Lines are written in batches: a write and a flush per request cost the proxy a twentieth of its
throughput at saturation. A warning or worse is written at once; the rest within ``flush_logs``'s
period (the app flushes every 200 ms). The writing itself happens on a thread of its own, so a reader of
the log that stalls (a pipe nobody empties) never stalls the requests: past ``MAX_PENDING`` bytes
waiting, lines are dropped, counted, and the count is written once the reader catches up.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import multiprocessing.util
import queue
import sys
import threading
import time
from datetime import UTC, datetime
from typing import Any


class TextFormatter(logging.Formatter):
    """The text log's lines: time, level, logger, message. The time's seconds are formatted once per second, not once per
    line (``time.strftime`` was a tenth of an access line's cost)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
        self._second = -1
        self._stamp = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        second = int(record.created)
        if second != self._second:
            self._stamp = time.strftime(self.default_time_format, self.converter(second))
            self._second = second
        msec_format = self.default_msec_format
        return msec_format % (self._stamp, record.msecs) if msec_format else self._stamp


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            out.update(fields)
        if record.exc_info:
            out["traceback"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


MAX_PENDING = 8 * 1024 * 1024  # bytes of log waiting for a slow reader before lines are dropped


class BatchedStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler that gathers formatted lines and has a thread write them together."""

    def __init__(self, stream: Any = None, limit: int = 256) -> None:
        super().__init__(stream)
        self.lines: list[str] = []
        self.limit = limit
        self.pending = 0  # bytes handed to the writer, not yet written
        self.dropped = 0  # lines dropped since the last notice
        self._outbox: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(self.format(record) + self.terminator)
        except Exception:
            self.handleError(record)
            return
        if record.levelno >= logging.WARNING or len(self.lines) >= self.limit:
            self.flush()

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            if not self.lines:
                return
            lines, self.lines = self.lines, []
            text = "".join(lines)
            if self.pending + len(text) > MAX_PENDING:
                self.dropped += len(lines)
                return
            self.pending += len(text)
            if self._writer is None:
                self._writer = threading.Thread(target=self._write_loop, name="mooltiproxy-log", daemon=True)
                self._writer.start()
        self._outbox.put(text)

    def _write_loop(self) -> None:
        while True:
            text = self._outbox.get()
            if text is None:
                return
            try:
                self.stream.write(text)
                self.stream.flush()
            except Exception:  # a closed stream: nothing left to tell it
                pass
            with self.lock:  # type: ignore[union-attr]
                self.pending -= len(text)
                dropped, caught_up = self.dropped, self.pending == 0
                if dropped and caught_up:
                    self.dropped = 0
            if dropped and caught_up:
                with contextlib.suppress(Exception):
                    self.stream.write(f"{dropped} log line(s) dropped: the log's reader did not keep up\n")
                    self.stream.flush()

    def drain(self, timeout: float = 5.0) -> None:
        """Write everything gathered and wait for it to be written (at exit)."""
        self.flush()
        writer = self._writer
        if writer is not None:
            self._outbox.put(None)
            writer.join(timeout)
            self._writer = None


def flush_logs(*, wait: bool = False) -> None:
    for handler in logging.getLogger().handlers:
        if wait and isinstance(handler, BatchedStreamHandler):
            handler.drain()
        else:
            handler.flush()


def setup_logging(level: str = "info", fmt: str = "text") -> None:
    handler = BatchedStreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter() if fmt == "json" else TextFormatter())
    # No line shows the thread or the process, so records need not look them up (a system call for the process id
    # on every record): the switches the logging documentation gives for this.
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    atexit.register(handler.drain)
    # A worker process of `serve --workers` ends through multiprocessing, which skips atexit.
    multiprocessing.util.Finalize(None, handler.drain, exitpriority=0)
