"""Which recorded exchanges go into an export and in what format, and what a dataset holds (stats).

Records come from ``Store`` (both sinks, threads made whole) with their reviews. By default an export has
one row per distinct conversation path: the records nothing continues (each holds its whole history), never
their prefixes; of the alternatives of one turn (regenerations, the n choices of a request) the one the
conversation went on with, else the latest, else any a reviewer accepted; no row written twice.
``every_turn`` writes every record instead. Reviews reach every row whose history holds the reviewed answer:
an edited answer reads as edited there too, and a rejected one cuts the conversation before it (the row
becomes the conversation up to the answer before, unless a longer row already holds that).

A record is skipped by policy (an error answer, cut short unless asked for, rejected, not accepted with
``accepted_only``, an alternative not gone on with, a prefix of a longer path) and counted as such; a record
that would break the format is left out with its id and the reason (``formats.Unfit``). Every record not
written is in ``Report.set_aside`` with its reason, for an export of what was left out. Nothing broken is
ever written. Rows are JSON Lines, every field with one type on every row, so
``datasets.load_dataset("json", data_files=...)`` loads them.

A thread here is every record linked by ``meta.parent`` or ``meta.alternative_of``, or named as one
conversation by its client (records of an older version, without ``alternative_of``, are linked by a shared
``meta.turn`` within one key, as they were then).
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
from .formats import Unfit, answer_start
from .records import scope_of
from .reviews import Review, Reviews, review_counts
from .store import Filter, Store

Converter = Callable[[dict[str, Any], Review | None, set[str]], dict[str, Any]]
CONVERTERS: dict[str, Converter] = {"sharegpt": formats.sharegpt, "openai": formats.openai, "trl": formats.trl,
                                    "alpaca": formats.alpaca}
PAIRS = {"dpo": formats.dpo, "trl-dpo": formats.trl_dpo}
FORMATS = (*CONVERTERS, *PAIRS)

# Why rows were skipped, as the report counts them.
ERROR = "error answer"
CUT_SHORT = "cut short"
REJECTED = "rejected by a reviewer"
DELETED = "deleted by a reviewer"
NOT_ACCEPTED = "not accepted by a reviewer"
PREFIX = "earlier turn of a longer conversation (in its row)"
ALTERNATIVE = "alternative answer the conversation did not go on with"
AFTER_REJECTED = "conversation going on after an answer a reviewer rejected (cut before it)"
IDENTICAL = "same row as another"
UNFIT = "would break the format"
UNRANKED = "turn whose alternatives no reviewer put in order"
CHOSEN_NOT_ACCEPTED = "pair whose better answer is not accepted"


@dataclass(frozen=True)
class Selection:
    where: Filter = field(default_factory=Filter)
    accepted_only: bool = False
    every_turn: bool = False  # a row per record, prefixes and alternatives included (the default: one per path)
    include_cut_short: bool = False


@dataclass
class Report:
    format: str
    written: int = 0
    left_out: list[tuple[str, str]] = field(default_factory=list)  # (record id, why it would break the format)
    skipped: Counter[str] = field(default_factory=Counter)  # policy reason → how many
    notes: Counter[str] = field(default_factory=Counter)  # what was merged to fit → how many rows
    set_aside: list[tuple[str, str]] = field(default_factory=list)  # (record id, why it is not in the export), every one

    def skip(self, record_id: str, why: str) -> None:
        self.skipped[why] += 1
        self.set_aside.append((record_id, why))

    def lines(self, limit: int = 50) -> list[str]:
        unit = "pair" if self.format in PAIRS else "row"
        out = [f"{self.written} {unit}{'' if self.written == 1 else 's'} in {self.format} format."]
        if self.left_out:
            n = len(self.left_out)
            out.append(f"Left out {n} {'pair' if self.format in PAIRS else 'record'}{'' if n == 1 else 's'} that would break the "
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
    first_of: dict[str, str] = {}
    for r in records:
        meta = r.get("meta") or {}
        for link in ("parent", "alternative_of"):
            if meta.get(link) in root:
                union(meta[link], r["id"])
        if meta.get("conversation"):  # the client named it: one conversation, however its history was edited
            union(first_of.setdefault("c" + scope_of(meta.get("key_name"), meta.get("user"), meta["conversation"]), r["id"]), r["id"])
        if "alternative_of" not in meta and meta.get("turn"):  # a record of an older version: alternatives by content
            union(first_of.setdefault(f"t{meta.get('key_name') or ''}\x00{meta['turn']}", r["id"]), r["id"])
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        groups[find(r["id"])].append(r)
    return {members[0]["id"]: members for members in groups.values()}


# ------------------------------------------------------------------------------------- selecting


def _usable(record: dict[str, Any], selection: Selection) -> str | None:
    """Why a record cannot be a row at all (an error, cut short), or None."""
    meta = record.get("meta") or {}
    status = meta.get("status")
    if not isinstance(status, int) or not 200 <= status < 300:
        return ERROR
    if meta.get("cut_short") and not selection.include_cut_short:
        return CUT_SHORT
    return None


def _ok(record: dict[str, Any], selection: Selection, report: Report, reviews: Mapping[str, Review] | None = None) -> bool:
    why = _usable(record, selection)
    review = reviews.get(record["id"]) if reviews is not None else None
    if why is None and review is not None and review.deleted:
        why = DELETED
    if why is not None:
        report.skip(record["id"], why)
    return why is None


def rows(records: list[dict[str, Any]], reviews: Mapping[str, Review], fmt: str,
         selection: Selection) -> tuple[list[dict[str, Any]], Report]:
    """The export's rows from linked records (``Store.linked``), with the report of what was skipped or left out."""
    if fmt not in FORMATS:
        raise ValueError(f"no export format named {fmt!r}; formats: {', '.join(FORMATS)}")
    report = Report(fmt)
    out = _pairs(records, reviews, PAIRS[fmt], selection, report) if fmt in PAIRS \
        else _rows(records, reviews, CONVERTERS[fmt], selection, report)
    report.written = len(out)
    return out, report


