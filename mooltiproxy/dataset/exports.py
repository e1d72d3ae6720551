"""Which recorded exchanges go into an export and in what format, and what a dataset holds (stats).

Records come from ``Store`` (both sinks, threads relinked from content) with their reviews. A record is
skipped by policy (an error answer, cut short unless asked for, rejected by a reviewer, not accepted
with ``accepted_only``, a shorter branch with ``dedupe``) and counted as such; a record that would break
the format is left out and reported with its id and the reason (``formats.Unfit``). Nothing broken is
ever written. Rows are JSON Lines, every field with one type on every row, so
``datasets.load_dataset("json", data_files=...)`` loads them.

A thread here is every record linked by ``meta.parent`` or sharing a ``meta.turn`` (alternatives of one
turn: regenerations and the n choices of a request; so a regenerated first message, which the capture
starts a new ``meta.thread`` for, belongs to the same thread). ``dedupe`` keeps one record per thread:
the longest (each record holds its whole history, so the longest one is the branch).
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from . import formats
from .formats import Unfit
from .reviews import Review, Reviews
from .store import Filter, Store

Converter = Callable[[dict[str, Any], Review | None, set[str]], dict[str, Any]]
CONVERTERS: dict[str, Converter] = {"sharegpt": formats.sharegpt, "openai": formats.openai, "alpaca": formats.alpaca}
FORMATS = (*CONVERTERS, "dpo")

# Why rows were skipped, as the report counts them.
ERROR = "error answer"
CUT_SHORT = "cut short"
REJECTED = "rejected by a reviewer"
NOT_ACCEPTED = "not accepted by a reviewer"
SHORTER = "shorter branch of a thread (dedupe)"
UNRANKED = "turn whose alternatives no reviewer put in order"
CHOSEN_NOT_ACCEPTED = "pair whose better answer is not accepted"


@dataclass(frozen=True)
class Selection:
    where: Filter = field(default_factory=Filter)
    accepted_only: bool = False
    dedupe: bool = False
    include_cut_short: bool = False


@dataclass
class Report:
    format: str
    written: int = 0
    left_out: list[tuple[str, str]] = field(default_factory=list)  # (record id, why it would break the format)
    skipped: Counter[str] = field(default_factory=Counter)  # policy reason → how many
    notes: Counter[str] = field(default_factory=Counter)  # what was merged to fit → how many rows

    def lines(self, limit: int = 50) -> list[str]:
        unit = "pair" if self.format == "dpo" else "row"
        out = [f"{self.written} {unit}{'' if self.written == 1 else 's'} in {self.format} format."]
        if self.left_out:
            n = len(self.left_out)
            out.append(f"Left out {n} {'pair' if self.format == 'dpo' else 'record'}{'' if n == 1 else 's'} that would break the "
                       f"{self.format} format:")
            out += [f"  {rid}: {why}" for rid, why in self.left_out[:limit]]
            if len(self.left_out) > limit:
                out.append(f"  … and {len(self.left_out) - limit} more")
        if self.skipped:
            out.append("Skipped — " + "; ".join(f"{why}: {n}" for why, n in sorted(self.skipped.items())) + ".")
        for note, n in sorted(self.notes.items()):
            out.append(f"In {n} {unit}{'' if n == 1 else 's'}: {note}.")
        return out


# ------------------------------------------------------------------------------------- threads


def threads(records: Iterable[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Records (in time order) grouped into threads (see the module's docstring), keyed by the id of each one's earliest record."""
    records = list(records)
    root: dict[str, str] = {}

    def find(x: str) -> str:
        while root[x] != x:
            root[x] = root[root[x]]
            x = root[x]
        return x

    def union(a: str, b: str) -> None:
        ra, rb = find(a), find(b)
        if ra != rb:
            root[rb] = ra

    for r in records:
        root[r["id"]] = r["id"]
    first_of_turn: dict[str, str] = {}
    for r in records:
        meta = r.get("meta") or {}
        if meta.get("parent") in root:
            union(meta["parent"], r["id"])
        turn = meta.get("turn")
        if turn:  # alternatives of one turn: the same history, sent with the same key (strangers' turns stay apart)
            union(first_of_turn.setdefault(f"{meta.get('key_name') or ''}\x00{turn}", r["id"]), r["id"])
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        groups[find(r["id"])].append(r)
    return {members[0]["id"]: members for members in groups.values()}


