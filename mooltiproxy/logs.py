"""Logging setup: plain lines or JSON objects (``--log-format json``), one per event, never a secret.

The access log line of each request carries its fields (client, method, path, status, target, key
name, timings, request id) as a record attribute, so the JSON form has them as fields, not text.

Lines are written in batches: a write and a flush per request cost the proxy a twentieth of its
throughput at saturation. A warning or worse is written at once; the rest within ``flush_logs``'s
period (the app flushes every 200 ms).
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any


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


class BatchedStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler that gathers formatted lines and writes them together."""

    def __init__(self, stream: Any = None, limit: int = 256) -> None:
        super().__init__(stream)
        self.lines: list[str] = []
        self.limit = limit

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
            if self.lines:
                lines, self.lines = self.lines, []
                self.stream.write("".join(lines))
            super().flush()


def flush_logs() -> None:
    for handler in logging.getLogger().handlers:
        handler.flush()


def setup_logging(level: str = "info", fmt: str = "text") -> None:
    handler = BatchedStreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JSONFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