def _rows(records: list[dict[str, Any]], reviews: Mapping[str, Review], convert: Converter, selection: Selection,
          report: Report) -> list[dict[str, Any]]:
    by_id = {r["id"]: r for r in records}
    usable = {r["id"] for r in records if _usable(r, selection) is None and not ((v := reviews.get(r["id"])) and v.deleted)}
    children: dict[str, list[str]] = defaultdict(list)
    for r in records:
        parent = (r.get("meta") or {}).get("parent")
        if r["id"] in usable and isinstance(parent, str) and parent in by_id:
            children[parent].append(r["id"])
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)  # alternatives of one turn, by their first answer
    for r in records:
        if r["id"] in usable:
            groups[alternatives_of(r)].append(r)
    chosen: dict[str, str] = {}  # record to export → the record it stands for (itself, or a leaf cut before a rejection)
    for record in records:
        rid = record["id"]
        if not _ok(record, selection, report, reviews):
            continue
        review = reviews.get(rid)
        if review is not None and review.rejected:
            report.skip(rid, REJECTED)
            continue
        if not selection.every_turn:
            if children.get(rid):
                report.skip(rid, PREFIX)
                continue
            if not _kept_alternative(record, groups[alternatives_of(record)], children, reviews):
                report.skip(rid, ALTERNATIVE)
                continue
        # A rejected answer earlier in the history cuts the conversation before it.
        at = _rejected_ancestor(record, by_id, reviews)
        while at is not None:
            report.skip(rid, AFTER_REJECTED)
            parent = (by_id[at].get("meta") or {}).get("parent")
            if parent not in by_id or parent not in usable:
                break
            rid = parent
            at = _rejected_ancestor(by_id[rid], by_id, reviews)
        else:
            chosen.setdefault(rid, record["id"])
    if not selection.every_turn:
        # A conversation cut short of a rejected answer may be the beginning of a row already written.
        ancestors = {a for rid in chosen for a in _ancestors(by_id[rid], by_id)}
        for rid in [r for r in chosen if r in ancestors]:
            del chosen[rid]
    out = []
    seen: set[bytes] = set()
    for rid in chosen:
        record = by_id[rid]
        review = reviews.get(rid)
        if selection.accepted_only and (review is None or not review.accepted):
            report.skip(rid, NOT_ACCEPTED)
            continue
        notes: set[str] = set()
        try:
            row = convert(_with_history_reviewed(record, by_id, reviews), review, notes)
        except Unfit as exc:
            report.left_out.append((rid, str(exc)))
            report.set_aside.append((rid, f"{UNFIT}: {exc}"))
            continue
        same = orjson.dumps({k: v for k, v in row.items() if k != "id"}, option=orjson.OPT_SORT_KEYS)
        if same in seen:
            report.skip(rid, IDENTICAL)
            continue
        seen.add(same)
        out.append(row)
        report.notes.update(notes)
    return out


