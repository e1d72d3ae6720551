"""Where a dataset lives: its records' sink (a JSONL file per session, SQLite, or PostgreSQL) and its reviews
(beside the files, or in the same PostgreSQL database). PostgreSQL's module is imported only when a config
names it: psycopg is an extra."""

from __future__ import annotations

from pathlib import Path

from .reviews import Reviews
from .sinks import JsonlSink, Sink, SqliteSink


def make_sink(kind: str, directory: Path, session: str, dsn: str | None = None) -> Sink | None:
    if kind == "jsonl":
        return JsonlSink(directory, session)
    if kind == "sqlite":
        return SqliteSink(directory, session)
    if kind == "postgres":
        from .postgres import PostgresSink

        assert dsn is not None
        return PostgresSink(dsn, directory, session)
    return None


def open_reviews(dataset_dir: Path, dsn: str | None = None) -> Reviews:
    """The reviews of a dataset: in its PostgreSQL database when it has one (``dsn``), else beside its folder."""
    if dsn is None:
        return Reviews.beside(dataset_dir)
    from .postgres import PostgresReviews

    return PostgresReviews(dsn)
