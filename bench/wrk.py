"""Closed-loop capacity with ``wrk`` and ``post.lua``: run it, parse its summary.

wrk's printed percentiles are corrected for coordinated omission (bench/raw.lua says how); ``raw=True``
runs ``raw.lua`` instead, which records every request once, and adds those percentiles beside wrk's.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from .procs import LOAD_CORE, Procs
from .stats import summary

LUA = Path(__file__).resolve().parent / "post.lua"
RAW_LUA = Path(__file__).resolve().parent / "raw.lua"
_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def available() -> bool:
    return shutil.which("wrk") is not None


def run(procs: Procs, url: str, *, connections: int, duration: int, key: str, body: str | None = None,
        target: str | None = None, raw: bool = False) -> dict[str, Any]:
    """``wrk -t1 -cN -dDs --latency`` on the load core; req/s, latency percentiles (ms) and failures.
    With ``raw``, also ``raw``: every request's latency counted once (see ``raw_latency``); the server must echo
    ``x-request-id``."""
    env = dict(os.environ, BENCH_KEY=key)
    if body is not None:
        env["BENCH_BODY"] = body
    if target is not None:
        env["BENCH_TARGET"] = target
    with tempfile.TemporaryDirectory(prefix="bench-wrk-") as tmp:
        raw_out = Path(tmp) / "raw.txt"
        if raw:
            env["BENCH_RAW_OUT"] = str(raw_out)
        argv = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--timeout", "10s", "--latency", "-s",
                str(RAW_LUA if raw else LUA), url]
        proc = procs.start("wrk", argv, core=LOAD_CORE, env=env, stdout=subprocess.PIPE)
        assert proc.popen.stdout is not None
        out = proc.popen.stdout.read().decode()
        proc.popen.wait()
        procs.stop(proc)
        result = parse(out)
        if raw:
            result["raw"] = raw_latency(raw_out.read_text() if raw_out.exists() else "", connections)
    return result


def raw_latency(text: str, connections: int) -> dict[str, Any]:
    """raw.lua's lines (request number, written, answered, status; µs) as latency summaries in ms: ``all`` requests,
    the ``first`` on each connection (they include the wait for the server to accept the connection) and the
    ``rest``. wrk builds one request before it connects, to check it (number 1, never sent); numbers 2 to
    ``connections`` + 1 are the first on each connection, written before any answer came."""
    first: list[float] = []
    rest: list[float] = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 4:
            continue
        ms = (float(parts[2]) - float(parts[1])) / 1000
        (first if int(parts[0]) <= connections + 1 else rest).append(ms)
    return {"all": summary(first + rest), "first": summary(first), "rest": summary(rest)}


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