def _ancestors(record: dict[str, Any], by_id: Mapping[str, dict[str, Any]]) -> list[str]:
    """The ids of the records ``record`` continues, nearest first."""
    out: list[str] = []
    parent = (record.get("meta") or {}).get("parent")
    while isinstance(parent, str) and parent in by_id and parent not in out:
        out.append(parent)
        parent = (by_id[parent].get("meta") or {}).get("parent")
    return out


def _rejected_ancestor(record: dict[str, Any], by_id: Mapping[str, dict[str, Any]], reviews: Mapping[str, Review]) -> str | None:
    """The earliest answer in the record's history a reviewer rejected (or deleted), if any."""
    rejected = [a for a in _ancestors(record, by_id) if (r := reviews.get(a)) is not None and (r.rejected or r.deleted)]
    return rejected[-1] if rejected else None


def alternatives_of(record: dict[str, Any]) -> str:
    """Which answers are alternatives of one turn: those that name the same first answer (``meta.alternative_of``, or
    the record itself); records of an older version, which name none, by their turn within one key."""
    meta = record.get("meta") or {}
    if "alternative_of" not in meta and meta.get("turn"):
        return f"{meta.get('key_name') or ''}\x00{meta['turn']}"
    return str(meta.get("alternative_of") or record["id"])


def _kept_alternative(record: dict[str, Any], members: list[dict[str, Any]], children: Mapping[str, list[str]],
                      reviews: Mapping[str, Review]) -> bool:
    """Whether a record nothing continues is the answer its turn kept: of its alternatives (``members``), the one the
    conversation went on with, else the latest; one a reviewer accepted always is. (An alternative not kept feeds
    preference pairs.)"""
    if len(members) < 2:
        return True
    review = reviews.get(record["id"])
    if review is not None and review.accepted:
        return True
    if any(children.get(m["id"]) for m in members):
        return False
    return record is max(members, key=lambda r: str((r.get("meta") or {}).get("created") or ""))


def _with_history_reviewed(record: dict[str, Any], by_id: Mapping[str, dict[str, Any]], reviews: Mapping[str, Review]) -> dict[str, Any]:
    """The record as its row tells it: the whole conversation (where the client slid its window and sent only the
    latest turns, the turns it dropped are taken from the records before), every edited turn and answer of its history
    reading as edited (the client sent them as recorded)."""
    turns, start = _whole(record, by_id, set())
    end = start
    for owner in (record["id"], *_ancestors(record, by_id)):  # turns a client sent, edited where they were first sent
        review = reviews.get(owner)
        for index, text in sorted((review.turns or {}).items()) if review is not None else ():
            sent = (by_id[owner].get("conversations") or [])
            if index >= answer_start(by_id[owner]) or index >= len(sent):
                continue
            original = sent[index]
            at = index if index < end and _find(turns[index : index + 1], [original]) == 0 else _find(turns[:end], [original])
            if at is not None:
                turns[at] = {"from": original["from"], "value": text}
    for ancestor in _ancestors(record, by_id):
        review = reviews.get(ancestor)
        if review is None or review.answer is None:
            continue
        original = (by_id[ancestor].get("conversations") or [])[answer_start(by_id[ancestor]):]
        at = _find(turns[:end], original)
        if at is not None:
            turns[at : at + len(original)] = [dict(t) for t in review.answer]
            end += len(review.answer) - len(original)
    if turns == record.get("conversations"):
        return record
    return {**record, "conversations": turns, "answer_turns": len(turns) - end}


