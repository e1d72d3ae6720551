"""The door: deny list, bans, and the key, checked before a request reaches anything else.

A pure ASGI middleware. In order: a blacklisted address is refused; a banned address is refused with
the time left (no key check, nothing sent upstream); then the request must carry a key the keyring
knows. A wrong key counts as a failed attempt in the ban ledger; a missing one is refused without
counting (a request without a key guesses nothing, and it is all another site can make a browser send). The key that matched goes
on the request's info by name (never its value) for the access log, the dataset and target checks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from urllib.parse import quote

from starlette.types import ASGIApp, Receive, Scope, Send

from ..errors import Forbidden, TooManyRequests, Unauthorized, Unavailable
from ..http.context import RequestInfo
from ..http.protocol import PEER
from ..state.settings import Live, Settings
from .bans import in_networks, is_loopback, normalize
from .keys import MASTER, presented

OPEN_PATHS = frozenset({"/health"})


async def _to_login(scope: Scope, send: Send) -> None:
    target = scope["path"] + ("?" + scope["query_string"].decode("latin-1") if scope.get("query_string") else "")
    location = "/ui/login?next=" + quote(target, safe="")
    await send({"type": "http.response.start", "status": 303, "headers": [(b"location", location.encode()), (b"content-length", b"0")]})
    await send({"type": "http.response.body", "body": b""})



_HOW = "Send the proxy's key as 'Authorization: Bearer <key>' or 'x-api-key: <key>'."


class Guard:
    def __init__(self, app: ASGIApp, *, live: Live, open_paths: Iterable[str] = (),
                 cookie_auth: Callable[[Scope], str | None] | None = None) -> None:
        self.app = app
        self.live = live  # the ledger, limits and shared state; the keyring and lists come with each request's settings
        self.ledger = live.ledger
        self.open_paths = OPEN_PATHS | frozenset(open_paths)
        # The review page's browser session: a signed cookie stands in for the key under /ui.
        self.cookie_auth = cookie_auth
        # Wrong keys a banned admin on this machine sent to /admin/ during the ban (see ``_admin_despite_ban``).
        self._admin_tries: dict[tuple[str, float], int] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        info: RequestInfo = scope["mooltiproxy"]
        settings = info.settings
        address = normalize(info.client)
        if settings.blacklist and in_networks(address, settings.blacklist):
            raise Forbidden(f"Requests from {address} are refused by this proxy (auth.blacklist).", code="address_blocked")
        path = scope["path"]
        if path in self.open_paths:
            await self.app(scope, receive, send)
            return
        state = self.live.state
        if state is not None and state.required and not state.up:
            raise Unavailable(f"The proxy's shared state (Redis at {state.where}) is out of reach and state_required is set, so "
                              "requests are refused until it is back. Try again shortly.", code="state_unavailable",
                              headers=[("Retry-After", "5")])
        token = presented(scope)
        admin = path.startswith("/admin/")
        left = self.ledger.banned_for(address)
        if left and not (admin and self._admin_despite_ban(scope, settings, address, token)):
            seconds = math.ceil(left)
            raise Forbidden(
                f"{address} is banned for another {seconds} s after repeated requests with a wrong API key.",
                code="address_banned", headers=[("Retry-After", str(seconds))],
            )
        if settings.passthrough and not admin:
            await self._passthrough(scope, receive, send, settings, address, token)
            return
        if token is None and self.cookie_auth is not None and (path == "/ui" or path.startswith("/ui/")):
            name = self.cookie_auth(scope)
            if name is not None:
                info.key_name = name
                await self.app(scope, receive, send)
                return
            if scope["method"] in ("GET", "HEAD"):
                # A browser whose session ended: to the login page, not a JSON error, and no failed attempt counted.
                await _to_login(scope, send)
                return
        key = settings.keyring.match(token)
        if key is None and token is not None:
            # (No key is no guess, and is not counted: a page on another site can make a visitor's browser send
            # keyless requests, an <img> or a no-cors fetch, but never a key header, which needs a preflight.)
            await self.ledger.fail(address)
        if admin and (key is None or key.name != MASTER):
            # One answer for every key but the master: the admin endpoints do not tell a valid named key from a wrong one.
            raise Unauthorized("The admin endpoints need the proxy's master key.", code="admin_only")
        if key is None:
            raise Unauthorized(f"No API key was sent. {_HOW}" if token is None else f"Incorrect API key. {_HOW}")
        info.key_name = key.name
        info.key_targets = key.targets
        if key.rpm is not None and self.live.limits is not None:
            wait = await self.live.limits.take(key.name, key.rpm)
            if wait:
                seconds = math.ceil(wait)
                raise TooManyRequests(
                    f"The key '{key.name}' may make {key.rpm} requests a minute (auth.keys.{key.name}.rpm) and has made them; "
                    f"try again in {seconds} s.", code="key_rate_limited", headers=[("Retry-After", str(seconds))],
                )
        await self.app(scope, receive, send)

    def _admin_despite_ban(self, scope: Scope, settings: Settings, address: str, token: bytes | None) -> bool:
        """Whether a banned address may still reach /admin/: so that the admin on the proxy's own machine can lift a
        ban (``mooltiproxy unban``). Only from a loopback TCP peer (an X-Forwarded-For naming localhost does not
        count), and only for ``max_failures`` wrong keys per ban, so that it is no way around the ban to guess keys."""
        peer = scope.get(PEER)
        if not (peer and is_loopback(peer) and is_loopback(address)):
            return False
        ban = self.ledger.ban_of(address)
        if ban is None:
            return False
        tries = (address, ban.until)
        if self._admin_tries.get(tries, 0) >= self.ledger.max_failures:
            return False
        key = settings.keyring.match(token)
        if key is None or key.name != MASTER:
            self._admin_tries[tries] = self._admin_tries.get(tries, 0) + 1
            for old in [t for t in self._admin_tries if t[1] < self.ledger.clock()]:
                del self._admin_tries[old]
        return True

    async def _passthrough(self, scope: Scope, receive: Receive, send: Send, settings: Settings, address: str,
                           token: bytes | None) -> None:
        """auth.mode passthrough: no key is needed; a key that is not one of the proxy's is the client's own, for
        targets that forward it. With a whitelist, only its addresses (and this machine) get in. (The admin
        endpoints are not passed through: they need the master key, and wrong keys there count toward a ban.)"""
        whitelist = settings.config.auth.whitelist
        if whitelist and not is_loopback(address) and not in_networks(address, whitelist):
            raise Forbidden(f"{address} is not on this proxy's auth.whitelist, which is all that passthrough mode admits.",
                            code="address_not_allowed")
        info: RequestInfo = scope["mooltiproxy"]
        key = settings.keyring.match(token)
        if key is not None:  # the master key (or a named one) is the proxy's own, never forwarded
            info.key_name, info.key_targets = key.name, key.targets
        else:
            info.key_name = "client"
            info.client_key = token.decode("latin-1") if token else None
        await self.app(scope, receive, send)
