"""The dataset as the review page lists it, without holding it: an ``Entry`` per record (what lists, filters and
links need, and where the record lies in its file), kept up to date by reading only what was appended since.

A record's conversation stays in its file until a page shows that thread (``Snapshot.load`` reads those records
back by offset). 100,000 records of a two-line chat cost about 60 MB here, where holding them whole cost 600.
Records of the SQLite and PostgreSQL sinks are held whole (a database is read as a whole when it changed).

Threads follow the recorder's links (``meta.parent``, ``meta.alternative_of``, a named conversation); a record
it could not link (another worker's, an older version's) continues the latest earlier record of its scope whose
conversation its own begins with, as ``store.link`` does for exports.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from .records import continuation_keys, scope_of, sent_messages
from .reviews import Review, review_counts
from .sinks import DB_NAME
from .store import Store

Record = dict[str, Any]
_PROMPTS = ("/v1/completions", "/generate", "/generate_stream", "/")
_intern = sys.intern


def first_words(record: Record, limit: int = 100) -> str:
    """What a conversation is about: its first user turn's text, shortened (ending in "…" when it was)."""
    for turn in record.get("conversations") or ():
        if turn.get("from") == "human" and str(turn.get("value") or "").strip():
            text = " ".join(str(turn["value"])[: limit * 4].split())  # enough to fill the line, whatever its spacing
            return text if len(text) <= limit else text[: limit - 1] + "…"
    return "(no user text)"


class Entry:
    """One record as lists need it. ``record`` is the whole record for a database's; a file's is read back by ``at``."""

    __slots__ = (
        "alternative_of",
        "at",
        "continues",
        "conversation",
        "created",
        "cut_short",
        "file",
        "humans",
        "id",
        "key",
        "length",
        "parent",
        "record",
        "scope",
        "session",
        "status",
        "target",
        "thread",
        "title",
        "tokens",
        "turn",
    )

    def __init__(self, record: Record, file: str | None, at: int, first_of_request: bool) -> None:
        meta = record.get("meta") or {}
        get = meta.get
        conversation = record.get("conversations") or []
        self.id: str = _intern(str(record.get("id")))
        self.session = _intern(str(record.get("session")))
        self.created = str(get("created") or "")
        self.target = _intern(str(get("target")))
        self.status = get("status")
        self.cut_short = bool(get("cut_short"))
        parent, thread, alternative = get("parent"), get("thread"), get("alternative_of")
        self.parent: str | None = _intern(parent) if isinstance(parent, str) else None
        self.thread: str | None = _intern(thread) if isinstance(thread, str) else None
        self.alternative_of: str | None = _intern(alternative) if isinstance(alternative, str) else None
        # records of an older version carry no alternative_of: their alternatives are told by turn, within one key
        turn = get("turn")
        self.turn: str | None = turn if "alternative_of" not in meta and isinstance(turn, str) else None
        named = get("conversation")
        self.conversation: str | None = named if isinstance(named, str) else None
        self.scope = _intern(scope_of(get("key_name"), get("user"), named))
        key = get("key")
        self.key: str | None = key if isinstance(key, str) else None
        self.length = len(conversation)
        self.humans = sum(1 for t in conversation if t.get("from") == "human")
        # Without its "…", a title of plain text stays one byte a character (with it, two): told apart by its length.
        # The records of one conversation mostly share their first words: one copy of them (sys.intern).
        self.title = _intern(first_words(record).removesuffix("…"))
        usage = get("usage")
        self.tokens = 0  # the exchange's total: n choices share one usage, counted on the first
        if first_of_request and isinstance(usage, dict) and isinstance(usage.get("total_tokens"), int):
            self.tokens = usage["total_tokens"]
        self.continues: list[str] | tuple[()] = ()
        if self.parent is None and self.humans > 1 and get("endpoint") not in _PROMPTS:
            self.continues = continuation_keys(sent_messages(record)[:-1])  # for relinking, when the recorder could not
        self.file, self.at = file, at  # where a file's record begins: it is that line
        self.record = record if file is None else None


