"""Closed-loop capacity with ``wrk`` and ``post.lua``: run it, parse its summary."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from .procs import LOAD_CORE, Procs

LUA = Path(__file__).resolve().parent / "post.lua"
_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def available() -> bool:
    return shutil.which("wrk") is not None


def run(procs: Procs, url: str, *, connections: int, duration: int, key: str, body: str | None = None,
        target: str | None = None) -> dict[str, Any]:
    """``wrk -t1 -cN -dDs --latency`` on the load core; req/s, latency percentiles (ms) and failures."""
    env = dict(os.environ, BENCH_KEY=key)
    if body is not None:
        env["BENCH_BODY"] = body
    if target is not None:
        env["BENCH_TARGET"] = target
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--timeout", "10s", "--latency", "-s", str(LUA), url]
    proc = procs.start("wrk", argv, core=LOAD_CORE, env=env, stdout=subprocess.PIPE)
    assert proc.popen.stdout is not None
    out = proc.popen.stdout.read().decode()
    proc.popen.wait()
    procs.stop(proc)
    return parse(out)


def parse(out: str) -> dict[str, Any]:
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if rps is None:
        raise RuntimeError(f"wrk printed no Requests/sec:\n{out}")
    result: dict[str, Any] = {"rps": float(rps.group(1)), "non2xx": 0, "socket_errors": 0}
    for q in ("50", "90", "99"):
        m = re.search(rf"^\s+{q}%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M)
        if m:
            result[f"p{q}_ms"] = float(m.group(1)) * _UNITS[m.group(2)]
    m = re.search(r"(\d+) requests in", out)
    result["requests"] = int(m.group(1)) if m else 0
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        result["non2xx"] = int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        result["socket_errors"] = sum(int(g) for g in m.groups())
    return result
