"""The proxy's own API keys: the master key and the named keys, and matching a presented key in constant time.

Keys are compared as SHA-256 digests with ``hmac.compare_digest`` against every configured key, so
neither a key's content nor which key matched shows in the time a check takes.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

from starlette.types import Scope

MASTER = "master"


@dataclass(frozen=True)
class Key:
    name: str
    digest: bytes
    targets: frozenset[str] | None  # None: every target
    rpm: int | None = None  # requests per minute; None: no limit


def new_key() -> str:
    """A strong random key for ``mooltiproxy keygen``: 256 bits, URL-safe."""
    return "mp-" + secrets.token_urlsafe(32)


def presented(scope: Scope) -> bytes | None:
    """The key a request carries: ``Authorization: Bearer …`` first, else ``x-api-key``."""
    api_key: bytes | None = None
    headers: list[tuple[bytes, bytes]] = scope["headers"]
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.strip().partition(b" ")
            if scheme.lower() == b"bearer" and token.strip():
                return token.strip()
        elif name == b"x-api-key" and value.strip():
            api_key = value.strip()
    return api_key


class Keyring:
    def __init__(self, master: str | None, named: Iterable[tuple[str, str, Iterable[str] | None, int | None]] = ()) -> None:
        # Without a master key (auth.mode passthrough may run without one) nothing can present it.
        self._keys = [Key(MASTER, _digest(master.encode()), None)] if master else []
        self._keys += [Key(name, _digest(value.encode()), frozenset(t) if t is not None else None, rpm) for name, value, t, rpm in named]

    def match(self, token: bytes | None) -> Key | None:
        """The key ``token`` is, or None. Every configured key is compared, whatever matched first."""
        digest = _digest(token or b"")
        found = None
        for key in self._keys:
            if hmac.compare_digest(digest, key.digest) and token:
                found = key
        return found


def _digest(value: bytes) -> bytes:
    return hashlib.sha256(value).digest()
