"""Where the proxy's CPU goes under a load: py-spy samples it, and the stacks are folded into top functions.

``self`` is the share of samples whose innermost Python frame is the function (C code such as uvloop's
is charged to the Python frame that called it); ``total`` is the share with the function anywhere on
the stack. Only samples of the thread holding the GIL are kept, so the shares are of the time the
proxy was running Python, in any of its threads.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .procs import LOAD_CORE, Procs

_LINE = re.compile(r":\d+\)$")


def py_spy() -> str | None:
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


def during(procs: Procs, pid: int, out: Path, load: Callable[[], object], rate: int = 250) -> dict[str, Any]:
    exe = py_spy()
    if exe is None:
        return {"error": "py-spy is not installed: .venv/bin/pip install py-spy"}
    out.parent.mkdir(parents=True, exist_ok=True)
    raw = out.with_suffix(".raw")
    # --gil keeps only samples of the thread holding the GIL: where the proxy's one core actually goes,
    # without a worker thread's waiting counted as work.
    argv = [exe, "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw", "--output", str(raw), "--nonblocking", "--gil"]
    spy = procs.start(f"py-spy-{out.stem}", argv, core=LOAD_CORE)
    time.sleep(0.5)
    t0 = time.monotonic()
    try:
        load()
    finally:
        seconds = time.monotonic() - t0
        spy.popen.send_signal(signal.SIGINT)
        try:
            spy.popen.wait(30)
        except subprocess.TimeoutExpired:
            procs.stop(spy)
    if not raw.exists():
        return {"error": f"py-spy wrote no profile:\n{spy.tail()}"}
    result = fold(raw.read_text())
    result["busy_share"] = result["samples"] / (rate * seconds) if seconds else 0.0
    out.write_text(render(result))
    result["file"] = str(out)
    return result


# Where a file lives says nothing about its cost: frames are named from the project's root, from
# site-packages, or from the standard library's folder.
_PREFIX = re.compile(r"\((?:.*/site-packages/|" + re.escape(str(Path(__file__).resolve().parent.parent)) + r"/|.*/lib/python3\.\d+/)")


def _name(frame: str) -> str:
    return _PREFIX.sub("(", _LINE.sub(")", frame), count=1)


# Frames every sample of the serving thread passes through: they say nothing about cost.
_OUTER = ("<frozen runpy>", "mooltiproxy/__main__.py", "mooltiproxy/cli/main.py", "mooltiproxy/http/server.py", "uvicorn/server.py",
          "uvicorn/_compat.py", "asyncio/runners.py", "threading.py")


# The proxy's parts, by the file of a sample's innermost frame (first match wins).
AREAS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("access log", ("logging/", "mooltiproxy/ops/logs")),
    ("recording", ("mooltiproxy/dataset/",)),
    ("guard (bans, addresses, keys, CORS)", ("ipaddress", "hmac", "hashlib", "mooltiproxy/guard/", "mooltiproxy/http/cors")),
    ("translation (mappers, prompter, Jinja)", ("jinja2/", "<template>", "re/", "mooltiproxy/translate/", "mappers/",
                                                "mooltiproxy/mappers/")),
    ("upstream client", ("mooltiproxy/upstream/", "aiohttp/", "yarl/", "multidict/", "aiohappyeyeballs/", "httpx/", "httpcore/",
                         "bench/aiohttp_client")),
    ("server (uvicorn)", ("uvicorn/", "mooltiproxy/http/protocol", "mooltiproxy/http/server")),
    ("starlette routing and middleware", ("starlette/",)),
    ("pipeline, context, body, SSE", ("mooltiproxy/",)),
    ("event loop and tasks", ("asyncio/",)),
)


def area(file: str) -> str:
    for name, prefixes in AREAS:
        if file.startswith(prefixes):
            return name
    return "other"


def _file(frame: str) -> str:
    return frame.rpartition("(")[2].rstrip(")")


def fold(raw: str, top: int = 30) -> dict[str, Any]:
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    files: Counter[str] = Counter()
    areas: Counter[str] = Counter()
    samples = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        frames = [_name(f) for f in stack.split(";") if "(" in f]
        if not frames:
            continue
        samples += n
        own[frames[-1]] += n
        files[_file(frames[-1])] += n
        areas[area(_file(frames[-1]))] += n
        for f in set(frames):
            if not _file(f).startswith(_OUTER):
                total[f] += n
    share = (lambda c: c / samples) if samples else (lambda c: 0.0)
    return {
        "samples": samples,
        "self": [(f, share(c)) for f, c in own.most_common(top)],
        "total": [(f, share(c)) for f, c in total.most_common(top)],
        "files": [(f, share(c)) for f, c in files.most_common(top)],
        "areas": [(f, share(c)) for f, c in areas.most_common()],
    }


def render(result: dict[str, Any]) -> str:
    lines = [f"busy samples: {result['samples']} (busy share of the proxy's core ≈ {result.get('busy_share', 0):.0%})", "",
             "self  area"]
    lines += [f"{s:5.1%} {f}" for f, s in result["areas"]]
    lines += ["", "self  function"]
    lines += [f"{s:5.1%} {f}" for f, s in result["self"]]
    lines += ["", "total function"]
    lines += [f"{s:5.1%} {f}" for f, s in result["total"]]
    lines += ["", "self  file"]
    lines += [f"{s:5.1%} {f}" for f, s in result["files"]]
    return "\n".join(lines) + "\n"
