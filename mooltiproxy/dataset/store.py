"""The recorded dataset as the curation tools read it: every session of either sink, filtered, with threads
linked from the conversations themselves.

The recorder links a record to the one it continues as it writes; several workers each keep their own
index, so a chat that moved between them can miss a link. ``link`` redoes it from content, so stats,
exports and the review page always see whole threads.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from .records import continuation_keys, scope_of, sent_messages
from .sinks import DB_NAME, read_jsonl


@dataclass(frozen=True)
class Filter:
    sessions: Sequence[str] = ()
    targets: Sequence[str] = ()
    since: str | None = None  # ISO date or time; compared with meta.created
    until: str | None = None

    def keeps(self, record: dict[str, Any]) -> bool:
        meta = record.get("meta") or {}
        created = str(meta.get("created") or "")
        return (
            (not self.sessions or record.get("session") in self.sessions)
            and (not self.targets or meta.get("target") in self.targets)
            and (self.since is None or created >= self.since)
            and (self.until is None or created[: len(self.until)] <= self.until)
        )


class Store:
    """The records under ``directory`` (JSONL files, the SQLite database) and, with ``dsn``, in PostgreSQL."""

    def __init__(self, directory: Path, dsn: str | None = None) -> None:
        self.directory = directory
        self.dsn = dsn

    def _jsonl_files(self) -> list[Path]:
        return sorted(self.directory.glob("*.jsonl")) if self.directory.is_dir() else []

    def _db(self) -> Path | None:
        path = self.directory / DB_NAME
        return path if path.is_file() else None

    def sessions(self) -> list[str]:
        names = {p.stem for p in self._jsonl_files()}
        db = self._db()
        if db is not None:
            with sqlite3.connect(db) as conn:
                names |= {row[0] for row in conn.execute("SELECT DISTINCT session FROM records")}
        if self.dsn is not None:
            from . import postgres

            names |= postgres.sessions(self.dsn)
        return sorted(names)

    def records(self, where: Filter | None = None) -> Iterator[dict[str, Any]]:
        """Every record (both sinks), oldest first within each source, that ``where`` keeps."""
        where = where or Filter()
        for path in self._jsonl_files():
            if where.sessions and path.stem not in where.sessions:
                continue
            yield from (r for r in read_jsonl(path) if where.keeps(r))
        db = self._db()
        if db is not None:
            with sqlite3.connect(db) as conn:
                for (data,) in conn.execute("SELECT data FROM records ORDER BY created"):
                    record = orjson.loads(data)
                    if where.keeps(record):
                        yield record
        if self.dsn is not None:
            from . import postgres

            yield from (r for r in postgres.records(self.dsn, tuple(where.sessions)) if where.keeps(r))

    def database_records(self) -> Iterator[dict[str, Any]]:
        """Every record of the SQLite sink and of PostgreSQL (not the JSONL files), oldest first within each."""
        db = self._db()
        if db is not None:
            with sqlite3.connect(db) as conn:
                for (data,) in conn.execute("SELECT data FROM records ORDER BY created"):
                    yield orjson.loads(data)
        if self.dsn is not None:
            from . import postgres

            yield from postgres.records(self.dsn, ())

    def linked(self, where: Filter | None = None) -> list[dict[str, Any]]:
        return link(self.records(where))


def link(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Records in time order, each with ``meta.parent`` and ``meta.thread`` made whole: the links the recorder made
    are kept; a record it could not link (another worker's index, an evicted entry, a record of an older version)
    continues the latest earlier record of its scope (key, user, named conversation) whose conversation its own
    begins with. Threads follow parents and alternatives, so a relinked record brings its descendants along."""
    ordered = sorted(records, key=lambda r: str((r.get("meta") or {}).get("created") or ""))
    present = {r.get("id") for r in ordered}
    by_key: dict[str, dict[str, Any]] = {}
    thread_of: dict[str, str] = {}
    for record in ordered:
        meta = record.setdefault("meta", {})
        scope = scope_of(meta.get("key_name"), meta.get("user"), meta.get("conversation"))
        parent = meta.get("parent") if meta.get("parent") in present else None
        if parent is None and meta.get("endpoint") not in _PROMPTS:
            messages = sent_messages(record)
            for key in continuation_keys(messages[:-1]):  # the record's own answer is not a beginning it continues
                found = by_key.get(scope + key)
                if found is not None:
                    parent = found["id"]
                    break
        meta["parent"] = parent
        alternative = meta.get("alternative_of")
        meta["thread"] = (thread_of.get(parent) if parent is not None else None) or thread_of.get(alternative) \
            or meta.get("thread") or record.get("id")
        thread_of[record["id"]] = meta["thread"]
        if meta.get("key"):
            by_key[scope + meta["key"]] = record
    return ordered


_PROMPTS = ("/v1/completions", "/generate", "/generate_stream", "/")  # records of a prompt, which continue nothing
