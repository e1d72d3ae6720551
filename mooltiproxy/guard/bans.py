"""The ban ledger: failed key attempts per address, and bans that outlive a restart.

``max_failures`` failures from one address within ``window`` seconds ban it for ``ban`` seconds. A
failure counts from the moment it happens and drops out of the count ``window`` seconds later; a
success erases nothing. Whitelisted networks are never banned.

Failures and bans live in SQLite (``state.db`` beside the dataset), so a restart keeps the bans and
several workers share them: failures are counted across workers, and a ban one worker records is
enforced by the others on their next request. A worker that changes the bans writes a new random stamp
into ``state.stamp``, a tiny memory-mapped file; every request compares it with the stamp it last saw
(one read from memory) and rereads the bans when it differs. The hot path otherwise reads a dictionary.

With a shared state (``state: redis://…``, see ``shared.py``) Redis holds failures and bans instead, for
every instance; the ledger counts a failure there, mirrors the bans in memory, and falls back on its own
in-memory counts while Redis is out of reach, remembering the bans it gave meanwhile to copy them over.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import logging
import mmap
import os
import sqlite3
import struct
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..state.redis import RedisState

from ..errors import StateDown
from ..state import db as statedb

log = logging.getLogger("mooltiproxy.guard")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@functools.lru_cache(maxsize=4096)
def normalize(address: str) -> str:
    """One spelling per address: IPv6 compressed, IPv4-mapped IPv6 as IPv4; anything else unchanged."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


@functools.lru_cache(maxsize=4096)
def in_networks(address: str, networks: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip.version == net.version and ip in net for net in networks)


def is_loopback(address: str) -> bool:
    """``127.0.0.1``, ``::1``, ``localhost`` and the like (an address's text, brackets allowed)."""
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Ban:
    address: str
    until: float  # wall-clock time
    failures: int

    def left(self, now: float | None = None) -> float:
        return max(0.0, self.until - (time.time() if now is None else now))


