"""Threads as the review page shows them: summaries for lists, and one thread laid out as a chat.

A thread is a tree: each record holds the conversation sent plus its answer, and continues its parent.
The chat shows one branch (by default the longest): the history of its last record, with every answer on
the branch in place together with the alternatives recorded for the same turn. Lists work on the catalog's
entries; only the thread shown is read back whole.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .catalog import Entry, Snapshot
from .formats import answer_start
from .reviews import Review

TITLE = 100  # characters of a thread's first user turn its summary shows (catalog.first_words' limit)

Record = dict[str, Any]


# ------------------------------------------------------------------------------------- lists


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


def longest(entries: Iterable[Entry]) -> Entry:
    """The entry holding the longest branch (ties: the latest)."""
    return max(entries, key=lambda e: (e.length, e.created, e.id))


def summarize(tid: str, members: Iterable[Entry], reviews: Mapping[str, Review], match: str | None = None) -> ThreadSummary:
    members = list(members)
    top = longest(members)
    mine = [reviews[e.id] for e in members if e.id in reviews]
    return ThreadSummary(
        id=tid, title=top.title + ("…" if len(top.title) >= TITLE - 1 else ""), records=len(members),
        turns=top.humans, sessions=sorted({e.session for e in members}),
        targets=sorted({e.target for e in members}), last=max(e.created for e in members), accepted=sum(r.accepted for r in mine),
        rejected=sum(r.rejected for r in mine), cut_short=sum(e.cut_short for e in members), match=match,
    )


# ------------------------------------------------------------------------------------- one thread


@dataclass
class Answer:
    """One answer on the shown branch, with the other answers recorded for the same turn."""

    record: Record
    alternatives: list[Record]
    start: int
    branches: dict[str, str] = field(default_factory=dict)  # alternative id → the last record of its longest branch


@dataclass
class Turn:
    """A turn the client sent, with the record that first sent it (where an edit of it is kept) and its place there."""

    turn: dict[str, Any]
    owner: str
    index: int


@dataclass
class Layout:
    leaf: Record
    path: list[Record]  # from the thread's first record to the leaf
    items: list[tuple[str, Any]]  # ("turn", Turn) or ("answer", Answer), in chat order
    other_leaves: list[Record]


def deepest(entry: Entry, children: Mapping[str, list[Entry]]) -> Entry:
    """The last entry of the longest branch that goes through ``entry``."""
    best = entry
    stack = [entry]
    while stack:
        e = stack.pop()
        kids = children.get(e.id, ())
        stack.extend(kids)
        if not kids and longest([best, e]) is e:
            best = e
    return best


def layout(snapshot: Snapshot, tid: str, leaf_id: str | None = None) -> Layout:
    """The thread ``tid`` as a chat along the branch ending at ``leaf_id`` (else the longest); its records read back."""
    entries = snapshot.threads[tid]
    ids = {e.id for e in entries}
    children = snapshot.children(tid)
    leaves = [e for e in entries if not children.get(e.id)]
    leaf_entry = snapshot.by_id[leaf_id] if leaf_id in ids and leaf_id is not None else longest(leaves or entries)
    chain = [leaf_entry]
    while (parent := chain[-1].parent) is not None and parent in ids and len(chain) <= len(entries):
        chain.append(snapshot.by_id[parent])
    chain.reverse()
    whole = snapshot.load(entries)
    members = [whole[e.id] for e in entries]
    path = [whole[e.id] for e in chain]
    leaf = whole[leaf_entry.id]
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
            if alt is not record and children.get(alt["id"]):
                answer.branches[alt["id"]] = deepest(snapshot.by_id[alt["id"]], children).id
        answers[start] = answer
    items: list[tuple[str, Any]] = []
    i = 0
    while i < len(conversation):
        if i in answers:
            items.append(("answer", answers[i]))
            i = len(answers[i].record.get("conversations") or [])
        else:
            owner = next((r for r in path if len(r.get("conversations") or []) > i), leaf)
            items.append(("turn", Turn(conversation[i], owner["id"], i)))
            i += 1
    return Layout(leaf, path, items, [whole[e.id] for e in leaves if e is not leaf_entry])
