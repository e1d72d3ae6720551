"""Reviewers' judgments on recorded exchanges, kept in SQLite beside the dataset (``reviews.db``), or in the
dataset's PostgreSQL database when records go there.

The raw capture is never rewritten: a review says, per record id, whether the record is accepted or
rejected, what its answer should read instead (an edit that exports use in place of the recorded
answer turns), and its rank among the alternatives of the same turn (for preference pairs). Several
processes may read and write at once (a proxy's review page and a `mooltiproxy dataset export`): every
call opens its own connection, in WAL mode with a busy timeout, and each change is one transaction.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from ..state.files import private

FILE_NAME = "reviews.db"
STATUSES = ("accepted", "rejected", "none")
ANSWER_ROLES = ("gpt", "function_call")

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS reviews (record TEXT PRIMARY KEY,"
    " status TEXT NOT NULL DEFAULT 'none' CHECK (status IN ('accepted', 'rejected', 'none')),"
    " answer TEXT, rank INTEGER CHECK (rank IS NULL OR rank >= 1), updated TEXT NOT NULL, note TEXT,"
    " deleted INTEGER NOT NULL DEFAULT 0, turns TEXT)"
)
# Columns added since the table was first made: (name, definition), added to a table that lacks them.
ADDED = (("note", "TEXT"), ("deleted", "INTEGER NOT NULL DEFAULT 0"), ("turns", "TEXT"))
_COLUMNS = "record, status, answer, rank, updated, note, deleted, turns"
TAG = re.compile(r"#([\w-]+)")


@dataclass(frozen=True)
class Review:
    record: str
    status: str = "none"
    answer: tuple[dict[str, str], ...] | None = None  # the edited answer turns; None: as recorded
    rank: int | None = None  # 1 is the best of its turn's alternatives
    updated: str | None = None
    note: str | None = None  # the reviewer's words on it; #words in it are its tags
    deleted: bool = False  # out of the lists and the exports (the recorded file keeps it)
    turns: Mapping[int, str] | None = None  # edited texts of turns the record's client sent, by their place in it

    @property
    def tags(self) -> list[str]:
        return sorted({t.lower() for t in TAG.findall(self.note or "")})

    @property
    def accepted(self) -> bool:
        return self.status == "accepted"

    @property
    def rejected(self) -> bool:
        return self.status == "rejected"


def check_answer(turns: Iterable[dict[str, Any]]) -> tuple[dict[str, str], ...]:
    """An edited answer as turns ``gpt`` (text) and/or ``function_call`` (a JSON call); ValueError says what is wrong."""
    out = []
    for turn in turns:
        role, value = turn.get("from"), turn.get("value")
        if role not in ANSWER_ROLES or not isinstance(value, str):
            raise ValueError("an answer is made of 'gpt' text and 'function_call' turns only")
        if role == "function_call":
            value = _call_json(value)
        out.append({"from": str(role), "value": value})
    if not out or [t["from"] for t in out] not in (["gpt"], ["function_call"], ["gpt", "function_call"]):
        raise ValueError("an answer is some text, a tool call, or text followed by a tool call")
    if not any(t["value"].strip() for t in out):
        raise ValueError("the answer is empty")
    return tuple(out)


def _call_json(value: str) -> str:
    try:
        call = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"the tool call is not valid JSON ({exc})") from None
    calls = call if isinstance(call, list) else [call]
    if not calls or not all(isinstance(c, dict) and isinstance(c.get("name"), str) and c["name"] for c in calls):
        raise ValueError('a tool call is {"name": "...", "arguments": {...}}, or a list of them')
    return orjson.dumps(call).decode()


class Reviews:
    """Reviews in SQLite (``reviews.db`` beside the dataset); ``postgres.PostgresReviews`` keeps them in the
    dataset's database instead, where every instance's review page shares them. Both speak the same SQL
    through ``_read`` and ``_write``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def beside(cls, dataset_dir: Path) -> Reviews:
        return cls(dataset_dir / FILE_NAME)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        with closing(sqlite3.connect(private(self.path), timeout=10.0, isolation_level=None)) as db:
            db.execute("PRAGMA busy_timeout=10000")
            if db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                db.execute("PRAGMA journal_mode=WAL")
            db.execute(_SCHEMA)
            have = {row[1] for row in db.execute("PRAGMA table_info(reviews)")}
            for name, definition in ADDED:
                if name not in have:  # a reviews.db of an earlier version
                    db.execute(f"ALTER TABLE reviews ADD COLUMN {name} {definition}")
            yield db

    def _exists(self) -> bool:
        return self.path.exists()

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._connect() as db:
            return db.execute(sql, params).fetchall()

    def _write(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """``sql`` once per row, all in one transaction."""
        with self._connect() as db, db:
            db.execute("BEGIN IMMEDIATE")
            db.executemany(sql, rows)

    # ---------------------------------------------------------------------------------- reading

    def get(self, record_id: str) -> Review:
        return self.all([record_id]).get(record_id) or Review(record_id)

    def all(self, ids: Iterable[str] | None = None) -> dict[str, Review]:
        """Every review (or those of ``ids``) by record id; records never reviewed are absent."""
        if not self._exists():  # reading creates nothing: an export on a fresh dataset leaves no trace
            return {}
        if ids is None:
            rows = self._read(f"SELECT {_COLUMNS} FROM reviews")
        else:
            wanted = list(dict.fromkeys(ids))
            rows = []
            for i in range(0, len(wanted), 500):  # SQLite caps the number of parameters of one statement
                chunk = wanted[i : i + 500]
                rows += self._read(f"SELECT {_COLUMNS} FROM reviews WHERE record IN ({','.join('?' * len(chunk))})", chunk)
        return {row[0]: _review(row) for row in rows}

    # ---------------------------------------------------------------------------------- writing

    def set_status(self, record_ids: str | Iterable[str], status: str, *, bulk: bool = False) -> int:
        """Set the status of each record; how many changed. A ``bulk`` change (a whole branch, a filter) never
        overturns a judgment made one record at a time: it accepts nothing rejected and rejects nothing accepted
        (clearing still clears)."""
        if status not in STATUSES:
            raise ValueError(f"a review status is one of {', '.join(STATUSES)}, not {status!r}")
        ids = [record_ids] if isinstance(record_ids, str) else list(record_ids)
        guard = ""
        if bulk and status != "none":
            guard = f" WHERE reviews.status IN ('none', '{status}')"
            before = {i: r.status for i, r in self.all(ids).items()}
            ids = [i for i in ids if before.get(i, "none") in ("none", status)]
        self._write("INSERT INTO reviews (record, status, updated) VALUES (?, ?, ?) ON CONFLICT (record) DO UPDATE"
                    " SET status = excluded.status, updated = excluded.updated" + guard, [(i, status, _now()) for i in ids])
        return len(ids)

    def set_answer(self, record_id: str, turns: Iterable[dict[str, Any]] | None) -> None:
        """Replace the record's answer in exports by ``turns``; None goes back to the recorded answer."""
        answer = None if turns is None else orjson.dumps(list(check_answer(turns))).decode()
        self._write("INSERT INTO reviews (record, answer, updated) VALUES (?, ?, ?) ON CONFLICT (record) DO UPDATE"
                    " SET answer = excluded.answer, updated = excluded.updated", [(record_id, answer, _now())])

    def set_note(self, record_id: str, note: str | None) -> None:
        """The reviewer's note on a record (#words in it are tags); None or blank takes it away."""
        note = note.strip() if note and note.strip() else None
        self._write("INSERT INTO reviews (record, note, updated) VALUES (?, ?, ?) ON CONFLICT (record) DO UPDATE"
                    " SET note = excluded.note, updated = excluded.updated", [(record_id, note, _now())])

    def set_turn(self, record_id: str, index: int, value: str | None) -> None:
        """What turn ``index`` of the record's conversation (a turn its client sent) should read in exports, and in every
        later turn's row that holds it; None goes back to the recorded text."""
        turns = dict(self.get(record_id).turns or {})
        if value is None:
            turns.pop(index, None)
        else:
            turns[index] = value
        text = orjson.dumps({str(k): v for k, v in sorted(turns.items())}).decode() if turns else None
        self._write("INSERT INTO reviews (record, turns, updated) VALUES (?, ?, ?) ON CONFLICT (record) DO UPDATE"
                    " SET turns = excluded.turns, updated = excluded.updated", [(record_id, text, _now())])

    def set_deleted(self, record_ids: Iterable[str], deleted: bool = True) -> int:
        """Take records out of the lists and the exports (or bring them back); the recorded files keep them."""
        ids = list(record_ids)
        self._write("INSERT INTO reviews (record, deleted, updated) VALUES (?, ?, ?) ON CONFLICT (record) DO UPDATE"
                    " SET deleted = excluded.deleted, updated = excluded.updated", [(i, int(deleted), _now()) for i in ids])
        return len(ids)

    def set_ranks(self, ranks: Mapping[str, int | None]) -> None:
        """Rank alternatives of one turn together (1 is the best; None takes a rank away)."""
        for record_id, rank in ranks.items():
            if rank is not None and (not isinstance(rank, int) or rank < 1):
                raise ValueError(f"the rank of {record_id} must be a whole number from 1, not {rank!r}")
        self._write("INSERT INTO reviews (record, rank, updated) VALUES (?, ?, ?) ON CONFLICT (record) DO UPDATE"
                    " SET rank = excluded.rank, updated = excluded.updated", [(i, r, _now()) for i, r in ranks.items()])


def review_counts(reviews: Mapping[str, Review], ids: Iterable[str]) -> dict[str, int]:
    """How many of the records ``ids`` reviewers accepted, rejected, edited and ranked."""
    mine = {i: reviews[i] for i in ids if i in reviews}.values()  # each once; no set of every id (100,000 on a big page)
    return {"accepted": sum(r.accepted for r in mine), "rejected": sum(r.rejected for r in mine),
            "edited": sum(r.answer is not None for r in mine), "ranked": sum(r.rank is not None for r in mine)}


def _review(row: tuple[Any, ...]) -> Review:
    record, status, answer, rank, updated, note, deleted, edited = row
    turns = tuple(orjson.loads(answer)) if answer else None
    return Review(record=record, status=status, answer=turns, rank=rank, updated=updated, note=note, deleted=bool(deleted),
                  turns={int(k): v for k, v in orjson.loads(edited).items()} if edited else None)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
