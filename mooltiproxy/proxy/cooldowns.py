"""Target health: consecutive failures, and the cooldown a target that keeps failing is given.

A failure is an upstream that could not be reached or answered 5xx or 429. After ``cooldown_after``
of them in a row a target cools down for ``cooldown`` seconds: requests go to its fallbacks first,
and it is tried only when nothing else is left. One success ends it all.

With a shared state every instance's failures count together: each one is told to Redis, and what the
others report arrives as ``mirror_failure`` / ``mirror_ok``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Protocol

log = logging.getLogger("mooltiproxy")


class Teller(Protocol):
    """Where a target's failures and recoveries are told, for other instances (``shared.RedisState``)."""

    def target_failed(self, target: str, *, after: int, cooldown: float) -> None: ...

    def target_ok(self, target: str) -> None: ...


class Cooldowns:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._failures: dict[str, int] = {}
        self._cooling: dict[str, float] = {}
        self.shared: Teller | None = None

    def cooling(self, target: str) -> float:
        """Seconds of cooldown left for ``target`` (0 when it is not cooling down)."""
        until = self._cooling.get(target)
        if until is None:
            return 0.0
        left = until - self.clock()
        if left <= 0:
            del self._cooling[target]
            return 0.0
        return left

    def failed(self, target: str, *, after: int, cooldown: float) -> None:
        n = self._failures[target] = self._failures.get(target, 0) + 1
        if cooldown > 0 and n >= after and target not in self._cooling:
            self._cooling[target] = self.clock() + cooldown
            log.warning("target %s failed %d times in a row; it cools down for %g s", target, n, cooldown)
        if self.shared is not None:
            self.shared.target_failed(target, after=after, cooldown=cooldown)

    def succeeded(self, target: str) -> None:
        if self._failures.pop(target, None) is None:
            return  # the common case: nothing to end, nothing to tell
        if self._cooling.pop(target, None) is not None:
            log.info("target %s answers again; its cooldown is over", target)
        if self.shared is not None:
            self.shared.target_ok(target)

    def mirror_failure(self, target: str, failures: int, cooldown: float) -> None:
        """Another instance saw ``target`` fail, ``failures`` times in a row across all; ``cooldown`` seconds
        of cooldown if that started one."""
        self._failures[target] = max(failures, self._failures.get(target, 0))
        if cooldown > 0:
            self._cooling[target] = self.clock() + cooldown
            log.warning("target %s failed %d times in a row across instances; it cools down for %g s", target, failures, cooldown)

    def mirror_ok(self, target: str) -> None:
        self._failures.pop(target, None)
        if self._cooling.pop(target, None) is not None:
            log.info("target %s answers again (at another instance); its cooldown is over", target)
