"""Every mooltiproxy config the harness runs, built in one place, and whether this build can record.

A variant is a route kind (``passthrough`` to an OpenAI-compatible upstream, or ``tgi``: chat →
TGI ``/generate`` with the llama2-chat prompter) and a recording setting. Recording is probed
once per run by asking ``mooltiproxy check`` about a config with a ``dataset:`` section: a build
that refuses the key cannot record, and every figure that needs recording is reported as skipped
rather than guessed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

MASTER_KEY = "bench-master-key-0123456789"
ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Variant:
    kind: str  # passthrough | tgi | llamacpp
    recording: bool

    @property
    def name(self) -> str:
        return f"{self.kind}-rec-{'on' if self.recording else 'off'}"


@dataclass(frozen=True)
class Recording:
    available: bool
    reason: str = ""  # why not, in the build's own words

    @property
    def skipped(self) -> str:
        return "skipped: recording not available in this build"


def proxy_env() -> dict[str, str]:
    """The proxy's environment: the master key is always set, so a build that enforces it is measured with auth on."""
    return dict(os.environ, MOOLTIPROXY_KEY=MASTER_KEY)


def auth_headers(key: str = MASTER_KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}


def config(variant: Variant, upstream: str, dataset_dir: Path, recording: Recording,
           extra_targets: dict[str, str] | None = None) -> dict[str, Any]:
    """The proxy's config; ``extra_targets`` adds pass-through targets (name → URL) that a ``target`` header picks."""
    if variant.kind == "passthrough":
        target: dict[str, Any] = {"url": upstream}
    elif variant.kind == "tgi":
        target = {"type": "tgi", "url": upstream, "prompter": "llama2-chat"}
    elif variant.kind == "llamacpp":
        # llama-server's /completion, the chat rendered by the prompter the tiny model's own template matches
        target = {"type": "llamacpp", "url": upstream, "prompter": "chatml"}
    else:
        raise ValueError(f"unknown variant kind {variant.kind!r}")
    doc: dict[str, Any] = {"server": {"host": "127.0.0.1"}, "targets": {"default": "up", "up": target}}
    for name, url in (extra_targets or {}).items():
        doc["targets"][name] = {"url": url}
    if variant.recording:
        doc["dataset"] = {"sink": "jsonl", "dir": str(dataset_dir)}
    elif recording.available:
        # A build that records may do so by default; off has to be said.
        doc["dataset"] = {"sink": "none"}
    return doc


def write(doc: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def probe_recording(workdir: Path) -> Recording:
    """Ask this build's ``mooltiproxy check`` whether it accepts a ``dataset:`` section."""
    doc = config(Variant("passthrough", True), "http://127.0.0.1:9", workdir / "probe-dataset", Recording(False))
    path = write(doc, workdir / "probe.yaml")
    result = subprocess.run([sys.executable, "-m", "mooltiproxy", "check", "--config", str(path)], capture_output=True,
                            text=True, env=proxy_env(), cwd=workdir)
    if result.returncode == 0:
        return Recording(True)
    text = (result.stderr + result.stdout).strip()
    if "dataset" in text:
        return Recording(False, " ".join(text.split()))
    raise RuntimeError(f"mooltiproxy check refused the benchmark's config for another reason:\n{text}")