class BanLedger:
    def __init__(
        self,
        path: Path | None,
        *,
        max_failures: int,
        window: float,
        ban: float,
        whitelist: Iterable[Network] = (),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self.max_failures = max_failures
        self.window = window
        self.ban_seconds = ban
        self.whitelist = tuple(whitelist)
        self.clock = clock
        self._bans: dict[str, Ban] = {}
        self._failures: dict[str, deque[float]] = {}  # only without a database
        self._db: sqlite3.Connection | None = None
        self._stamp: mmap.mmap | None = None
        self._seen = b""
        self.shared: RedisState | None = None  # set when instances share a Redis; then ``path`` is None
        self._unshared: set[str] = set()  # bans given while Redis was out of reach

    def configure(self, *, max_failures: int, window: float, ban: float, whitelist: Iterable[Network]) -> None:
        """New rules from a reloaded config; bans already given keep their end."""
        self.max_failures, self.window, self.ban_seconds, self.whitelist = max_failures, window, ban, tuple(whitelist)

    def open(self) -> None:
        if self.path is None:
            return
        self._db = statedb.connect(
            self.path,
            "CREATE TABLE IF NOT EXISTS bans (address TEXT PRIMARY KEY, until REAL NOT NULL, failures INTEGER NOT NULL)",
            "CREATE TABLE IF NOT EXISTS failures (address TEXT NOT NULL, at REAL NOT NULL)",
            "CREATE INDEX IF NOT EXISTS failures_address ON failures (address, at)",
        )
        self._db.execute("DELETE FROM bans WHERE until <= ?", (self.clock(),))
        stamp = self.path.with_name("state.stamp")
        fd = os.open(stamp, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size < 8:
                os.ftruncate(fd, 8)
            self._stamp = mmap.mmap(fd, 8)
        finally:
            os.close(fd)
        self._reread()
        if self._bans:
            log.info("%d ban(s) carried over from %s", len(self._bans), self.path)

    def _reread(self) -> None:
        assert self._db is not None
        if self._stamp is not None:
            self._seen = self._stamp[:8]
        self._bans = {a: Ban(a, until, n) for a, until, n in self._db.execute("SELECT address, until, failures FROM bans")}

    def _sync(self) -> None:
        """Pick up what other workers changed since we last looked."""
        if self._stamp is not None and self._stamp[:8] != self._seen:
            self._reread()

    def _changed(self) -> None:
        """Tell the other workers the bans changed: a new stamp. Then reread, so that a change another
        worker stamped a moment before (and this stamp overwrote) is not missed here."""
        if self._stamp is not None:
            self._stamp[:8] = struct.pack("<Q", int.from_bytes(os.urandom(8), "little") | 1)
            self._reread()

    def close(self) -> None:
        if self._stamp is not None:
            self._stamp.close()
            self._stamp = None
        if self._db is not None:
            self._db.close()
            self._db = None

    def ban_of(self, address: str) -> Ban | None:
        """The address's ban while it lasts."""
        return self._bans.get(address) if self.banned_for(address) else None

    def banned_for(self, address: str) -> float:
        """Seconds left on this address's ban; 0 when it is not banned."""
        self._sync()
        ban = self._bans.get(address)
        if ban is None:
            return 0.0
        left = ban.left(self.clock())
        if left <= 0:
            self._forget(address)
        return left

    async def fail(self, address: str) -> float:
        """Count a failed attempt; the ban's length when this one tips the address over, else 0."""
        if in_networks(address, self.whitelist):
            return 0.0
        if self.shared is not None and self.shared.up:
            try:
                ban = await self.shared.count_failure(address, window=self.window, max_failures=self.max_failures, ban=self.ban_seconds)
            except StateDown:
                pass  # counted here instead, below
            else:
                if ban is None:
                    return 0.0
                if address not in self._bans:
                    self._announce(ban)
                self._bans[address] = ban
                return ban.left(self.clock())
        now = self.clock()
        count = self._count_failure(address, now)
        if count < self.max_failures:
            return 0.0
        ban = Ban(address, now + self.ban_seconds, count)
        self._bans[address] = ban
        if self._db is not None:
            with self._transaction() as db:
                db.execute("INSERT OR REPLACE INTO bans VALUES (?, ?, ?)", (ban.address, ban.until, ban.failures))
                db.execute("DELETE FROM failures WHERE address = ?", (address,))
            self._changed()
        else:
            self._failures.pop(address, None)
            if self.shared is not None:
                self._unshared.add(address)
        self._announce(ban)
        return self.ban_seconds

    def _announce(self, ban: Ban) -> None:
        log.warning("banned %s for %g s after %d failed key attempts within %g s", ban.address, round(ban.left(self.clock())),
                    ban.failures, self.window)

    def _count_failure(self, address: str, now: float) -> int:
        """Note one failure; how many this address has within the window, across every worker."""
        if self._db is None:
            attempts = self._failures.setdefault(address, deque())
            attempts.append(now)
            while attempts and attempts[0] <= now - self.window:
                attempts.popleft()
            if len(self._failures) > 10_000:
                self._sweep(now)
            return len(attempts)
        with self._transaction() as db:
            db.execute("DELETE FROM failures WHERE at <= ?", (now - self.window,))  # counts decay
            db.execute("INSERT INTO failures VALUES (?, ?)", (address, now))
            return int(db.execute("SELECT COUNT(*) FROM failures WHERE address = ?", (address,)).fetchone()[0])

    def _transaction(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        assert self._db is not None
        return statedb.transaction(self._db)

    def bans(self) -> list[Ban]:
        self._sync()
        now = self.clock()
        for address in [a for a, b in self._bans.items() if b.until <= now]:
            self._forget(address)
        return sorted(self._bans.values(), key=lambda b: b.until)

    async def unban(self, address: str) -> bool:
        self._sync()
        address = normalize(address)
        self._failures.pop(address, None)
        self._unshared.discard(address)
        known = address in self._bans
        if self.shared is not None:
            with contextlib.suppress(StateDown):  # out of reach: lifted here only
                known = await self.shared.unban(address) or known
        if self._db is not None:
            self._db.execute("DELETE FROM failures WHERE address = ?", (address,))
        if not known:
            return False
        self._forget(address)
        log.warning("unbanned %s", address)
        return True

    # The mirror of a shared state's bans, kept current by its events.

    def mirror(self, ban: Ban) -> None:
        if ban.address not in self._bans:
            log.warning("banned %s for %g s (by another instance) after %d failed key attempts", ban.address,
                        round(ban.left(self.clock())), ban.failures)
        self._bans[ban.address] = ban

    def mirror_unban(self, address: str) -> None:
        self._failures.pop(address, None)
        self._unshared.discard(address)
        self._bans.pop(address, None)

    def mirror_all(self, bans: Iterable[Ban], copied: Iterable[str]) -> None:
        """Every ban the shared state holds, now that it is reachable again, with ``copied`` the unshared bans
        just copied into it. One given here in the meantime stays, to be copied the next time."""
        left = self._unshared - set(copied)
        self._bans = {**{b.address: b for b in bans}, **{a: self._bans[a] for a in left if a in self._bans}}
        self._unshared = left
        self._failures.clear()

    def unshared(self) -> list[Ban]:
        """Bans given while the shared state was out of reach, still running."""
        return [self._bans[a] for a in self._unshared if a in self._bans]

    def _forget(self, address: str) -> None:
        self._bans.pop(address, None)
        if self._db is not None:
            self._db.execute("DELETE FROM bans WHERE address = ?", (address,))
            self._changed()

    def _sweep(self, now: float) -> None:
        """Drop addresses whose failures have all aged out, so a spray of addresses cannot grow memory."""
        for address in [a for a, q in self._failures.items() if not q or q[-1] <= now - self.window]:
            del self._failures[address]
