"""The local state database (``state.db`` beside the dataset) that the workers of one machine share: how
it is opened, and its write transactions. The ban ledger and the key limits keep their tables in it."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from .files import private


def connect(path: Path, *schema: str, durable: bool = True) -> sqlite3.Connection:
    """A connection for any thread, in WAL mode, waiting for other writers; ``schema`` statements run once.
    ``durable=False`` skips the sync per commit, for counts a power cut may forget."""
    db = sqlite3.connect(private(path), isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA busy_timeout=5000")
    if not durable:
        db.execute("PRAGMA synchronous=NORMAL")
    for statement in schema:
        db.execute(statement)
    return db


@contextlib.contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """A write transaction taken at once (``BEGIN IMMEDIATE``), so two workers never both read and then write."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
