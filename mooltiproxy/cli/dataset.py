"""The ``mooltiproxy dataset`` command: ``stats`` on the recorded dataset, ``export`` it in a training format."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from ..dataset import exports
from ..dataset.places import open_reviews
from ..dataset.reviews import Reviews
from ..dataset.store import Filter, Store
from ..state.settings import load


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    dataset = subparsers.add_parser("dataset", help="look at the recorded dataset and export it for training")
    sub = dataset.add_subparsers(dest="dataset_command", required=True, metavar="SUBCOMMAND")

    stats = sub.add_parser("stats", help="count records per session, target and status; threads, alternatives, reviews, tokens")
    _common(stats)
    stats.add_argument("--json", action="store_true", help="print the numbers as JSON")
    stats.set_defaults(run=_stats)

    export = sub.add_parser("export", help="write the dataset as JSON Lines in a training format")
    _common(export)
    export.add_argument("--format", "-f", required=True, choices=exports.FORMATS,
                        help="sharegpt (LLaMA-Factory), openai (OpenAI fine-tuning), trl (TRL's SFT, axolotl's chat_template), "
                             "alpaca, dpo (LLaMA-Factory's pairs of ranked alternatives), trl-dpo (TRL's DPO)")
    export.add_argument("--out", "-o", required=True, help="the file to write ('-' for standard output)")
    export.add_argument("--accepted-only", action="store_true", help="only records a reviewer accepted (dpo: pairs whose better answer is)")
    export.add_argument("--every-turn", action="store_true",
                        help="a row per recorded answer, each earlier turn and every alternative included (by default: a row per "
                             "conversation path)")
    export.add_argument("--dedupe", action="store_true", help=argparse.SUPPRESS)  # what the default does now
    export.add_argument("--include-cut-short", action="store_true", help="keep records whose stream was cut short (left out by default)")
    export.add_argument("--left-out", metavar="FILE",
                        help="also write every record not exported, with the reason, as JSON Lines: {id, reason, record}")
    export.set_defaults(run=_export)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", type=Path, help="config file whose dataset to read: dataset.dir, and its PostgreSQL database "
                   "when dataset.sink is postgres (default: ./config.yaml if present)")
    p.add_argument("--dir", type=Path, help="the dataset folder itself, instead of the config's dataset.dir")
    p.add_argument("--session", action="append", default=[], metavar="S", help="only this session (repeat for several)")
    p.add_argument("--target", action="append", default=[], metavar="T", help="only this target (repeat for several)")
    p.add_argument("--since", type=_moment, metavar="DATE", help="only records created at or after this UTC date or time (2026-11-21)")
    p.add_argument("--until", type=_moment, metavar="DATE", help="only records created up to this UTC date or time, inclusive")


def _moment(value: str) -> str:
    """An ISO date or time as the records write it (compared as text with ``meta.created``)."""
    text = value.strip().replace(" ", "T")
    try:
        datetime.fromisoformat(text.removesuffix("Z"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a date (2026-11-21) or a time (2026-11-21T10:00)") from None
    return text.removesuffix("Z")


def _store(args: argparse.Namespace) -> tuple[Store, Reviews] | None:
    """The records and reviews to read: the folder (``--dir``, else the config's dataset.dir) and, when the config
    records to PostgreSQL, its database too (where the reviews are then kept)."""
    dsn = None
    if args.dir is not None:
        folder: Path = args.dir
    else:
        dataset = load(args.config).dataset
        folder, dsn = dataset.dir, (dataset.dsn if dataset.sink == "postgres" else None)
    if dsn is None and not folder.is_dir():
        print(f"There is no dataset at {folder}: the folder does not exist (dataset.dir, or --dir).", file=sys.stderr)
        return None
    return Store(folder, dsn=dsn), open_reviews(folder, dsn)


def _where(args: argparse.Namespace) -> Filter:
    return Filter(sessions=tuple(args.session), targets=tuple(args.target), since=args.since, until=args.until)


def _stats(args: argparse.Namespace) -> int:
    found = _store(args)
    if found is None:
        return 1
    store, reviews = found
    records = store.linked(_where(args))
    numbers = exports.stats(records, reviews.all())
    if args.json:
        print(json.dumps(numbers, indent=2, ensure_ascii=False))
    else:
        print("\n".join(exports.stats_lines(numbers)))
    return 0


def _export(args: argparse.Namespace) -> int:
    found = _store(args)
    if found is None:
        return 1
    store, reviews = found
    if args.dedupe:
        print("--dedupe is what an export does by default now (a row per conversation path); it can be left out.", file=sys.stderr)
    selection = exports.Selection(where=_where(args), accepted_only=args.accepted_only, every_turn=args.every_turn,
                                  include_cut_short=args.include_cut_short)
    rows, report = exports.export(store, reviews, args.format, selection)
    if not _write(args.out, rows):
        return 1
    left = exports.set_aside_rows(store, report, selection) if args.left_out else []
    if args.left_out and not _write(args.left_out, left):
        return 1
    lines = report.lines()
    lines[0] = lines[0].rstrip(".") + f", written to {'standard output' if args.out == '-' else args.out}."
    if report.skipped.get(exports.CUT_SHORT):
        lines.append("(Add --include-cut-short to keep records cut short.)")
    if args.left_out:
        lines.append(f"{len(left)} record(s) not exported, each with the reason, written to {args.left_out}.")
    print("\n".join(lines), file=sys.stderr)
    return 0


def _write(out: str, rows: list[dict[str, Any]]) -> bool:
    if out == "-":
        sys.stdout.buffer.write(exports.dump(rows))
        sys.stdout.flush()
        return True
    try:
        exports.write(Path(out), rows)
    except OSError as exc:
        print(f"Cannot write {out}: {exc.strerror or exc}.", file=sys.stderr)
        return False
    return True