def _length(record: dict[str, Any]) -> tuple[int, str, str]:
    return len(record.get("conversations") or ()), str((record.get("meta") or {}).get("created") or ""), record["id"]


def longest(records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The record holding the longest branch (ties: the latest)."""
    return max(records, key=_length)


# ------------------------------------------------------------------------------------- selecting


def _ok(record: dict[str, Any], selection: Selection, report: Report) -> bool:
    meta = record.get("meta") or {}
    status = meta.get("status")
    if not isinstance(status, int) or not 200 <= status < 300:
        report.skipped[ERROR] += 1
        return False
    if meta.get("cut_short") and not selection.include_cut_short:
        report.skipped[CUT_SHORT] += 1
        return False
    return True


def rows(records: list[dict[str, Any]], reviews: Mapping[str, Review], fmt: str,
         selection: Selection) -> tuple[list[dict[str, Any]], Report]:
    """The export's rows from linked records (``Store.linked``), with the report of what was skipped or left out."""
    if fmt not in FORMATS:
        raise ValueError(f"no export format named {fmt!r}; formats: {', '.join(FORMATS)}")
    report = Report(fmt)
    out = _pairs(records, reviews, selection, report) if fmt == "dpo" else _rows(records, reviews, CONVERTERS[fmt], selection, report)
    report.written = len(out)
    return out, report


def _rows(records: list[dict[str, Any]], reviews: Mapping[str, Review], convert: Converter, selection: Selection,
          report: Report) -> list[dict[str, Any]]:
    kept = []
    for record in records:
        review = reviews.get(record["id"])
        if not _ok(record, selection, report):
            continue
        if review is not None and review.rejected:
            report.skipped[REJECTED] += 1
        elif selection.accepted_only and (review is None or not review.accepted):
            report.skipped[NOT_ACCEPTED] += 1
        else:
            kept.append(record)
    if selection.dedupe:
        kept_ids = {r["id"] for r in kept}
        best = set()
        for members in threads(records).values():  # all records: a skipped one still links its neighbours
            candidates = [r for r in members if r["id"] in kept_ids]
            if candidates:
                best.add(longest(candidates)["id"])
        report.skipped[SHORTER] += len(kept) - len(best)
        kept = [r for r in kept if r["id"] in best]
        if not report.skipped[SHORTER]:
            del report.skipped[SHORTER]
    out = []
    for record in kept:
        notes: set[str] = set()
        try:
            out.append(convert(record, reviews.get(record["id"]), notes))
        except Unfit as exc:
            report.left_out.append((record["id"], str(exc)))
            continue
        report.notes.update(notes)
    return out


def above(a: Review | None, b: Review | None) -> bool:
    """Whether a reviewer put answer ``a`` above ``b``: a better (lower) rank, or accepted over rejected."""
    if a is None or b is None:
        return False
    if a.rank is not None and b.rank is not None:
        return a.rank < b.rank
    return a.accepted and b.rejected


def _pairs(records: list[dict[str, Any]], reviews: Mapping[str, Review], selection: Selection, report: Report) -> list[dict[str, Any]]:
    """Preference pairs: every two alternatives of one turn that a reviewer put in order."""
    by_turn: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        turn = (record.get("meta") or {}).get("turn")
        if turn and _ok(record, selection, report):
            by_turn[turn].append(record)
    out = []
    for alternatives in by_turn.values():
        if len(alternatives) < 2:
            continue
        pairs = [(a, b) for a in alternatives for b in alternatives if a is not b and above(reviews.get(a["id"]), reviews.get(b["id"]))]
        if not pairs:
            report.skipped[UNRANKED] += 1
        for better, worse in pairs:
            chosen, rejected = reviews.get(better["id"]), reviews.get(worse["id"])
            if selection.accepted_only and (chosen is None or not chosen.accepted):
                report.skipped[CHOSEN_NOT_ACCEPTED] += 1
                continue
            notes: set[str] = set()
            try:
                out.append(formats.dpo((better, chosen), (worse, rejected), notes))
            except Unfit as exc:
                report.left_out.append((f"{better['id']} over {worse['id']}", str(exc)))
                continue
            report.notes.update(notes)
    return out


def export(store: Store, reviews: Reviews, fmt: str, selection: Selection) -> tuple[list[dict[str, Any]], Report]:
    records = store.linked(selection.where)
    return rows(records, reviews.all(), fmt, selection)


def dump(out: Iterable[dict[str, Any]]) -> bytes:
    return b"".join(orjson.dumps(row) + b"\n" for row in out)


def write(path: Path, out: Iterable[dict[str, Any]]) -> None:
    """Write the rows to ``path`` whole or not at all (a temporary file renamed over it)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(dump(out))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------- stats


def stats(records: list[dict[str, Any]], reviews: Mapping[str, Review]) -> dict[str, Any]:
    """What the dataset holds: records per session, target and HTTP status; threads, turns with
    alternatives, cut-short records, reviews, and tokens (once per request: n choices share one usage)."""
    sessions: Counter[str] = Counter()
    targets: Counter[str] = Counter()
    statuses: Counter[str] = Counter()
    turns: Counter[str] = Counter()
    tokens = {"prompt": 0, "completion": 0, "total": 0}
    counted_requests: set[str] = set()
    cut_short = 0
    created = []
    for record in records:
        meta = record.get("meta") or {}
        sessions[str(record.get("session"))] += 1
        targets[str(meta.get("target"))] += 1
        statuses[str(meta.get("status"))] += 1
        if meta.get("turn"):
            turns[meta["turn"]] += 1
        cut_short += bool(meta.get("cut_short"))
        if meta.get("created"):
            created.append(str(meta["created"]))
        usage, request = meta.get("usage"), meta.get("request_id") or record["id"]
        if isinstance(usage, dict) and request not in counted_requests:
            counted_requests.add(request)
            for key in tokens:
                value = usage.get(f"{key}_tokens")
                tokens[key] += value if isinstance(value, int) else 0
    ids = {r["id"] for r in records}
    mine = [reviews[i] for i in ids if i in reviews]
    return {
        "records": len(records),
        "sessions": dict(sorted(sessions.items())),
        "targets": dict(sorted(targets.items())),
        "statuses": dict(sorted(statuses.items())),
        "threads": len(threads(records)),
        "turns_with_alternatives": sum(1 for n in turns.values() if n > 1),
        "cut_short": cut_short,
        "accepted": sum(r.accepted for r in mine),
        "rejected": sum(r.rejected for r in mine),
        "edited": sum(r.answer is not None for r in mine),
        "ranked": sum(r.rank is not None for r in mine),
        "tokens": tokens,
        "first": min(created, default=None),
        "last": max(created, default=None),
    }


def stats_lines(s: dict[str, Any]) -> list[str]:
    def counts(d: dict[str, int]) -> str:
        return ", ".join(f"{k} {v}" for k, v in d.items()) or "none"

    t = s["tokens"]
    return [
        f"records: {s['records']}" + (f" ({s['first']} to {s['last']})" if s["first"] else ""),
        f"sessions: {counts(s['sessions'])}",
        f"targets: {counts(s['targets'])}",
        f"HTTP statuses: {counts(s['statuses'])}",
        f"threads: {s['threads']}",
        f"turns with alternatives: {s['turns_with_alternatives']}",
        f"cut short: {s['cut_short']}",
        f"reviews: {s['accepted']} accepted, {s['rejected']} rejected, {s['edited']} edited, {s['ranked']} ranked",
        f"tokens: {t['prompt']} prompt, {t['completion']} completion, {t['total']} total",
    ]
