"""Stored responses of ``/v1/responses``: each kept for ``responses.retention`` under its id, with the key that made
it (only that key reads or deletes it). In SQLite beside the dataset, shared by the workers of one machine, or in
Redis when instances share a state; without either (no dataset folder), in this process."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from ..errors import ProxyError, StateDown
from ..state import db as statedb

if TYPE_CHECKING:
    from .redis import RedisState

T = TypeVar("T")
_PURGE_EVERY = 256  # stores between sweeps of the expired ones


class ResponseStore:
    def __init__(self, path: Path | None, retention: float, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.retention = retention
        self.clock = clock
        self.shared: RedisState | None = None
        self._db: sqlite3.Connection | None = None
        self._memory: dict[str, tuple[str, float, bytes]] = {}
        self._stores = 0

    def open(self) -> None:
        if self.path is not None:
            self._db = statedb.connect(self.path, "CREATE TABLE IF NOT EXISTS responses (id TEXT PRIMARY KEY, owner TEXT NOT NULL, "
                                       "expires REAL NOT NULL, doc BLOB NOT NULL)")

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    async def put(self, owner: str, response_id: str, doc: bytes) -> None:
        if self.shared is not None:
            await _reached(self.shared.store(response_id, owner.encode() + b"\n" + doc, self.retention))
            return
        expires = self.clock() + self.retention
        self._stores += 1
        if self._db is not None:
            with statedb.transaction(self._db) as db:
                db.execute("INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?)", (response_id, owner, expires, doc))
                if self._stores % _PURGE_EVERY == 0:
                    db.execute("DELETE FROM responses WHERE expires < ?", (self.clock(),))
            return
        self._memory[response_id] = (owner, expires, doc)
        if self._stores % _PURGE_EVERY == 0:
            now = self.clock()
            self._memory = {k: v for k, v in self._memory.items() if v[1] >= now}

    async def get(self, owner: str, response_id: str) -> bytes | None:
        """The stored document, if there is one of this id that ``owner`` made and that has not expired."""
        if self.shared is not None:
            value = await _reached(self.shared.stored(response_id))
            if value is None:
                return None
            made_by, _, doc = value.partition(b"\n")
            return doc if made_by == owner.encode() else None
        if self._db is not None:
            row = self._db.execute("SELECT doc FROM responses WHERE id = ? AND owner = ? AND expires >= ?",
                                   (response_id, owner, self.clock())).fetchone()
            return bytes(row[0]) if row else None
        kept = self._memory.get(response_id)
        return kept[2] if kept is not None and kept[0] == owner and kept[1] >= self.clock() else None

    async def delete(self, owner: str, response_id: str) -> bool:
        if await self.get(owner, response_id) is None:
            return False
        if self.shared is not None:
            return await _reached(self.shared.unstore(response_id))
        if self._db is not None:
            with statedb.transaction(self._db) as db:
                return db.execute("DELETE FROM responses WHERE id = ? AND owner = ?", (response_id, owner)).rowcount > 0
        return self._memory.pop(response_id, None) is not None


async def _reached(call: Awaitable[T]) -> T:
    """Redis's answer; while it is away, a 503 (a missing response must not look like one that was never stored)."""
    try:
        return await call
    except StateDown:
        raise ProxyError("Stored responses are kept in the shared state, which cannot be reached right now; try again "
                         "shortly.", status=503, type="server_error", code="state_unavailable") from None
