"""State shared by several instances on Redis: bans and failed-key counts, per-key request counts,
target cooldowns, and reload signals.

Every change is one Lua script run atomically on the Redis server and timed by the server's clock, so
instances on different machines count the same failures and agree on when a ban ends; everything
expires by Redis's own TTLs. What requests read on their hot path — bans and cooldowns — each instance
keeps in memory, and a pub/sub channel keeps that mirror current: a ban given at one instance is
enforced at the others as soon as the message arrives, a fraction of a millisecond on a LAN; a request
with a wrong key asks Redis itself.

When Redis cannot be reached the proxy goes on with this instance's own state, and says so at ERROR
level when it happens and every minute while it lasts; with ``state_required`` it refuses requests
instead. Once Redis answers again, the bans given meanwhile are copied there and the mirror is reloaded.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from ..config.validators import redacted
from ..errors import StateDown
from ..guard.bans import Ban, BanLedger
from ..proxy.cooldowns import Cooldowns
from ..review.sessions import EndedSessions

log = logging.getLogger("mooltiproxy.state")

PREFIX = "mooltiproxy:"
CHANNEL = PREFIX + "events"
RETRY = 1.0  # seconds between attempts to reach Redis again
REMIND = 60.0  # seconds between reminders that Redis is still out of reach
PING = 2.0  # seconds between checks that the connection is alive while nothing else happens

# KEYS: failures zset, ban key. ARGV: window ms, max failures, ban ms, a unique member suffix.
# Returns {count, ban value or ""}: the ban's value is "<until ms> <failures>".
_FAIL = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local banned = redis.call('GET', KEYS[2])
if banned then return {-1, banned} end
local window = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
redis.call('ZADD', KEYS[1], now, now .. ':' .. ARGV[4])
redis.call('PEXPIRE', KEYS[1], window)
local n = redis.call('ZCARD', KEYS[1])
if n < tonumber(ARGV[2]) then return {n, ''} end
local value = (now + tonumber(ARGV[3])) .. ' ' .. n
redis.call('SET', KEYS[2], value, 'PX', ARGV[3])
redis.call('DEL', KEYS[1])
return {n, value}
"""

# KEYS: the key's hits zset. ARGV: limit, window ms, a unique member suffix.
# Returns milliseconds until the next request may pass: 0 when this one passes (and is counted).
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now, now .. ':' .. ARGV[3])
  redis.call('PEXPIRE', KEYS[1], window)
  return 0
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return math.max(1, tonumber(oldest[2]) + window - now)
"""

# KEYS: failures in a row, cooldown key. ARGV: failures that start a cooldown, cooldown ms.
# Returns {failures in a row, cooldown ms started now or 0}.
_TARGET_FAILED = """
local n = redis.call('INCR', KEYS[1])
redis.call('PEXPIRE', KEYS[1], 86400000)
local cooldown = tonumber(ARGV[2])
if cooldown > 0 and n >= tonumber(ARGV[1]) and redis.call('SET', KEYS[2], '1', 'PX', cooldown, 'NX') then
  return {n, cooldown}
