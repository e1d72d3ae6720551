"""Per-key rate limits (``auth.keys.NAME.rpm``): requests in the last sixty seconds, a sliding minute.

A request is counted when it passes; one over the limit is refused with the seconds until the oldest
counted request leaves the minute. The counts live where the bans do: in SQLite beside the dataset,
so several workers share them, or in Redis when instances share a state (``shared.py``), falling back on
this process's own counts while Redis is out of reach.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import StateDown
from ..state import db as statedb

if TYPE_CHECKING:
    from ..state.redis import RedisState

WINDOW = 60.0


class RateLimits:
    def __init__(self, path: Path | None, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.clock = clock
        self.shared: RedisState | None = None
        self._hits: dict[str, deque[float]] = {}  # without a database, or while Redis is away
        self._db: sqlite3.Connection | None = None

    def open(self) -> None:
        if self.path is None:
            return
        # Counts a power cut forgets are harmless; a sync per request is not.
        self._db = statedb.connect(self.path, "CREATE TABLE IF NOT EXISTS hits (key TEXT NOT NULL, at REAL NOT NULL)",
                                   "CREATE INDEX IF NOT EXISTS hits_key ON hits (key, at)", durable=False)

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    async def take(self, key: str, rpm: int) -> float:
        """Count a request made with ``key`` if it is within ``rpm``; else the seconds until one would be."""
        if self.shared is not None and self.shared.up:
            with contextlib.suppress(StateDown):
                return await self.shared.take(key, rpm)
        now = self.clock()
        if self._db is not None:
            return self._take_in_db(key, rpm, now)
        hits = self._hits.setdefault(key, deque())
        while hits and hits[0] <= now - WINDOW:
            hits.popleft()
        if len(hits) >= rpm:
            return max(0.001, hits[0] + WINDOW - now)
        hits.append(now)
        return 0.0

    def _take_in_db(self, key: str, rpm: int, now: float) -> float:
        assert self._db is not None
        with statedb.transaction(self._db) as db:
            db.execute("DELETE FROM hits WHERE key = ? AND at <= ?", (key, now - WINDOW))
            count, oldest = db.execute("SELECT COUNT(*), MIN(at) FROM hits WHERE key = ?", (key,)).fetchone()
            if count >= rpm:
                return float(max(0.001, oldest + WINDOW - now))
            db.execute("INSERT INTO hits VALUES (?, ?)", (key, now))
            return 0.0
