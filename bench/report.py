"""How results are shown: each scenario's figures and verdicts as it finishes, a summary, and the JSON file."""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from .harness import Result


def show(res: Result, seconds: float) -> None:
    print(f"\n{res.id} · {res.title}  ({seconds:.0f} s)", flush=True)
    for line in res.lines:
        print(f"  {line}")
    for c in res.checks:
        note = f"  — {c.note}" if c.note else ""
        print(f"  [{c.verdict}] {c.label}: {c.figure}   target {c.target}{note}")
    if res.error:
        print(f"  [ERROR] {res.error}")
    print(flush=True)


def summary(results: list[Result]) -> str:
    lines = ["", "summary"]
    for res in results:
        if res.error:
            lines.append(f"  {res.id:<8} ERROR  {res.error.splitlines()[0]}")
        for c in res.checks:
            lines.append(f"  {res.id:<8} {c.verdict:<5}  {c.label}: {c.figure} (target {c.target})")
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for tool in (["wrk", "-v"], ["nginx", "-v"]):
        try:
            out = subprocess.run(tool, capture_output=True, text=True, timeout=5)
            versions[tool[0]] = (out.stdout + out.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            versions[tool[0]] = "missing"
    return {"nproc": os.cpu_count(), "cpu": model, "python": platform.python_version(), "kernel": platform.release(), **versions}


def code_state() -> dict[str, Any]:
    """The commit measured, and how many files of the proxy differed from it (others may be editing)."""
    def git(*args: str) -> str:
        root = Path(__file__).resolve().parent.parent
        try:
            return subprocess.run(["git", *args], capture_output=True, text=True, timeout=10, cwd=root).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""

    changed = git("status", "--porcelain", "--", "mooltiproxy", "mappers", "prompters")
    return {"commit": git("rev-parse", "--short", "HEAD"), "uncommitted_proxy_files": len(changed.splitlines()) if changed else 0}


def _clean(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def write(path: Path, meta: dict[str, Any], results: list[Result]) -> None:
    doc = {
        **meta,
        "scenarios": {
            r.id: {"title": r.title, "lines": r.lines, "error": r.error,
                   "checks": [{"label": c.label, "figure": c.figure, "target": c.target, "verdict": c.verdict, "note": c.note}
                              for c in r.checks],
                   "data": r.data}
            for r in results
        },
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_clean(doc), indent=1, default=str))
