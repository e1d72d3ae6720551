"""Recording every exchange without slowing any: a bounded queue, one writer thread, the dataset sink.

The pipeline hands over a ``Capture`` (references, no copies) and moves on. The writer turns captures
into records, links each to the earlier exchange it continues, applies ``dataset.redact``, and appends
them to the sink. When the queue is full or the disk fails, the request has already succeeded: the loss
is counted and logged loudly, never silent. On shutdown the queue is drained before the sink closes.
"""

from __future__ import annotations

import logging
import os
import queue
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import orjson

from .fronts import Dialect
from .records import Capture, build, continuation_keys, redact
from .sinks import JsonlSink, Sink, SqliteSink

log = logging.getLogger("mooltiproxy.dataset")

_STOP = object()
_INDEX_SIZE = 200_000  # fingerprints kept for threading; older threads can still be relinked offline


def new_session() -> str:
    return datetime.now().strftime("%Y%m%d-%H%M%S-") + os.urandom(2).hex()


def make_sink(kind: str, directory: Any, session: str) -> Sink | None:
    if kind == "jsonl":
        return JsonlSink(directory, session)
    if kind == "sqlite":
        return SqliteSink(directory, session)
    return None


class Recorder:
    def __init__(
        self,
        sink: Sink,
        session: str,
        *,
        redact: list[str] | tuple[str, ...] = (),
        fsync: str = "interval",
        queue_size: int = 10_000,
        dialects: Mapping[str, Dialect] | None = None,
    ) -> None:
        self.sink = sink
        self.dialects = dialects or {}
        self.session = session
        self.patterns = [re.compile(p) for p in redact]
        self.fsync = fsync
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
        self._thread: threading.Thread | None = None
        self._index: OrderedDict[str, tuple[str, str]] = OrderedDict()
        self.written = 0
        self.lost = 0
        self._last_loss_log: dict[str, float] = {}

    # --------------------------------------------------------------------- the request side

    def submit(self, capture: Capture) -> None:
        """Hand over an exchange; never blocks, never raises."""
        try:
            self._queue.put_nowait(capture)
        except queue.Full:
            self._lose(1, "queue", "the recording queue is full (the disk is slower than the traffic)")

    # --------------------------------------------------------------------- the writer

    def start(self) -> None:
        self.sink.open()
        for record in self.sink.session_records():
            meta = record.get("meta") or {}
            if meta.get("key") and meta.get("thread"):
                self._remember(meta["key"], record["id"], meta["thread"])
        self._thread = threading.Thread(target=self._run, name="mooltiproxy-recorder", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Write what is queued, then close the sink."""
        if self._thread is None:
            return
        self._queue.put(_STOP)
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("the recorder did not finish writing within %g s; %d exchange(s) may be lost", timeout, self._queue.qsize())
        self._thread = None
        self.sink.close()

    def _run(self) -> None:
        last_sync = time.monotonic()
        while True:
            item = self._queue.get()
            batch = [item]
            while len(batch) < 256:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stopping = any(i is _STOP for i in batch)
            captures = [i for i in batch if i is not _STOP]
            if captures:
                self._write(captures)
                now = time.monotonic()
                if self.fsync == "always" or (self.fsync == "interval" and now - last_sync >= 1.0):
                    self._sync()
                    last_sync = now
            if stopping:
                if self.fsync != "never":
                    self._sync()
                return

    def _write(self, captures: list[Capture]) -> None:
        records: list[dict[str, Any]] = []
        for capture in captures:
            try:
                records.extend(self._records(capture))
            except Exception:  # a capture the recorder cannot read must not stop the ones after it
                log.exception("could not turn exchange %s into a record", capture.request_id)
                self._lose(1, "record", "an exchange could not be turned into a record")
        if not records:
            return
        try:
            self.sink.write(records)
            self.written += len(records)
        except Exception as exc:
            self._lose(len(records), "write", f"the dataset could not be written ({exc})")

    def _records(self, capture: Capture) -> list[dict[str, Any]]:
        if isinstance(capture.answer, (bytes, bytearray)):
            try:
                capture.answer = orjson.loads(capture.answer)
            except orjson.JSONDecodeError:
                capture.answer = None
        dialect = self.dialects.get(capture.endpoint)
        if dialect is not None:  # relayed in another API's shape: recorded in the OpenAI one
            capture.request = dialect.request(capture.request)
            if capture.answer is not None:
                capture.answer = dialect.answer(capture.answer)
        records = build(capture, self.session)
        messages = capture.request.get("messages") if isinstance(capture.request, dict) else None
        parent = thread = None
        if isinstance(messages, list):
            for key in continuation_keys([m for m in messages if isinstance(m, dict)]):
                found = self._index.get(key)
                if found is not None:
                    parent, thread = found
                    break
        for record in records:
            meta = record["meta"]
            meta["parent"] = parent
            meta["thread"] = thread or records[0]["id"]
            self._remember(meta["key"], record["id"], meta["thread"])
        return [redact(r, self.patterns) for r in records]

    def _remember(self, key: str, record_id: str, thread: str) -> None:
        self._index[key] = (record_id, thread)
        self._index.move_to_end(key)
        if len(self._index) > _INDEX_SIZE:
            self._index.popitem(last=False)

    def _sync(self) -> None:
        try:
            self.sink.sync()
        except OSError as exc:
            log.error("syncing the dataset to disk failed: %s", exc)

    def _lose(self, n: int, kind: str, why: str) -> None:
        self.lost += n
        now = time.monotonic()
        if now - self._last_loss_log.get(kind, 0.0) >= 1.0:  # loud, but not a line per request under a flood
            self._last_loss_log[kind] = now
            log.error("LOST %d exchange record(s): %s. %d lost since start.", n, why, self.lost)
