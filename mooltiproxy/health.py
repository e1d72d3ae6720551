"""Target health: consecutive failures, and the cooldown a target that keeps failing is given.

A failure is an upstream that could not be reached or answered 5xx or 429. After ``cooldown_after``
of them in a row a target cools down for ``cooldown`` seconds: requests go to its fallbacks first,
and it is tried only when nothing else is left. One success ends it all.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

log = logging.getLogger("mooltiproxy")


class Health:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._failures: dict[str, int] = {}
        self._cooling: dict[str, float] = {}

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

    def succeeded(self, target: str) -> None:
        if self._failures.pop(target, None) and self._cooling.pop(target, None) is not None:
            log.info("target %s answers again; its cooldown is over", target)