@dataclass(frozen=True)
class Snapshot:
    entries: list[Entry]  # time order
    by_id: Mapping[str, Entry]
    threads: Mapping[str, tuple[Entry, ...]]  # thread id (its earliest record's id) → its entries, time order

    def thread_of(self, record_id: str) -> str | None:
        entry = self.by_id.get(record_id)
        return entry.thread if entry is not None else None

    def children(self, tid: str) -> dict[str, list[Entry]]:
        """The entries of thread ``tid`` by the id of the one each continues (worked out when a thread is shown, not
        kept for all)."""
        out: dict[str, list[Entry]] = {}
        for e in self.threads.get(tid, ()):
            if e.parent is not None:
                out.setdefault(e.parent, []).append(e)
        return out

    def load(self, entries: Iterable[Entry]) -> dict[str, Record]:
        """The whole records of ``entries``, read back from their files (one open per file)."""
        out: dict[str, Record] = {}
        by_file: dict[str, list[Entry]] = {}
        for e in entries:
            if e.record is not None:
                out[e.id] = e.record
            elif e.file is not None:
                by_file.setdefault(e.file, []).append(e)
        for path, wanted in by_file.items():
            with open(path, "rb") as f:
                for e in sorted(wanted, key=lambda e: e.at):
                    f.seek(e.at)
                    out[e.id] = orjson.loads(f.readline())
        return out

    def search(self, query: str, width: int = 60) -> dict[str, str]:
        """Thread id → the first place ``query`` occurs in it (case-insensitive, with some text around it). Files are
        read line by line, so a search holds one record at a time, not the dataset."""
        needle = query.casefold()
        raw = needle.encode()
        found: dict[str, str] = {}

        def match(record: Record) -> None:
            tid = self.thread_of(str(record.get("id")))
            if tid is None or tid in found:
                return
            for turn in record.get("conversations") or ():
                text = str(turn.get("value") or "")
                at = text.casefold().find(needle)
                if at >= 0:
                    start, end = max(at - width, 0), min(at + len(query) + width, len(text))
                    found[tid] = ("…" if start else "") + " ".join(text[start:end].split()) + ("…" if end < len(text) else "")
                    return

        files = sorted({e.file for e in self.entries if e.file is not None})
        for path in files:
            with open(path, "rb") as f:
                for line in f:
                    if raw in line.lower() or not raw.isascii():
                        try:
                            match(orjson.loads(line))
                        except orjson.JSONDecodeError:
                            continue
        for e in self.entries:
            if e.record is not None:
                match(e.record)
        return found


def _db_signature(directory: Path) -> tuple[tuple[str, int, int], ...]:
    out = []
    for path in (directory / DB_NAME, directory / f"{DB_NAME}-wal"):
        try:
            st = path.stat()
        except OSError:
            continue
        out.append((path.name, st.st_size, st.st_mtime_ns))
    return tuple(out)


