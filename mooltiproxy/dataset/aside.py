"""Exchanges whose records wait to be built: big answers, set aside so the small exchanges behind them are recorded
first, and whatever must be linked after one of them.

A 10 MB answer's record is about 20 ms of the recorder process's time (bench.micro --big). Built in order, a hundred
of them finishing together held every small exchange behind them for seconds, and the proxy then made new requests
wait for its recorder (bench/RESULTS.md, S7). Their records can come later: records are linked in the order their
exchanges ended, but only an exchange that could be linked to a waiting one needs that order kept. What links two
exchanges is all within one scope (``records.scope_of``): one continuing the other (its history holds the other's
conversation and answer), one regenerating the other (the same turn), or one conversation the client named. An
exchange that might meet a waiting one in any of these ways waits behind it, in order; any other is recorded at once.
A big answer's own keys are not known before its answer is read, so in a scope where one waits, every exchange that
continues something waits too.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Hashable
from typing import Any, NamedTuple

from .records import Capture


class Marks(NamedTuple):
    """What linking looks an exchange up by, and what it finds earlier ones by."""

    scope: str
    turn: str
    conversation: str | None
    lookups: tuple[str, ...]  # the keys and tail it may continue (from its request)
    keys: tuple[str, ...]  # what a later exchange finds it by (empty for a big answer: not read yet)


class Waiting(NamedTuple):
    capture: Capture
    built: Any  # a small exchange's records, built but not linked yet; None for a big answer (built in its turn)
    marks: Marks


class Aside:
    """The exchanges waiting, oldest first, and counts of their marks for telling which new ones must wait too."""

    def __init__(self) -> None:
        self.queue: deque[Waiting] = deque()
        self.bigs = 0
        self._seen: Counter[Hashable] = Counter()

    def __len__(self) -> int:
        return len(self.queue)

    def must_wait(self, m: Marks) -> bool:
        """Whether linking ``m`` now could find a waiting exchange, or be found by one, differently than in order."""
        seen, scope = self._seen, m.scope
        if not seen[scope]:
            return False
        if seen[(scope, "turn", m.turn)] or (m.conversation and seen[(scope, "named", m.conversation)]):
            return True
        if m.lookups and (seen[(scope, "big")] or any(seen[(scope, "key", k)] for k in m.lookups)):
            return True
        return any(seen[(scope, "lookup", k)] for k in m.keys)

    def add(self, capture: Capture, built: Any, marks: Marks) -> None:
        self.queue.append(Waiting(capture, built, marks))
        self.bigs += built is None
        self._count(marks, built is None, 1)

    def next_is_big(self) -> bool:
        return bool(self.queue) and self.queue[0].built is None

    def popleft(self) -> Waiting:
        waiting = self.queue.popleft()
        self.bigs -= waiting.built is None
        self._count(waiting.marks, waiting.built is None, -1)
        return waiting

    def _count(self, m: Marks, big: bool, step: int) -> None:
        scope = m.scope
        names: list[Hashable] = [scope, (scope, "turn", m.turn)]
        if big:
            names.append((scope, "big"))
        if m.conversation:
            names.append((scope, "named", m.conversation))
        names += [(scope, "lookup", k) for k in m.lookups]
        names += [(scope, "key", k) for k in m.keys]
        seen = self._seen
        for name in names:
            seen[name] += step
            if not seen[name]:
                del seen[name]
