"""The dataset as the review page shows it: a snapshot of the records grouped into threads (rebuilt only
when a dataset file changed), thread summaries for lists and search, and one thread laid out as a chat.

A thread is a tree: each record holds the conversation sent plus its answer, and continues its parent.
The chat shows one branch (by default the longest): the history of its last record, with every answer on
the branch in place together with the alternatives recorded for the same turn.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import exports
from .formats import answer_start
from .reviews import Review
from .sinks import DB_NAME
from .store import Store

Record = dict[str, Any]


@dataclass(frozen=True)
class Snapshot:
    records: list[Record]
    by_id: dict[str, Record]
    threads: dict[str, list[Record]]  # thread id (its earliest record's id) → records, time order
    thread_of: dict[str, str]
    children: dict[str, list[Record]]


def _signature(directory: Path) -> tuple[tuple[str, int, int], ...]:
    """What changes when any dataset file does: the recorder appends to JSONL, or writes SQLite's WAL."""
    if not directory.is_dir():
        return ()
    paths = [*sorted(directory.glob("*.jsonl")), directory / DB_NAME, directory / f"{DB_NAME}-wal"]
    out = []
    for path in paths:
        try:
            st = path.stat()
        except OSError:
            continue
        out.append((path.name, st.st_size, st.st_mtime_ns))
    return tuple(out)


class Catalog:
    """The snapshot of one dataset folder, cached until a file in it changes."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._cached: tuple[tuple[tuple[str, int, int], ...], Snapshot] | None = None

    def snapshot(self) -> Snapshot:
        """(Blocking: call it from a worker thread.)"""
        with self._lock:
            signature = _signature(self.store.directory)
            if self._cached is None or self._cached[0] != signature:
                self._cached = (signature, _build(self.store.linked()))
            return self._cached[1]


def _build(records: list[Record]) -> Snapshot:
    by_id = {r["id"]: r for r in records}
    threads = exports.threads(records)
    thread_of = {r["id"]: tid for tid, members in threads.items() for r in members}
    children: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        parent = (r.get("meta") or {}).get("parent")
        if isinstance(parent, str) and parent in by_id:
            children[parent].append(r)
    return Snapshot(records, by_id, threads, thread_of, dict(children))


# ------------------------------------------------------------------------------------- lists


def first_words(record: Record, limit: int = 120) -> str:
    """What a thread is about: its first user turn's text, shortened."""
    for turn in record.get("conversations") or ():
        if turn.get("from") == "human" and str(turn.get("value") or "").strip():
            text = " ".join(str(turn["value"]).split())
            return text if len(text) <= limit else text[: limit - 1] + "…"
    return "(no user text)"


@dataclass
class ThreadSummary:
    id: str
    title: str
    records: int
    turns: int
    sessions: list[str]
    targets: list[str]
    last: str
    accepted: int
    rejected: int
    cut_short: int
    match: str | None = None


def summarize(tid: str, members: list[Record], reviews: Mapping[str, Review], match: str | None = None) -> ThreadSummary:
    longest = exports.longest(members)
    mine = [reviews[r["id"]] for r in members if r["id"] in reviews]
    metas = [r.get("meta") or {} for r in members]
    return ThreadSummary(
        id=tid, title=first_words(longest), records=len(members),
        turns=sum(1 for t in longest.get("conversations") or () if t.get("from") == "human"),
        sessions=sorted({str(r.get("session")) for r in members}), targets=sorted({str(m.get("target")) for m in metas}),
        last=max(str(m.get("created") or "") for m in metas), accepted=sum(r.accepted for r in mine),
        rejected=sum(r.rejected for r in mine), cut_short=sum(bool(m.get("cut_short")) for m in metas), match=match,
    )


def search(members: list[Record], query: str, width: int = 60) -> str | None:
    """The first place ``query`` occurs in a thread (case-insensitive), with some text around it; None if nowhere."""
    needle = query.casefold()
    for record in members:
        for turn in record.get("conversations") or ():
            text = str(turn.get("value") or "")
            at = text.casefold().find(needle)
            if at >= 0:
                start, end = max(at - width, 0), min(at + len(query) + width, len(text))
                return ("…" if start else "") + " ".join(text[start:end].split()) + ("…" if end < len(text) else "")
    return None


# ------------------------------------------------------------------------------------- one thread


@dataclass
class Answer:
    """One answer on the shown branch, with the other answers recorded for the same turn."""

    record: Record
    alternatives: list[Record]
    start: int
    branches: dict[str, str] = field(default_factory=dict)  # alternative id → the last record of its longest branch


@dataclass
class Layout:
    leaf: Record
    path: list[Record]  # from the thread's first record to the leaf
    items: list[tuple[str, Any]]  # ("turn", {"from", "value"}) or ("answer", Answer), in chat order
    other_leaves: list[Record]


def deepest(record: Record, children: Mapping[str, list[Record]]) -> Record:
    """The last record of the longest branch that goes through ``record``."""
    best = record
    stack = [record]
    while stack:
        r = stack.pop()
        kids = children.get(r["id"], [])
        stack.extend(kids)
        if not kids and exports.longest([best, r]) is r:
            best = r
    return best


def layout(snapshot: Snapshot, tid: str, leaf_id: str | None = None) -> Layout:
    members = snapshot.threads[tid]
    ids = {r["id"] for r in members}
    leaves = [r for r in members if not snapshot.children.get(r["id"])]
    leaf = snapshot.by_id[leaf_id] if leaf_id in ids and leaf_id is not None else exports.longest(leaves or members)
    path = [leaf]
    while isinstance(parent := (path[-1].get("meta") or {}).get("parent"), str) and parent in ids and len(path) <= len(members):
        path.append(snapshot.by_id[parent])
    path.reverse()
    by_turn: dict[str, list[Record]] = defaultdict(list)
    for r in members:
        by_turn[str((r.get("meta") or {}).get("turn"))].append(r)
    conversation = leaf.get("conversations") or []
    answers: dict[int, Answer] = {}
    for record in path:
        start, end = answer_start(record), len(record.get("conversations") or [])
        if end > len(conversation) or start in answers:
            continue  # a record whose history does not line up with the leaf's: shown through its own branch only
        alternatives = by_turn[str((record.get("meta") or {}).get("turn"))]
        answer = Answer(record, alternatives, start)
        for alt in alternatives:
            if alt is not record and snapshot.children.get(alt["id"]):
                answer.branches[alt["id"]] = deepest(alt, snapshot.children)["id"]
        answers[start] = answer
    items: list[tuple[str, Any]] = []
    i = 0
    while i < len(conversation):
        if i in answers:
            items.append(("answer", answers[i]))
            i = len(answers[i].record.get("conversations") or [])
        else:
            items.append(("turn", conversation[i]))
            i += 1
    return Layout(leaf, path, items, [r for r in leaves if r is not leaf])