class Catalog:
    """The entries of one dataset folder (and its PostgreSQL database), brought up to date on each ``snapshot``."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self._files: dict[str, tuple[int, int]] = {}  # path → (inode, bytes read)
        self._db: tuple[tuple[str, int, int], ...] | None = None
        self._entries: list[Entry] = []
        self._by_id: dict[str, Entry] = {}
        self._by_key: dict[str, dict[str, Entry]] = {}  # scope → the conversation-and-answer fingerprint → its latest entry
        self._threads: dict[str, tuple[Entry, ...]] = {}
        self._named: dict[str, str] = {}  # scope of a named conversation → its thread
        self._turns: dict[str, str] = {}  # key name + turn of an older version's record → its thread
        self._snapshot: Snapshot | None = None

    def snapshot(self) -> Snapshot:
        """(Blocking: call it from a worker thread.)"""
        with self._lock:
            fresh = self._read()
            if fresh or self._snapshot is None:
                if self._snapshot is not None:
                    # Copied before a change, not after: pages still reading the last snapshot keep it whole, and at
                    # rest there is one set of tables, not two.
                    self._entries, self._by_id, self._threads = list(self._entries), dict(self._by_id), dict(self._threads)
                for entry in sorted(fresh, key=lambda e: e.created):
                    self._add(entry)
                self._snapshot = Snapshot(self._entries, self._by_id, self._threads)
            return self._snapshot

    def _read(self) -> list[Entry]:
        """The entries of what was appended since the last call; everything again when a file was replaced or shrank,
        or the database changed."""
        directory = self.store.directory
        db = _db_signature(directory) if directory.is_dir() else ()
        fresh: list[Entry] = []
        if db != self._db:
            if self._db is not None:  # a database changed: it is read again as a whole, and the files with it
                self._reset()
            self._db = db
            fresh = [Entry(r, None, 0, True) for r in self.store.database_records()]
        paths = sorted(directory.glob("*.jsonl")) if directory.is_dir() else []
        for path in paths:
            try:
                st = path.stat()
            except OSError:
                continue
            inode, done = self._files.get(str(path), (st.st_ino, 0))
            if inode != st.st_ino or st.st_size < done:
                self._reset()
                return self._read()
            if st.st_size > done:
                fresh += self._entries_of(path, done)  # notes how far it read
            else:
                self._files[str(path)] = (st.st_ino, done)
        return fresh

    def _entries_of(self, path: Path, start: int) -> list[Entry]:
        out = []
        last_request = None
        name = _intern(str(path))
        with path.open("rb") as f:
            f.seek(start)
            offset = start
            for line in f:
                if not line.endswith(b"\n"):
                    break  # being written: read next time, whole
                at, offset = offset, offset + len(line)
                if not line.strip():
                    continue
                try:
                    record = orjson.loads(line)
                except orjson.JSONDecodeError:
                    continue  # a line a crash tore: read_jsonl says so when the dataset commands read it
                if not isinstance(record, dict):
                    continue
                request = (record.get("meta") or {}).get("request_id")
                out.append(Entry(record, name, at, request is None or request != last_request))
                last_request = request
        self._files[str(path)] = (os.stat(path).st_ino, offset)
        return out

    def _add(self, e: Entry) -> None:
        if e.id in self._by_id:
            return
        parent = e.parent if e.parent in self._by_id else None
        if parent is None:
            mine = self._by_key.get(e.scope, {})
            for key in e.continues:
                found = mine.get(key)
                if found is not None:
                    parent = found.id
                    break
        e.parent = parent
        by_id = self._by_id
        tid = (by_id[parent].thread if parent is not None else None) or \
            (by_id[e.alternative_of].thread if e.alternative_of in by_id else None)
        if tid is None and e.conversation:
            tid = self._named.get(e.scope)
        if tid is None and e.turn is not None:
            tid = self._turns.get(e.scope.split("\x00", 1)[0] + "\x00" + e.turn)
        if tid is None and e.thread in self._threads:
            tid = e.thread
        tid = tid or e.id
        e.thread = tid
        self._entries.append(e)
        self._by_id[e.id] = e
        self._threads[tid] = (*self._threads.get(tid, ()), e)
        if e.key:
            self._by_key.setdefault(e.scope, {})[e.key] = e
        if e.conversation:
            self._named.setdefault(e.scope, tid)
        if e.turn is not None:
            self._turns.setdefault(e.scope.split("\x00", 1)[0] + "\x00" + e.turn, tid)
        e.continues = ()  # linked: no longer needed


# ------------------------------------------------------------------------------------- numbers


def stats(entries: Iterable[Entry], reviews: Mapping[str, Review], threads: int | None = None) -> dict[str, Any]:
    """What ``exports.stats`` says of records, said of entries (of tokens, the total only)."""
    entries = list(entries)
    sessions: dict[str, int] = {}
    targets: dict[str, int] = {}
    statuses: dict[str, int] = {}
    # Records grouped as exports.alternatives_of groups them, only those an alternative names kept: a table of every
    # record's id, built at each look at the page, grew the process by megabytes at 100,000 records (tests/test_ui.py).
    groups: dict[str, int] = {}
    tokens = {"total": 0}
    for e in entries:
        sessions[e.session] = sessions.get(e.session, 0) + 1
        targets[e.target] = targets.get(e.target, 0) + 1
        statuses[str(e.status)] = statuses.get(str(e.status), 0) + 1
        group = e.alternative_of or (f"{e.scope.split(chr(0), 1)[0]}\x00{e.turn}" if e.turn is not None else None)
        if group is not None:
            groups[group] = groups.get(group, 0) + 1
        tokens["total"] += e.tokens
    if groups:
        for e in entries:  # the first answer of a turn, in the group its alternatives name
            if not e.alternative_of and e.turn is None and e.id in groups:
                groups[e.id] += 1
    created = [e.created for e in entries if e.created]
    return {
        "records": len(entries),
        "sessions": dict(sorted(sessions.items())),
        "targets": dict(sorted(targets.items())),
        "statuses": dict(sorted(statuses.items())),
        "threads": threads if threads is not None else len({e.thread for e in entries}),
        "turns_with_alternatives": sum(1 for n in groups.values() if n > 1),
        "cut_short": sum(e.cut_short for e in entries),
        **review_counts(reviews, (e.id for e in entries)),
        "tokens": tokens,
        "first": min(created, default=None),
        "last": max(created, default=None),
    }

