"""The dataset on PostgreSQL (``dataset.sink: postgres``): one ``records`` table that every instance writes
into, in batches, with the SQLite sink's columns; reading it back for stats, exports and the review page;
and the reviewers' judgments in a ``reviews`` table beside it, so every instance's review page shares them.

Each batch is one transaction of ``INSERT … ON CONFLICT DO NOTHING``, so a batch sent again after a
connection broke mid-commit cannot write a record twice. A failed batch raises; the recorder holds it
and tries again (``recorder.py``), reconnecting here on the next write.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson
import psycopg

from ..config.validators import redacted
from .reviews import _SCHEMA as REVIEWS_SCHEMA
from .reviews import ADDED as REVIEWS_ADDED
from .reviews import Reviews
from .sinks import RowSink

log = logging.getLogger("mooltiproxy.dataset")

_SCHEMA = (
    # Two instances starting together must not race on CREATE TABLE: the first takes this lock.
    "SELECT pg_advisory_xact_lock(7214530915)",
    "CREATE TABLE IF NOT EXISTS records (id text PRIMARY KEY, session text NOT NULL, created timestamptz NOT NULL,"
    " target text, thread text, parent text, turn text, key text, data json NOT NULL)",
    "CREATE INDEX IF NOT EXISTS records_session ON records (session, created)",
    "CREATE INDEX IF NOT EXISTS records_thread ON records (thread)",
    REVIEWS_SCHEMA,  # the same table as SQLite's reviews.db
    *(f"ALTER TABLE reviews ADD COLUMN IF NOT EXISTS {name} {definition}" for name, definition in REVIEWS_ADDED),
)
_INSERT = ("INSERT INTO records (id, session, created, target, thread, parent, turn, key, data)"
           " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO NOTHING")


def connect(dsn: str, *, timeout: float = 5.0) -> psycopg.Connection[Any]:
    """A connection with the table in place; ``psycopg.Error`` (whose text never holds the password) when it cannot be made."""
    conn = psycopg.connect(dsn, connect_timeout=max(1, int(timeout)))
    try:
        with conn.cursor() as cur:
            for statement in _SCHEMA:
                cur.execute(statement)
        conn.commit()
    except BaseException:
        conn.close()
        raise
    return conn


class PostgresSink(RowSink):
    def __init__(self, dsn: str, directory: Path, session: str) -> None:
        self.dsn = dsn
        self.session = session
        self.where = "PostgreSQL at " + redacted(dsn)
        # Where records go that PostgreSQL could not take in time; the curation tools read it with the rest.
        self.spill_path: Path | None = directory / f"{session}.jsonl"
        self._conn: psycopg.Connection[Any] | None = None

    def open(self) -> None:
        self._conn = connect(self.dsn)

    def write(self, payload: Any) -> None:
        if self._conn is None or self._conn.closed:
            self._conn = connect(self.dsn)
        try:
            with self._conn.cursor() as cur:
                cur.executemany(_INSERT, payload)
            self._conn.commit()
        except psycopg.Error:
            self._drop()
            raise

    def _drop(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
            self._conn = None

    def sync(self) -> None:
        """Each batch is its own committed transaction."""

    def close(self) -> None:
        self._drop()

    def session_records(self) -> Iterator[dict[str, Any]]:
        assert self._conn is not None
        with self._conn.cursor() as cur:
            cur.execute("SELECT data::text FROM records WHERE session = %s ORDER BY created", (self.session,))
            rows = cur.fetchall()
        self._conn.commit()
        for (data,) in rows:
            yield orjson.loads(data)


def sessions(dsn: str) -> set[str]:
    with connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT DISTINCT session FROM records")
        return {row[0] for row in cur.fetchall()}


def records(dsn: str, sessions: tuple[str, ...] = ()) -> Iterator[dict[str, Any]]:
    """Every record, oldest first, of ``sessions`` (all when empty), read in chunks with a server-side cursor."""
    with connect(dsn) as conn, conn.cursor(name="mooltiproxy_records") as cur:
        if sessions:
            cur.execute("SELECT data::text FROM records WHERE session = ANY(%s) ORDER BY created", (list(sessions),))
        else:
            cur.execute("SELECT data::text FROM records ORDER BY created")
        for (data,) in cur:
            yield orjson.loads(data)


class PostgresReviews(Reviews):
    def __init__(self, dsn: str) -> None:
        super().__init__(Path("reviews"))  # no file: the table in the database
        self.dsn = dsn

    def _exists(self) -> bool:
        return True

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with connect(self.dsn) as conn:
            return conn.execute(_placeholders(sql), params).fetchall()

    def _write(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        with connect(self.dsn) as conn, conn.cursor() as cur:
            cur.executemany(_placeholders(sql), list(rows))


def _placeholders(sql: str) -> str:
    """The reviews' SQL, written with SQLite's ``?``, in psycopg's ``%s``."""
    return sql.replace("?", "%s")
