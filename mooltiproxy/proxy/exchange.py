"""What changes while one request runs: its timings, whether it is over, the targets tried before the one
answering, and the tape the recorder gets. Everything decided up front is the ``Plan``'s."""

from __future__ import annotations

import time

from starlette.types import Scope

from ..dataset.tape import Tape
from ..http.context import RequestInfo


class Exchange:
    __slots__ = ("client_gone", "done", "info", "prompt", "scope", "t_ready", "t_sent", "tape", "tried")

    def __init__(self, info: RequestInfo, scope: Scope, tape: Tape | None) -> None:
        self.info = info
        self.scope = scope
        self.tape = tape  # what the recorder will get, when this exchange is recorded
        self.t_sent = 0.0  # when the request's last byte left for the upstream
        self.t_ready = 0.0  # when the answer (its head, or its first event) was there
        self.done = False  # the answer is complete: a client leaving now cuts nothing short
        self.client_gone = False
        self.tried: list[str] = []  # targets that failed before the one answering, for the log and the record
        self.prompt: str | None = None  # the prompt the answering attempt rendered, for the record

    def overhead_ms(self) -> bytes:
        """Time spent in the proxy so far, the upstream's own time taken out."""
        now = time.perf_counter()
        upstream = (self.t_ready - self.t_sent) if self.t_sent else 0.0
        return b"%.3f" % ((now - self.info.start - upstream) * 1000)