end
return {n, 0}
"""


class RedisState:
    def __init__(self, url: str, *, required: bool = False, instance: str | None = None) -> None:
        self.url = url
        self.where = redacted(url)
        self.required = required
        self.instance = instance or os.urandom(6).hex()
        self.up = False
        self.ledger: BanLedger | None = None
        self.cooldowns: Cooldowns | None = None
        self.reload: Callable[[], object] | None = None  # reloads this instance's config, without telling the others
        self.ended: EndedSessions | None = None  # review-page sessions logged out
        self._client: Any = None
        self._scripts: dict[str, Any] = {}
        self._task: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Task[Any]] = set()
        self._down_since: float | None = None
        self._reminded = 0.0

    # ------------------------------------------------------------------ life

    async def start(self, ledger: BanLedger, cooldowns: Cooldowns, reload: Callable[[], object],
                    ended: EndedSessions | None = None) -> None:
        self.ledger, self.cooldowns, self.reload, self.ended = ledger, cooldowns, reload, ended
        self._client = aioredis.from_url(self.url, socket_timeout=1.0, socket_connect_timeout=1.0, decode_responses=True)
        self._scripts = {name: self._client.register_script(body) for name, body in
                         (("fail", _FAIL), ("take", _TAKE), ("target_failed", _TARGET_FAILED))}
        self._task = asyncio.ensure_future(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._pending:
            await asyncio.wait(self._pending, timeout=1.0)
        if self._client is not None:
            await self._client.aclose()

    async def wait_up(self, timeout: float) -> bool:
        """True once Redis has been reached (for startup, so a first request does not fall back needlessly)."""
        deadline = time.monotonic() + timeout
        while not self.up and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return self.up

    async def _run(self) -> None:
        while True:
            try:
                pubsub = self._client.pubsub()
                try:
                    await pubsub.subscribe(CHANNEL)  # before the resync: nothing said in between is missed
                    await self._resync()
                    self._went_up()
                    await self._listen(pubsub)
                finally:
                    await pubsub.aclose()
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                self._went_down(exc)
            except Exception:  # a bug must not end shared state for the process's life
                log.exception("shared state: unexpected failure; reconnecting")
                self._went_down(None)
            await asyncio.sleep(RETRY)

    async def _listen(self, pubsub: Any) -> None:
        last_ping = time.monotonic()
        while self.up:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if message is not None and message.get("type") == "message":
                self._on_event(message["data"])
            if time.monotonic() - last_ping >= PING:
                await self._client.ping()
                last_ping = time.monotonic()

    async def _resync(self) -> None:
        """Copy the bans this instance gave while Redis was away, then mirror every ban Redis holds."""
        assert self.ledger is not None
        copied = self.ledger.unshared()
        for ban in copied:
            left = int(ban.left() * 1000)
            if left > 0:
                await self._client.set(_ban_key(ban.address), f"{int(ban.until * 1000)} {ban.failures}", px=left, nx=True)
        bans: list[Ban] = []
        keys = [k async for k in self._client.scan_iter(match=PREFIX + "ban:*", count=1000)]
        if keys:
            for key, value in zip(keys, await self._client.mget(keys), strict=True):
                if value is not None:
                    bans.append(_ban(key[len(PREFIX) + 4:], value))
        self.ledger.mirror_all(bans, [b.address for b in copied])
        if self.ended is not None:
            keys = [k async for k in self._client.scan_iter(match=PREFIX + "ended:*", count=1000)]
            if keys:
                for key, value in zip(keys, await self._client.mget(keys), strict=True):
                    if value is not None:
                        self.ended.mirror(key[len(PREFIX) + 6:], float(value))

    def _went_up(self) -> None:
        if self._down_since is not None:
            log.warning("shared state: Redis at %s answers again after %.0f s; bans, limits and cooldowns are shared again",
                        self.where, time.monotonic() - self._down_since)
        else:
            log.info("shared state on Redis at %s", self.where)
        self._down_since = None
        self.up = True

    def _went_down(self, exc: BaseException | None) -> None:
        now = time.monotonic()
        was_up = self.up
        self.up = False
        if self._down_since is None:
            self._down_since = now
        if was_up or now - self._reminded >= REMIND:
            self._reminded = now
            what = "refusing requests (state_required)" if self.required else (
                "serving with this instance's own state: bans, key limits and cooldowns are NOT shared with other instances")
            log.error("shared state: Redis at %s is unreachable (%s); %s until it is back", self.where,
                      _why(exc), what)

    async def _call(self, name: str, keys: list[str], args: list[Any]) -> Any:
        if not self.up:
            raise StateDown(self.where)
        try:
            return await self._scripts[name](keys=keys, args=args)
        except (RedisError, OSError) as exc:
            self._went_down(exc)
            raise StateDown(self.where) from exc

    def _spawn(self, job: Any) -> None:
        """Run a change in the background: a request does not wait for a write it does not need the answer of."""
        task = asyncio.ensure_future(job)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _publish(self, event: dict[str, Any]) -> None:
        try:
            await self._client.publish(CHANNEL, orjson.dumps({**event, "from": self.instance}))
        except (RedisError, OSError) as exc:
            self._went_down(exc)

    # ------------------------------------------------------------------ bans

    async def count_failure(self, address: str, *, window: float, max_failures: int, ban: float) -> Ban | None:
        """Count a failed key attempt from ``address``; its ban if it is (now or already) banned."""
        n, value = await self._call("fail", [PREFIX + "fail:" + address, _ban_key(address)],
                                    [int(window * 1000), max_failures, int(ban * 1000), os.urandom(4).hex()])
        if not value:
            return None
        found = _ban(address, value)
        if int(n) >= 0:  # banned by this very failure: tell every instance
            await self._publish({"kind": "ban", "address": address, "value": value})
        return found

    async def unban(self, address: str) -> bool:
        if not self.up:
            raise StateDown(self.where)
        try:
            removed = int(await self._client.delete(_ban_key(address)))
            await self._client.delete(PREFIX + "fail:" + address)
        except (RedisError, OSError) as exc:
            self._went_down(exc)
            raise StateDown(self.where) from exc
        await self._publish({"kind": "unban", "address": address})
        return removed > 0

    # ------------------------------------------------------------------ key limits

    async def take(self, key: str, rpm: int) -> float:
        """Count a request with ``key`` if it is within ``rpm`` a minute; else the seconds until one would be."""
        wait_ms = await self._call("take", [PREFIX + "hits:" + key], [rpm, 60_000, os.urandom(4).hex()])
        return int(wait_ms) / 1000

    # ------------------------------------------------------------------ target cooldowns

    def target_failed(self, target: str, *, after: int, cooldown: float) -> None:
        if self.up:
            self._spawn(self._target_failed(target, after, cooldown))

    async def _target_failed(self, target: str, after: int, cooldown: float) -> None:
        try:
            n, cool = await self._call("target_failed", [PREFIX + "tfail:" + target, PREFIX + "cool:" + target],
                                       [after, int(cooldown * 1000)])
        except StateDown:
            return
        await self._publish({"kind": "target_failed", "target": target, "n": int(n), "cool": int(cool) / 1000})

    def target_ok(self, target: str) -> None:
        if self.up:
            self._spawn(self._target_ok(target))

    async def _target_ok(self, target: str) -> None:
        try:
            await self._client.delete(PREFIX + "tfail:" + target, PREFIX + "cool:" + target)
        except (RedisError, OSError) as exc:
            self._went_down(exc)
            return
        await self._publish({"kind": "target_ok", "target": target})

    # ------------------------------------------------------------------ review-page sessions

    def session_ended(self, nonce: str, until: float) -> None:
        if self.up:
            self._spawn(self._session_ended(nonce, until))

    async def _session_ended(self, nonce: str, until: float) -> None:
        left = int((until - time.time()) * 1000)
        if left <= 0:
            return
        try:
            await self._client.set(PREFIX + "ended:" + nonce, str(until), px=left)
        except (RedisError, OSError) as exc:
            self._went_down(exc)
            return
        await self._publish({"kind": "session_ended", "nonce": nonce, "until": until})

    # ------------------------------------------------------------------ stored responses (/v1/responses)

    async def stored(self, name: str) -> bytes | None:
        """A stored value (``StateDown`` while Redis is away: a missing response must not look like a deleted one)."""
        if not self.up:
            raise StateDown(self.where)
        try:
            value: bytes | str | None = await self._client.get(PREFIX + "resp:" + name)
        except (RedisError, OSError) as exc:
            self._went_down(exc)
            raise StateDown(self.where) from exc
        return value.encode() if isinstance(value, str) else value

    async def store(self, name: str, value: bytes, ttl: float) -> None:
        if not self.up:
            raise StateDown(self.where)
        try:
            await self._client.set(PREFIX + "resp:" + name, value, px=max(1, int(ttl * 1000)))
        except (RedisError, OSError) as exc:
            self._went_down(exc)
            raise StateDown(self.where) from exc

    async def unstore(self, name: str) -> bool:
        if not self.up:
            raise StateDown(self.where)
        try:
            return bool(await self._client.delete(PREFIX + "resp:" + name))
        except (RedisError, OSError) as exc:
            self._went_down(exc)
            raise StateDown(self.where) from exc

    # ------------------------------------------------------------------ reload

    def reloaded(self) -> None:
        """This instance took a new config: the others read theirs again."""
        if self.up:
            self._spawn(self._publish({"kind": "reload"}))

    # ------------------------------------------------------------------ what the others say

    def _on_event(self, data: str) -> None:
        try:
            event = orjson.loads(data)
            kind = event["kind"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            log.warning("shared state: an event that is not ours on %s: %.100r", CHANNEL, data)
            return
        mine = event.get("from") == self.instance
        assert self.ledger is not None and self.cooldowns is not None
        if kind == "ban":
            self.ledger.mirror(_ban(event["address"], event["value"]))
        elif kind == "unban":
            self.ledger.mirror_unban(event["address"])
        elif kind == "target_failed" and not mine:
            self.cooldowns.mirror_failure(event["target"], event["n"], event["cool"])
        elif kind == "target_ok" and not mine:
            self.cooldowns.mirror_ok(event["target"])
        elif kind == "session_ended" and self.ended is not None:
            self.ended.mirror(str(event["nonce"]), float(event["until"]))
        elif kind == "reload" and not mine and self.reload is not None:
            log.info("shared state: another instance reloaded its config; reading this one's again")
            self.reload()


def _ban_key(address: str) -> str:
    return PREFIX + "ban:" + address


def _ban(address: str, value: str) -> Ban:
    until_ms, failures = value.split(" ", 1)
    return Ban(address, int(until_ms) / 1000, int(failures))


def _why(exc: BaseException | None) -> str:
    if exc is None:
        return "an unexpected error"
    text = str(exc) or type(exc).__name__
    return text[:200]
