"""One load run in its own process (pinned by the runner to the load core): a JSON spec in, a JSON result out.

    python -m bench.load '{"mode": "openloop", "url": "...", "rate": 200, "duration": 5, ...}'

Modes: ``openloop`` (bench.openloop), ``sse`` (closed-loop streams), ``burst`` (n streams at once,
optionally dropped after k events), ``slow`` (a client that reads nothing), ``slow_readers`` (n big answers,
each read at a fixed rate: bench.slow_readers). A fresh process per run
keeps one run's garbage and connections out of the next.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Coroutine
from typing import Any

from . import openloop, slow_readers, sse_client


def _body(spec: dict[str, Any]) -> bytes:
    return str(spec["body"]).encode()


def run(spec: dict[str, Any]) -> Coroutine[Any, Any, dict[str, Any]]:
    mode = spec["mode"]
    url, body, headers = spec["url"], _body(spec), dict(spec.get("headers", {}))
    if mode == "openloop":
        return openloop.open_loop(url, body, headers, rate=spec["rate"], duration=spec["duration"], capture=spec.get("capture", ""),
                                  connections=spec.get("connections", 32))
    if mode == "sse":
        return sse_client.closed_loop(url, body, headers, concurrency=spec["concurrency"], duration=spec["duration"],
                                      expect_done=spec.get("expect_done", True))
    if mode == "burst":
        return sse_client.burst(url, body, headers, n=spec["n"], drop_after=spec.get("drop_after"),
                                expect_done=spec.get("expect_done", True), timeout=spec.get("timeout", 60.0),
                                warm_url=spec.get("warm_url"), cpu_pid=spec.get("cpu_pid"))
    if mode == "slow":
        return sse_client.slow_reader(url, body, headers, hold=spec["hold"])
    if mode == "slow_readers":
        return slow_readers.slow_readers(url, body, headers, n=spec["n"], rate=spec["rate"], reference=spec["reference"],
                                         reference_headers=spec.get("reference_headers"), timeout=spec.get("timeout", 120.0),
                                         spread=spec.get("spread", 0.0))
    raise SystemExit(f"unknown mode {mode!r}")


def main() -> None:
    spec = json.loads(sys.argv[1])
    try:
        import uvloop
    except ImportError:
        result = asyncio.run(run(spec))
    else:
        result = uvloop.run(run(spec))
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
