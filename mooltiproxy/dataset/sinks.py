"""Where records are written: a JSONL file per session, or an SQLite database; and reading them back.

Writing: every batch of records reaches a JSONL file in one ``write`` call on a file opened with
``O_APPEND``, so writers in several processes never interleave their lines; a crash can leave at most a
partial last line, which ``read_jsonl`` skips with a warning.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import orjson

from ..state.files import private

log = logging.getLogger("mooltiproxy.dataset")

DB_NAME = "mooltiproxy.db"


class Sink(Protocol):
    where: str  # for messages: the file or database the records go to
    spill_path: Path | None  # a local JSONL file for records the sink cannot take in time; None: no other place

    def open(self) -> None: ...

    def encode(self, records: list[dict[str, Any]]) -> Any:
        """A batch of records ready to ``write`` (done on the event loop, where the records are built)."""

    def write(self, payload: Any) -> None:
        """Write an encoded batch (on the writer thread); raises ``OSError`` (or ``sqlite3.Error``) when it
        could not be stored."""

    def lines(self, payload: Any) -> bytes:
        """An encoded batch as JSONL lines, for the spill file."""

    def sync(self) -> None: ...

    def close(self) -> None: ...

    def session_records(self) -> Iterator[dict[str, Any]]:
        """What this session already holds (to carry threads on when a session is appended to)."""


class JsonlSink:
    def __init__(self, directory: Path, session: str) -> None:
        self.path = directory / f"{session}.jsonl"
        self.where = str(self.path)
        self.spill_path: Path | None = None  # this is the local file
        self._fd: int | None = None

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        fence(self._fd, self.path)

    def encode(self, records: list[dict[str, Any]]) -> bytes:
        return b"".join(orjson.dumps(r) + b"\n" for r in records)

    def lines(self, payload: Any) -> bytes:
        return bytes(payload)

    def write(self, payload: Any) -> None:
        assert self._fd is not None
        data: bytes = payload
        written = os.write(self._fd, data)
        if written != len(data):  # a full disk: the rest of the line cannot follow later without interleaving
            raise OSError(f"only {written} of {len(data)} bytes reached {self.path}")

    def sync(self) -> None:
        if self._fd is not None:
            os.fsync(self._fd)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def session_records(self) -> Iterator[dict[str, Any]]:
        if self.path.exists():
            yield from read_jsonl(self.path)


class RowSink:
    """What the database sinks share: a batch is encoded as rows, and spilled as the JSONL of their records."""

    def encode(self, records: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        return rows(records)

    def lines(self, payload: Any) -> bytes:
        return row_lines(payload)


class SqliteSink(RowSink):
    def __init__(self, directory: Path, session: str) -> None:
        self.path = directory / DB_NAME
        self.where = str(self.path)
        self.spill_path: Path | None = directory / f"{session}.jsonl"
        self.session = session
        self._db: sqlite3.Connection | None = None

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = connect(self.path)

    def write(self, payload: Any) -> None:
        assert self._db is not None
        with self._db:
            self._db.executemany("INSERT INTO records VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", payload)

    def sync(self) -> None:
        """Each batch is its own transaction, made durable by SQLite itself."""

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def session_records(self) -> Iterator[dict[str, Any]]:
        assert self._db is not None
        for (data,) in self._db.execute("SELECT data FROM records WHERE session = ? ORDER BY created", (self.session,)):
            yield orjson.loads(data)


def rows(records: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """Records as the database sinks' rows: the columns a query filters on, then the whole record as JSON."""
    return [(r["id"], r["session"], r["meta"]["created"], r["meta"]["target"], r["meta"]["thread"], r["meta"]["parent"],
             r["meta"]["turn"], r["meta"]["key"], orjson.dumps(r).decode()) for r in records]


def row_lines(payload: list[tuple[Any, ...]]) -> bytes:
    """Rows back as JSONL lines (the record is the last column)."""
    return b"".join(row[-1].encode() + b"\n" for row in payload)


def connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(private(path), check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA busy_timeout=10000")
    db.execute(
        "CREATE TABLE IF NOT EXISTS records (id TEXT PRIMARY KEY, session TEXT NOT NULL, created TEXT NOT NULL, target TEXT,"
        " thread TEXT, parent TEXT, turn TEXT, key TEXT, data TEXT NOT NULL)"
    )
    db.execute("CREATE INDEX IF NOT EXISTS records_session ON records (session, created)")
    db.execute("CREATE INDEX IF NOT EXISTS records_thread ON records (thread)")
    return db


def fence(fd: int, path: Path) -> None:
    """A file a crash left in the middle of a line gets the line ended, so the next record starts on a line of its own
    (the torn one stays, and readers skip it with a warning)."""
    size = os.fstat(fd).st_size
    if size == 0:
        return
    with path.open("rb") as f:
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
    os.write(fd, b"\n")
    log.warning("%s ended in the middle of a record (the proxy was killed while writing it?); that line is fenced off and "
                "skipped by every reader, and recording goes on after it", path)


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """The records of a JSONL file; a line that is not a whole record (a crash's partial last line) is skipped
    with a warning naming the file and line."""
    with path.open("rb") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                log.warning("%s line %d is not a whole record (cut off by a crash?); skipped", path, number)
                continue
            if isinstance(record, dict):
                yield record
