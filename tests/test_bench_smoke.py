"""The benchmark harness itself: a quick run of its cheapest scenario gives figures and leaves no process behind.

Timings are not asserted: this machine's speed is not the harness's business in the normal suite.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import bench.__main__ as bench
from bench.procs import pid_running

from .conftest import ROOT
from .debian import program

pytestmark = [
    pytest.mark.bench,
    pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="the harness pins the proxy and the load to two different cores"),
]


def run_bench(*args: str, timeout: float = 180) -> tuple[int, str]:
    """``python -m bench`` with ``args``: its exit status and everything it printed. Past ``timeout`` it gets SIGTERM,
    as from Ctrl-C, so that it stops what it started and writes what it measured (a SIGKILL would leave both
    undone)."""
    proc = subprocess.Popen([sys.executable, "-m", "bench", *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
        out += f"\n(the run took more than {timeout:g} s and was stopped)"
    return proc.returncode, out


def test_quick_run_gives_figures_and_cleans_up(tmp_path: Path) -> None:
    for name, package in bench.PROGRAMS.items():
        program(name, package, "/usr/sbin/" + name)
    out = tmp_path / "results.json"
    # S5 needs only the stub and one proxy, and takes a few seconds.
    code, printed = run_bench("run", "--quick", "S5", "--json", str(out))
    assert out.exists(), printed  # written whatever ended the run, with the reason
    doc = json.loads(out.read_text())
    assert doc["status"] == "done", (doc["failure"], printed)
    assert code in (0, 1), printed  # 1: a target missed, which is not this test's business
    s5 = doc["scenarios"]["S5"]
    assert s5["error"] is None
    labels = {c["label"]: c for c in s5["checks"]}
    cancelled = labels["upstream requests cancelled within 1 s (worst round)"]
    assert cancelled["figure"].endswith("/100") and cancelled["verdict"] in ("PASS", "FAIL")
    assert [len(r) for r in s5["data"]["rounds"].values()] == [doc["settings"]["rounds"]] * 2
    assert "S5" in printed and "summary" in printed

    started = doc["pids"]
    assert len(started) >= 3  # stub, proxy, load runs
    assert [pid for pid in started if pid_running(pid)] == []


def test_proxy_env_reaches_the_proxy_and_its_recorder_process(tmp_path: Path) -> None:
    """``run --proxy-env NAME=VALUE`` (an allocator setting, say) is in the environment of the proxy and of the recorder
    process it starts, and in nobody else's."""
    from bench import configs, launch
    from bench.procs import Procs

    assert bench._assignment("MALLOC_MMAP_THRESHOLD_=131072") == ("MALLOC_MMAP_THRESHOLD_", "131072")
    assert bench._assignment("A=b=c") == ("A", "b=c")
    with pytest.raises(argparse.ArgumentTypeError, match="is not NAME=VALUE"):
        bench._assignment("NAME")
    with Procs(tmp_path / "logs") as procs:
        proxy = launch.mooltiproxy(procs, tmp_path, configs.Variant("passthrough", True), "http://127.0.0.1:9",
                                   configs.Recording(True), env={"MOOLTIPROXY_BENCH_PROBE": "yes"})
        assert proxy.recorder is not None
        for pid in (proxy.proc.pid, proxy.recorder):
            assert b"MOOLTIPROXY_BENCH_PROBE=yes" in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    assert "MOOLTIPROXY_BENCH_PROBE" not in configs.proxy_env()


def test_micro_timings_run_every_step() -> None:
    run = subprocess.run([sys.executable, "-m", "bench.micro", "--quick"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].startswith("µs per call") and len(lines) == 12
    assert all(float(line.rsplit(maxsplit=1)[1]) > 0 for line in lines[1:])


def test_profiles_fold_into_areas_named_from_the_project_root() -> None:
    from bench.profiling import fold

    root = str(ROOT)
    raw = "\n".join([
        f"run (/usr/lib/python3.11/asyncio/runners.py:118);_relay ({root}/mooltiproxy/proxy/pipeline.py:455) 3",
        "run (/usr/lib/python3.11/asyncio/runners.py:118);send (/v/lib/python3.11/site-packages/uvicorn/protocols/http/h.py:9) 1",
        f"run (/usr/lib/python3.11/asyncio/runners.py:118);send ({root}/mooltiproxy/upstream/h1.py:230) 1",
    ])
    result = fold(raw)
    assert result["samples"] == 5
    assert result["self"][0] == ("_relay (mooltiproxy/proxy/pipeline.py)", 0.6)
    assert dict(result["areas"]) == {"pipeline, context, body, SSE": 0.6, "server (uvicorn)": 0.2, "upstream client": 0.2}
