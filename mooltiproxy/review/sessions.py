"""The review page's browser session: a signed, expiring cookie in place of the key, and CSRF tokens.

The session cookie holds an expiry time and a random nonce, signed with HMAC-SHA256 under a key derived
from the master key (never the key itself, which no cookie carries): changing the master key, by a
restart or a config reload, ends every session and every login with the old key; a logout ends its own
session everywhere (``EndedSessions``). The cookie is
HttpOnly, SameSite=Strict, limited to /ui, and Secure over HTTPS. A form that changes something carries
a CSRF token derived from the session cookie. The login form carries a token tied to a short-lived
cookie of its own, so another site cannot make a visitor's browser post wrong keys (each of which
counts toward a ban of the visitor's address).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from starlette.requests import cookie_parser
from starlette.types import Scope

from ..guard.keys import MASTER
from ..state import db as statedb

if TYPE_CHECKING:
    import sqlite3

    from ..state.redis import RedisState

COOKIE = "mooltiproxy_ui"
LOGIN_COOKIE = "mooltiproxy_ui_login"
SESSION_SECONDS = 12 * 3600
LOGIN_SECONDS = 3600
PATH = "/ui"
SESSION_PURPOSE = "session"
LOGIN_PURPOSE = "login"  # a login form's token: signed apart, so it can never pass for a session


MasterKey = str | Callable[[], str | None]  # the key, or where to read the current one (a reloaded config may change it)


class EndedSessions:
    """Sessions logged out before their expiry, remembered until then: a logout ends the session itself, not only
    the browser's copy of its cookie. Kept in ``state.db`` (shared by the workers of one machine), and, with a
    shared Redis state, there too, told to every instance at once and mirrored in memory."""

    def __init__(self, path: Path | None, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.clock = clock
        self.shared: RedisState | None = None
        self._memory: dict[str, float] = {}  # nonce -> the session's own expiry
        self._db: sqlite3.Connection | None = None

    def open(self) -> None:
        if self.path is not None:
            self._db = statedb.connect(self.path, "CREATE TABLE IF NOT EXISTS ended_sessions (nonce TEXT PRIMARY KEY, until REAL NOT NULL)")
            self._db.execute("DELETE FROM ended_sessions WHERE until <= ?", (self.clock(),))

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def end(self, nonce: str, until: float) -> None:
        self.mirror(nonce, until)
        if self._db is not None:
            self._db.execute("INSERT OR REPLACE INTO ended_sessions VALUES (?, ?)", (nonce, until))
        if self.shared is not None:
            self.shared.session_ended(nonce, until)

    def mirror(self, nonce: str, until: float) -> None:
        """One ended elsewhere (another instance, through Redis)."""
        now = self.clock()
        for old in [n for n, t in self._memory.items() if t <= now]:
            del self._memory[old]
        self._memory[nonce] = until

    def ended(self, nonce: str) -> bool:
        if nonce in self._memory:
            return True
        return self._db is not None and self._db.execute("SELECT 1 FROM ended_sessions WHERE nonce = ?", (nonce,)).fetchone() is not None


class Sessions:
    def __init__(self, master_key: MasterKey, *, lifetime: float = SESSION_SECONDS, clock: Callable[[], float] = time.time,
                 ended: EndedSessions | None = None) -> None:
        self._source: Callable[[], str | None] = master_key if callable(master_key) else (lambda: master_key)
        self._derived: tuple[str, bytes, bytes] | None = None  # (master key, signing key, master key digest)
        self.lifetime = lifetime
        self.clock = clock
        self.ended = ended

    def _keys(self) -> tuple[bytes, bytes] | None:
        """The signing key and the master key's digest, derived again when the master key changed; None without a key."""
        master = self._source()
        if not master:
            return None
        if self._derived is None or not hmac.compare_digest(self._derived[0].encode(), master.encode()):
            signing = hmac.new(master.encode(), b"mooltiproxy review page session", hashlib.sha256).digest()
            self._derived = (master, signing, hashlib.sha256(master.encode()).digest())
        return self._derived[1], self._derived[2]

    def _mac(self, text: str) -> str:
        keys = self._keys()
        if keys is None:  # no master key: nothing can be signed, so nothing is ever valid
            return secrets.token_hex(32)
        return hmac.new(keys[0], text.encode(), hashlib.sha256).hexdigest()

    def issue(self, purpose: str = SESSION_PURPOSE, lifetime: float | None = None) -> str:
        """A new token, ``<expiry>.<nonce>.<signature>``: a session cookie's value, or a login form's token."""
        payload = f"{int(self.clock() + (self.lifetime if lifetime is None else lifetime))}.{secrets.token_urlsafe(16)}"
        return f"{payload}.{self._mac(f'{purpose} {payload}')}"

    def valid(self, value: str | None, purpose: str = SESSION_PURPOSE) -> bool:
        if not value or value.count(".") != 2:
            return False
        payload, _, signature = value.rpartition(".")
        if not hmac.compare_digest(signature.encode(), self._mac(f"{purpose} {payload}").encode()):
            return False
        expiry, _, nonce = payload.partition(".")
        if not (expiry.isdigit() and int(expiry) > self.clock()):
            return False
        return purpose != SESSION_PURPOSE or self.ended is None or not self.ended.ended(nonce)

    def end(self, value: str | None) -> None:
        """Log a session out: its cookie is refused from now on, wherever it was copied to."""
        if self.ended is not None and value and self.valid(value):
            expiry, _, nonce = value.rpartition(".")[0].partition(".")
            self.ended.end(nonce, float(expiry))

    def csrf(self, session: str) -> str:
        """The token the session's forms carry."""
        return self._mac("csrf " + session)

    def csrf_ok(self, session: str | None, token: str | None) -> bool:
        return bool(session and token) and hmac.compare_digest(str(token).encode(), self.csrf(str(session)).encode())

    def is_master(self, key: str) -> bool:
        """Whether ``key`` is the master key (compared as digests, in constant time)."""
        keys = self._keys()
        return keys is not None and hmac.compare_digest(hashlib.sha256(key.encode()).digest(), keys[1])


def cookie(scope: Scope, name: str) -> str | None:
    for header, value in scope["headers"]:
        if header == b"cookie":
            found = cookie_parser(value.decode("latin-1")).get(name)
            if found:
                return found
    return None


def set_cookie(name: str, value: str, *, max_age: int, secure: bool, path: str = PATH) -> tuple[str, str]:
    """A Set-Cookie header; ``max_age=0`` deletes the cookie."""
    attributes = [f"{name}={value}", f"Max-Age={max_age}", f"Path={path}", "HttpOnly", "SameSite=Strict"]
    if secure:
        attributes.append("Secure")
    return "set-cookie", "; ".join(attributes)


def cookie_auth(sessions: Sessions) -> Callable[[Scope], str | None]:
    """For the guard: the key name ("master") a request's valid session cookie stands for, else None."""

    def check(scope: Scope) -> str | None:
        return MASTER if sessions.valid(cookie(scope, COOKIE)) else None

    return check