def _whole(record: dict[str, Any], by_id: Mapping[str, dict[str, Any]], seen: set[str]) -> tuple[list[dict[str, Any]], int]:
    """The record's conversation with what a sliding window dropped put back, and where its answer starts."""
    turns = list(record.get("conversations") or [])
    start = answer_start(record)
    parent_id = (record.get("meta") or {}).get("parent")
    if not isinstance(parent_id, str) or parent_id not in by_id or parent_id in seen:
        return turns, start
    parent = by_id[parent_id]
    before = list(parent.get("conversations") or [])
    if turns[: len(before)] == before:
        return turns, start  # the history holds the parent's whole conversation: nothing was dropped
    answer = before[answer_start(parent):]
    at = _find(turns[:start], answer)
    if at is None:
        return turns, start
    whole, _ = _whole(parent, by_id, seen | {record["id"]})
    new = turns[at + len(answer):]
    return whole + new, len(whole) + (start - at - len(answer))


def _find(turns: list[dict[str, Any]], part: list[dict[str, Any]]) -> int | None:
    """Where ``part`` last appears in ``turns`` (values compared without the spaces clients trim), or None."""
    def same(a: dict[str, Any], b: dict[str, Any]) -> bool:
        return a.get("from") == b.get("from") and str(a.get("value", "")).strip() == str(b.get("value", "")).strip()

    for i in range(len(turns) - len(part), -1, -1):
        if part and all(same(turns[i + k], part[k]) for k in range(len(part))):
            return i
    return None


def above(a: Review | None, b: Review | None) -> bool:
    """Whether a reviewer put answer ``a`` above ``b``: a better (lower) rank, or accepted over rejected."""
    if a is None or b is None:
        return False
    if a.rank is not None and b.rank is not None:
        return a.rank < b.rank
    return a.accepted and b.rejected


def _pairs(records: list[dict[str, Any]], reviews: Mapping[str, Review], pair: Callable[..., dict[str, Any]], selection: Selection,
           report: Report) -> list[dict[str, Any]]:
    """Preference pairs: every two alternatives of one turn that a reviewer put in order."""
    by_turn: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        if _ok(record, selection, report, reviews):
            by_turn[alternatives_of(record)].append(record)
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
                out.append(pair((better, chosen), (worse, rejected), notes))
            except Unfit as exc:
                report.left_out.append((f"{better['id']} over {worse['id']}", str(exc)))
                continue
            report.notes.update(notes)
    return out


def export(store: Store, reviews: Reviews, fmt: str, selection: Selection) -> tuple[list[dict[str, Any]], Report]:
    records = store.linked(selection.where)
    return rows(records, reviews.all(), fmt, selection)


def set_aside_rows(store: Store, report: Report, selection: Selection) -> list[dict[str, Any]]:
    """The records an export did not write, each as ``{id, reason, record}`` (a record set aside for several reasons
    gives one row with the first)."""
    why: dict[str, str] = {}
    for rid, reason in report.set_aside:
        if reason not in (PREFIX, IDENTICAL):  # their text is in the export, in a longer or an equal row
            why.setdefault(rid, reason)
    return [{"id": r["id"], "reason": why[r["id"]], "record": r} for r in store.records(selection.where) if r["id"] in why]


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
    groups: Counter[str] = Counter()
    tokens = {"prompt": 0, "completion": 0, "total": 0}
    counted_requests: set[str] = set()
    cut_short = 0
    created = []
    for record in records:
        meta = record.get("meta") or {}
        sessions[str(record.get("session"))] += 1
        targets[str(meta.get("target"))] += 1
        statuses[str(meta.get("status"))] += 1
        groups[alternatives_of(record)] += 1
        cut_short += bool(meta.get("cut_short"))
        if meta.get("created"):
            created.append(str(meta["created"]))
        usage, request = meta.get("usage"), meta.get("request_id") or record["id"]
        if isinstance(usage, dict) and request not in counted_requests:
            counted_requests.add(request)
            for key in tokens:
                value = usage.get(f"{key}_tokens")
                tokens[key] += value if isinstance(value, int) else 0
    return {
        "records": len(records),
        "sessions": dict(sorted(sessions.items())),
        "targets": dict(sorted(targets.items())),
        "statuses": dict(sorted(statuses.items())),
        "threads": len(threads(records)),
        "turns_with_alternatives": sum(1 for n in groups.values() if n > 1),
        "cut_short": cut_short,
        **review_counts(reviews, (r["id"] for r in records)),
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
