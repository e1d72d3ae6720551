"""What lives as long as the app runs, opened and closed as one: the running settings and their reload
(file watcher, SIGHUP), the ban ledger, key limits and ended review sessions, the shared Redis state, the
recorder, the upstream client, the metrics snapshots and the log's flushing."""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Callable

from ..config.model import Config
from ..dataset.places import make_sink
from ..dataset.process import ProcessRecorder, recorder_spec
from ..dataset.recorder import Recorder, Recording, new_session
from ..dataset.spooling import Spooler
from ..guard.bans import BanLedger
from ..guard.limits import RateLimits
from ..proxy.cooldowns import Cooldowns
from ..review.sessions import EndedSessions
from ..state.responses import ResponseStore
from ..state.settings import Live, Settings
from ..upstream.client import UpstreamClient
from .logs import flush_logs
from .metrics import Metrics

log = logging.getLogger("mooltiproxy")


class Runtime:
    def __init__(self, config: Config, settings: Settings, *, client: Callable[[], UpstreamClient], clock: Callable[[], float]) -> None:
        auth, dataset = config.auth, config.dataset
        self.make_client = client
        self.client: UpstreamClient | None = None
        self.state = None
        if config.state is not None:
            from ..state.redis import RedisState  # only with a state: the redis package is an extra

            self.state = RedisState(config.state, required=config.state_required)
        # With a shared state, Redis holds bans and counts; without, SQLite beside the dataset (shared by workers).
        local = None if self.state is not None else dataset.dir / "state.db"
        self.ledger = BanLedger(local, max_failures=auth.max_failures, window=auth.window, ban=auth.ban, whitelist=auth.whitelist,
                                clock=clock)
        self.limits = RateLimits(local, clock=clock)
        self.ended = EndedSessions(local, clock=clock)
        self.responses = ResponseStore(local, config.responses.retention, clock=clock)
        self.responses.shared = self.state
        self.cooldowns = Cooldowns()
        self.ledger.shared = self.limits.shared = self.ended.shared = self.cooldowns.shared = self.state
        self.live = Live(settings, self.ledger, self.limits)
        self.live.state = self.state
        self.session = dataset.session or new_session()
        sink = make_sink(dataset.sink, dataset.dir, self.session, dataset.dsn)
        self.recorder: Recording | None = None
        if sink is not None and dataset.recorder == "process":
            self.recorder = ProcessRecorder(sink, self.session, recorder_spec(dataset, self.session), queue_size=dataset.queue)
        elif sink is not None:
            self.recorder = Recorder(sink, self.session, redact=dataset.redact, fsync=dataset.fsync, queue_size=dataset.queue)
        # Big answers' files, written off the event loop (only a recording proxy spools).
        self.spooler = Spooler() if self.recorder is not None else None
        self.metrics = Metrics(dataset.dir / "metrics")
        recorder = self.recorder
        if recorder is not None:
            for name, read in (("written_total", lambda: recorder.written), ("lost_total", lambda: recorder.lost),
                               ("spilled_total", lambda: recorder.spilled), ("altered_total", lambda: recorder.altered),
                               ("held", lambda: recorder.held)):
                self.metrics.gauges[f"mooltiproxy_dataset_records_{name}"] = read
        if isinstance(recorder, ProcessRecorder):
            pacer = recorder.pacer
            self.metrics.gauges["mooltiproxy_dataset_recorder_core_seconds_total"] = lambda: pacer.given
        self._tasks: list[asyncio.Task[None]] = []
        self._unwatch: Callable[[], object] = lambda: None

    def upstream(self) -> UpstreamClient:
        if self.client is None:
            raise RuntimeError("the app's lifespan has not started: run it under uvicorn or enter its lifespan")
        return self.client

    async def start(self) -> None:
        self.ledger.open()
        self.limits.open()
        self.ended.open()
        self.responses.open()
        if self.state is not None:
            await self.state.start(self.ledger, self.cooldowns, lambda: self.live.reload(tell_others=False), self.ended)
            await self.state.wait_up(2.0)  # so the first requests are counted in Redis, when it is there
        if self.recorder is not None:
            self.recorder.start()
            log.info("recording exchanges to %s (session %s)", self.recorder.sink.where, self.session)
        self.client = self.make_client()
        self._tasks = [asyncio.ensure_future(self.live.watch()), asyncio.ensure_future(_every(1.0, self.metrics.write)),
                       asyncio.ensure_future(_every(0.2, flush_logs))]
        self._unwatch = _reload_on_sighup(asyncio.get_running_loop(), self.live.reload)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        self._unwatch()
        if self.client is not None:
            await self.client.aclose()
            self.client = None
        if self.recorder is not None:
            self.recorder.stop()
        if self.spooler is not None:
            self.spooler.stop()
        self.metrics.forget()
        if self.state is not None:
            await self.state.close()
        self.ended.close()
        self.responses.close()
        self.limits.close()
        self.ledger.close()
        flush_logs(wait=True)


def _reload_on_sighup(loop: asyncio.AbstractEventLoop, reload: Callable[[], object]) -> Callable[[], object]:
    """SIGHUP reloads the config where a signal can be caught: on a platform that has SIGHUP, with the app
    served from the main thread (as ``mooltiproxy serve`` does; an app embedded in another thread leaves
    the process's signals to its host). Returns what undoes it."""
    sighup = getattr(signal, "SIGHUP", None)
    if sighup is None or threading.current_thread() is not threading.main_thread():
        return lambda: None
    loop.add_signal_handler(sighup, reload)
    return lambda: loop.remove_signal_handler(sighup)


async def _every(seconds: float, job: Callable[[], None]) -> None:
    while True:
        await asyncio.sleep(seconds)
        job()
