"""Starting the servers under test: the stub upstream on the load core, mooltiproxy on the proxy core.

mooltiproxy runs as its users run it, ``python -m mooltiproxy serve`` at its default log level (its
access line per request is part of the cost), unless another upstream client is asked for, which
only ``bench/proxy.py`` can plug in.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from . import configs
from .procs import LOAD_CORE, PROXY_CORE, Proc, Procs, free_port, recorder_process, wait_listening


@dataclass
class Service:
    name: str
    url: str
    proc: Proc
    key: str = configs.MASTER_KEY
    dataset_dir: Path | None = None
    recorder: int | None = None  # the pid of its recorder process, when it records in one


def stub(procs: Procs, *, ttft: float, tokens: int, token_delay: float) -> Service:
    port = free_port()
    argv = [sys.executable, "-m", "bench.stub", "--port", str(port), "--ttft", str(ttft), "--tokens", str(tokens),
            "--token-delay", str(token_delay)]
    proc = procs.start("stub", argv, core=LOAD_CORE, cwd=configs.ROOT)
    wait_listening(proc, port)
    return Service("stub", f"http://127.0.0.1:{port}", proc)


def mooltiproxy(procs: Procs, workdir: Path, variant: configs.Variant, upstream: str, recording: configs.Recording, *,
                client: str = "serve", log_level: str = "info", label: str = "", extra_targets: dict[str, str] | None = None,
                recorder_core: int | None = None, env: dict[str, str] | None = None) -> Service:
    """A proxy on the proxy's core. Its recorder process (recording on) starts there too, as a child of a pinned process;
    ``recorder_core`` moves it to that core instead. ``env``: variables added to the proxy's environment (its recorder
    process inherits them)."""
    name = f"mooltiproxy-{label or variant.name}"
    dataset_dir = workdir / f"dataset-{label or variant.name}"
    path = configs.write(configs.config(variant, upstream, dataset_dir, recording, extra_targets), workdir / f"{name}.yaml")
    port = free_port()
    env = {**configs.proxy_env(), **(env or {})}
    if client == "serve":
        argv = [sys.executable, "-m", "mooltiproxy", "serve", "--config", str(path), "--port", str(port), "--log-level", log_level]
    elif client == "serve-granian":  # the same app under granian (bench/granian_app.py): one worker, one Rust thread
        argv = [sys.executable, "-m", "granian", "--interface", "asgi", "--factory", "--loop", "uvloop", "--workers", "1",
                "--runtime-threads", "1", "--runtime-mode", "st", "--no-ws", "--host", "127.0.0.1", "--port", str(port),
                "--log-level", "warning", "--no-access-log", "bench.granian_app:app"]
        env = {**env, "MOOLTIPROXY_BENCH_CONFIG": str(path), "MOOLTIPROXY_BENCH_LOG_LEVEL": log_level}
    else:
        swapped = ["--client", "h1", "--gc", "default"] if client == "serve-gc-default" else ["--client", client]
        argv = [sys.executable, "-m", "bench.proxy", "--config", str(path), "--port", str(port), "--log-level", log_level, *swapped]
    proc = procs.start(name, argv, core=PROXY_CORE, env=env, cwd=configs.ROOT)
    wait_listening(proc, port)
    recorder = recorder_process(proc.pid, timeout=5.0) if variant.recording else None
    if recorder is not None and recorder_core is not None:
        os.sched_setaffinity(recorder, {recorder_core})
    return Service(name, f"http://127.0.0.1:{port}", proc, dataset_dir=dataset_dir if variant.recording else None, recorder=recorder)


def relay(procs: Procs, upstream: str) -> Service:
    """The minimal aiohttp relay (bench/relay.py) on the proxy's core."""
    port = free_port()
    argv = [sys.executable, "-m", "bench.relay", "--port", str(port), "--upstream", upstream]
    proc = procs.start("aiohttp-relay", argv, core=PROXY_CORE, cwd=configs.ROOT)
    wait_listening(proc, port)
    return Service("aiohttp-relay", f"http://127.0.0.1:{port}", proc)
