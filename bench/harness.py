"""What every scenario shares: settings, the running servers, load runs, interleaved rounds, checks.

A ``Harness`` lives for one ``python -m bench run``. It owns the ``Procs`` (so everything it starts
is stopped with it), starts the upstreams once, and starts each proxy variant the first time a
scenario asks for it.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import configs, launch, nginx, wrk
from .configs import Recording, Variant
from .launch import Service
from .procs import LOAD_CORE, Proc, Procs

Measure = Callable[[float], dict[str, Any]]

CHAT_BODY = ('{"model":"bench","messages":[{"role":"system","content":"You are terse."},'
             '{"role":"user","content":"Say something short."}],"max_tokens":50}')
STREAM_BODY = CHAT_BODY[:-1] + ',"stream":true}'
CHAT_PATH = "/v1/chat/completions"


@dataclass(frozen=True)
class Settings:
    quick: bool
    rounds: int
    warmup_s: int
    wrk_s: int
    openloop_s: float
    sse_s: float
    sse_tokens: int  # per stream in S3 and S6; BENCHMARKS.md's 50, fewer in a quick run
    long_events: int
    concurrent_streams: int
    concurrent_tokens: int  # events 200 ms apart: how long S4's concurrent streams stay open
    drop_clients: int
    slow_hold_s: float
    big_readers: int  # S7: slow readers, each of one big answer
    big_bytes: int  # S7: the answer's size
    big_rate: int  # S7: bytes per second each slow reader takes
    scale_streams: int  # S8: concurrent translated streams
    scale_tokens: int  # S8: tokens per stream, 20 ms apart

    @classmethod
    def make(cls, quick: bool, rounds: int | None = None) -> Settings:
        if quick:
            return cls(True, rounds or 3, 1, 1, 0.6, 0.3, 10, 20_000, 200, 10, 100, 1.5,
                       big_readers=100, big_bytes=2 * 2**20, big_rate=2**20, scale_streams=200, scale_tokens=50)
        return cls(False, rounds or 5, 2, 5, 5.0, 4.0, 50, 100_000, 1000, 40, 500, 5.0,
                   big_readers=100, big_bytes=10 * 2**20, big_rate=2**20, scale_streams=1000, scale_tokens=300)


@dataclass
class Check:
    label: str
    figure: str  # the measured value, formatted, with its spread
    target: str
    ok: bool | None  # None: skipped or not applicable
    note: str = ""

    @property
    def verdict(self) -> str:
        return "PASS" if self.ok else "SKIP" if self.ok is None else "FAIL"


@dataclass
class Result:
    id: str
    title: str
    lines: list[str] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


def fmt_spread(s: dict[str, Any], unit: str = "", digits: int = 2) -> str:
    if math.isnan(s["median"]):
        return "n/a"
    return f"{s['median']:.{digits}f}{unit} [{s['min']:.{digits}f}–{s['max']:.{digits}f}]"


def at_most(label: str, s: dict[str, Any], limit: float, unit: str, digits: int = 2) -> Check:
    return Check(label, fmt_spread(s, unit, digits), f"≤ {limit:g}{unit}", bool(s["median"] <= limit))


def at_least(label: str, s: dict[str, Any], limit: float, unit: str = "", digits: int = 2) -> Check:
    return Check(label, fmt_spread(s, unit, digits), f"≥ {limit:g}{unit}", bool(s["median"] >= limit))


class Harness:
    def __init__(self, settings: Settings, procs: Procs, workdir: Path, *, profile: bool = False, client: str = "serve",
                 log_level: str = "info", recorder_core: int | None = None, proxy_env: dict[str, str] | None = None) -> None:
        self.s = settings
        self.proxy_env = dict(proxy_env or {})  # added to every proxy's environment (run --proxy-env)
        self.recorder_core = recorder_core  # where a proxy's recorder process runs: None, the proxy's own core
        self.procs = procs
        self.workdir = workdir
        self.profile_dir: Path | None = workdir / "profiles" if profile else None
        self.client = client
        self.log_level = log_level
        self.recording: Recording = configs.probe_recording(workdir)
        self._nginx: str | None = None
        self._relay: str | None = None
        self._aiohttp_relay: Service | None = None
        self._stub: Service | None = None
        self._proxies: dict[str, Service] = {}
        self.results: dict[str, Result] = {}
        self.cache: dict[str, Any] = {}  # raw rounds one scenario measured and another reuses (S2 → S1, S6)

    # ------------------------------------------------------------------ servers

    @property
    def nginx(self) -> str:
        if self._nginx is None:
            _, self._nginx = nginx.start(self.procs, self.workdir)
        return self._nginx

    @property
    def relay(self) -> str:
        """nginx relaying to the nginx upstream from the proxy's core: what the extra hop alone costs."""
        if self._relay is None:
            _, self._relay = nginx.start_relay(self.procs, self.workdir, self.nginx)
        return self._relay

    @property
    def aiohttp_relay(self) -> Service:
        """A minimal aiohttp relay (``bench/relay.py``) to the nginx upstream, on the proxy's core."""
        if self._aiohttp_relay is None:
            self._aiohttp_relay = launch.relay(self.procs, self.nginx)
        return self._aiohttp_relay

    @property
    def stub(self) -> Service:
        if self._stub is None:
            self._stub = launch.stub(self.procs, ttft=0.05, tokens=50, token_delay=0.02)
        return self._stub

    def default_variant(self, kind: str = "passthrough") -> Variant:
        """Recording stays on wherever the build can record."""
        return Variant(kind, self.recording.available)

    def proxy(self, variant: Variant, upstream: str, *, fresh: str = "", client: str | None = None,
              log_level: str | None = None, extra_targets: dict[str, str] | None = None, spare_core: bool = False) -> Service:
        """A running mooltiproxy for ``variant`` in front of ``upstream``; ``fresh`` names a new, separate instance.
        ``client`` and ``log_level`` override the run's ``--client`` and ``--log-level`` for this one; ``extra_targets``
        (name → URL) are pass-through targets beside the default, picked by a ``target`` header (give such a proxy a
        ``fresh`` name). ``spare_core`` runs its recorder process on the load core whatever ``--recorder-core`` says."""
        client = client or self.client
        log_level = log_level or self.log_level
        extra = (f"-{client}" if client != self.client else "") + (f"-log-{log_level}" if log_level != self.log_level else "")
        extra += "-spare-core" if spare_core and self.recorder_core is None else ""
        key = f"{variant.name}{extra}@{upstream}{'#' + fresh if fresh else ''}"
        if key not in self._proxies:
            label = f"{variant.name}{extra}-{'nginx' if upstream == self._nginx else 'stub'}{'-' + fresh if fresh else ''}"
            self._proxies[key] = launch.mooltiproxy(self.procs, self.workdir, variant, upstream, self.recording, client=client,
                                                    log_level=log_level, label=label, extra_targets=extra_targets,
                                                    recorder_core=LOAD_CORE if spare_core else self.recorder_core,
                                                    env=self.proxy_env)
        return self._proxies[key]

    def stop(self, service: Service) -> None:
        """Stop a proxy (or the aiohttp relay); asked for again, it starts anew."""
        self.procs.stop(service.proc)
        self._proxies = {k: v for k, v in self._proxies.items() if v is not service}
        if service is self._aiohttp_relay:
            self._aiohttp_relay = None

    @staticmethod
    def lost_records(service: Service) -> int:
        """Exchange records a proxy says it lost so far (its recorder logs "N lost since start" when the queue is full or
        the sink fails), read from its log."""
        log = service.proc.log
        found = re.findall(r"(\d+) lost since start", log.read_text(errors="replace")) if log.exists() else []
        return max((int(n) for n in found), default=0)

    @staticmethod
    def core_given(service: Service) -> float:
        """Seconds a recording proxy has so far paused to give its core to its recorder process (its /metrics)."""
        req = urllib.request.Request(service.url + "/metrics", headers={"authorization": f"Bearer {configs.MASTER_KEY}"})
        with urllib.request.urlopen(req, timeout=5) as r:
            found = re.search(r"^mooltiproxy_dataset_recorder_core_seconds_total (\S+)$", r.read().decode(), re.M)
        return float(found.group(1)) if found else 0.0

    def stub_stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.stub.url + "/_stats", timeout=5) as r:
            return dict(json.load(r))

    def stub_reset(self) -> None:
        req = urllib.request.Request(self.stub.url + "/_reset", data=b"{}", method="POST")
        with urllib.request.urlopen(req, timeout=5):
            pass

    def stub_idle(self, timeout: float = 15.0) -> None:
        """Wait until the stub has no request left running, so one measurement does not leak into the next."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.stub_stats()["active"] > 0:
            time.sleep(0.05)

    # -------------------------------------------------------------------- loads

    def load(self, spec: dict[str, Any], timeout: float = 600.0, *, core: int = LOAD_CORE) -> dict[str, Any]:
        """One ``bench.load`` run on the load core (or ``core``); its JSON result."""
        return self.finish_load(self.start_load(spec, core=core), timeout)

    def start_load(self, spec: dict[str, Any], *, core: int = LOAD_CORE) -> Proc:
        """A ``bench.load`` run started in the background (another load can run beside it); ``finish_load`` waits for it."""
        return self.procs.start(f"load-{spec['mode']}", [sys.executable, "-m", "bench.load", json.dumps(spec)], core=core,
                                cwd=configs.ROOT, stdout=subprocess.PIPE)

    def finish_load(self, proc: Proc, timeout: float = 600.0) -> dict[str, Any]:
        assert proc.popen.stdout is not None
        out = proc.popen.stdout.read()
        rc = proc.popen.wait(timeout)
        self.procs.stop(proc)
        if rc != 0:
            raise RuntimeError(f"load run {proc.name} failed with status {rc}:\n{proc.tail()}")
        return dict(json.loads(out))

    def wrk(self, service_url: str, key: str, connections: int, duration: float, *, path: str = CHAT_PATH,
            body: str = CHAT_BODY, raw: bool = False) -> dict[str, Any]:
        return wrk.run(self.procs, service_url + path, connections=connections, duration=max(1, round(duration)), key=key, body=body,
                       raw=raw)

    def openloop(self, url: str, key: str, rate: float, duration: float, *, capture: str = "") -> dict[str, Any]:
        return self.load({"mode": "openloop", "url": url, "body": CHAT_BODY, "headers": configs.auth_headers(key), "rate": rate,
                          "duration": duration, "capture": capture})

    def sse(self, url: str, key: str, concurrency: int, duration: float, *, expect_done: bool = True,
            body: str = STREAM_BODY, core: int = LOAD_CORE) -> dict[str, Any]:
        return self.load({"mode": "sse", "url": url, "body": body, "headers": configs.auth_headers(key),
                          "concurrency": concurrency, "duration": duration, "expect_done": expect_done}, core=core)

    # ------------------------------------------------------------------ rounds

    def rounds(self, measures: dict[str, Measure], duration: float, *, warmup: float | None = None) -> dict[str, list[dict[str, Any]]]:
        """A warm-up of each (``warmup=0``: none, the previous measurement warmed it), then ``rounds``
        interleaved rounds (a, b, c, a, b, c, …); every round's result per name."""
        if warmup != 0:
            for m in measures.values():
                m(warmup if warmup is not None else self.s.warmup_s)
        out: dict[str, list[dict[str, Any]]] = {name: [] for name in measures}
        for _ in range(self.s.rounds):
            for name, m in measures.items():
                out[name].append(m(duration))
        return out

    @property
    def profile_s(self) -> float:
        """Long enough for a profile of a few thousand samples, even in a quick run."""
        return max(5.0, self.s.wrk_s)

    def profiled(self, service: Service, label: str, load: Callable[[], object]) -> dict[str, Any] | None:
        """With ``--profile``: one extra, unmeasured run of ``load`` with py-spy sampling the proxy."""
        if self.profile_dir is None:
            return None
        from . import profiling

        return profiling.during(self.procs, service.proc.pid, self.profile_dir / f"{label}.txt", load)
