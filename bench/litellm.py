"""The peer: the LiteLLM proxy, pinned, in its own throwaway virtualenv, run against the same stand-in upstreams.

    python -m bench litellm-setup      # creates bench/.litellm-venv with litellm[proxy]==1.91.1

It runs bound to 127.0.0.1, one worker, no database (only the master key authenticates), with the
local copy of its model cost map so it never reaches for the network. When the virtualenv is
absent the peer is skipped.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from .launch import Service
from .procs import PROXY_CORE, Procs, free_port, wait_listening

PIN = "litellm[proxy]==1.91.1"
VENV = Path(__file__).resolve().parent / ".litellm-venv"
KEY = "sk-bench-master-key-0123456789"  # LiteLLM wants its keys to start with sk-


def binary() -> Path:
    return VENV / "bin" / "litellm"


def installed() -> bool:
    return binary().exists()


def version() -> str:
    out = subprocess.run([str(VENV / "bin" / "python"), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
                         capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


def setup(pin: str = PIN) -> int:
    """Create the virtualenv and install the pinned peer; the pip output tells what did not install."""
    if not (VENV / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    result = subprocess.run([str(VENV / "bin" / "python"), "-m", "pip", "install", pin])
    if result.returncode != 0:
        print(f"{pin} did not install; see pip's message above. "
              "Try another pin: python -m bench litellm-setup --pin 'litellm[proxy]==X.Y.Z'", file=sys.stderr)
        return result.returncode
    print(f"installed litellm {version()} in {VENV}")
    return 0


def start(procs: Procs, workdir: Path, upstreams: dict[str, str]) -> Service:
    """One LiteLLM serving each model name of ``upstreams`` from its upstream (one start: it takes seconds)."""
    doc = {
        "model_list": [{"model_name": name, "litellm_params": {"model": "openai/bench", "api_base": f"{url}/v1", "api_key": "sk-upstream"}}
                       for name, url in upstreams.items()],
        "general_settings": {"master_key": KEY},
        "litellm_settings": {"telemetry": False},
    }
    path = workdir / "litellm.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "VIRTUAL_ENV")}
    env.update(LITELLM_LOCAL_MODEL_COST_MAP="True", PYTHONWARNINGS="ignore")
    argv = [str(binary()), "--config", str(path), "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"]
    proc = procs.start("litellm", argv, core=PROXY_CORE, env=env, cwd=workdir)
    wait_listening(proc, port, timeout=120)
    return Service("litellm", f"http://127.0.0.1:{port}", proc, key=KEY)
