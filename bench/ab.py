"""Two builds of the proxy side by side, under the same load, alternately: ``python -m bench ab REV``.

The harness's figures are ratios against a direct connection within one run; comparing two runs made an
hour apart mixes the change with the machine's drift. Here a worktree of REV (any git revision) and the
checkout as it is each serve the same near-free nginx upstream from core 0, and wrk loads them in turn,
REV, this, REV, this…, several rounds: the figure is this build's requests per second over REV's, round
by round, with its spread. Both run the same config (pass-through or the TGI translation, recording on
or off) and the same interpreter; each imports its own tree.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from . import configs, nginx, wrk
from .configs import MASTER_KEY, Recording, Variant
from .harness import CHAT_BODY, CHAT_PATH
from .procs import LOAD_CORE, PROXY_CORE, Procs, free_port, pinned, wait_listening
from .stats import spread

ROOT = configs.ROOT


def _proxy(procs: Procs, tree: Path, name: str, config: Path) -> str:
    port = free_port()
    argv = [sys.executable, "-m", "mooltiproxy", "serve", "--config", str(config), "--port", str(port)]
    env = {**configs.proxy_env(), "PYTHONPATH": str(tree)}
    proc = procs.start(name, argv, core=PROXY_CORE, env=env, cwd=tree)
    wait_listening(proc, port)
    return f"http://127.0.0.1:{port}"


def _own_plugins(tree: Path) -> None:
    """Make REV's tree import its own mappers and prompters. They install as ``mooltiproxy.mappers`` and
    ``mooltiproxy.prompters`` from top-level folders; with this checkout installed in editable mode, its finder would
    otherwise hand REV's proxy this checkout's mappers (found when a mapper imported a name REV lacks)."""
    for name in ("mappers", "prompters"):
        link = tree / "mooltiproxy" / name
        if not link.exists():
            link.symlink_to(tree / name, target_is_directory=True)
    probe = "import mooltiproxy.mappers.openai as m, mooltiproxy.prompters as p; print(m.__file__); print(p.__path__[0])"
    found = subprocess.run([sys.executable, "-c", probe], env={"PYTHONPATH": str(tree)}, cwd=tree, capture_output=True, text=True,
                           check=True).stdout.split()
    if not all(Path(f).resolve().is_relative_to(tree.resolve()) for f in found):
        raise SystemExit(f"REV's proxy would import mappers or prompters from outside its tree: {found}")


def run(rev: str, *, kind: str, recording: bool, connections: int, seconds: int, rounds: int) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="mooltiproxy-ab-"))
    tree = workdir / "rev"
    subprocess.run(["git", "worktree", "add", "--detach", str(tree), rev], cwd=ROOT, check=True, capture_output=True)
    try:
        _own_plugins(tree)
        with pinned(LOAD_CORE), Procs(workdir / "logs") as procs:
            _, upstream = nginx.start(procs, workdir)
            urls = {}
            for name, root in (("rev", tree), ("this", ROOT)):
                doc = configs.config(Variant(kind, recording), upstream, workdir / f"dataset-{name}", Recording(True))
                urls[name] = _proxy(procs, root, f"proxy-{name}", configs.write(doc, workdir / f"{name}.yaml"))
            body = CHAT_BODY
            for url in urls.values():  # warm-up
                wrk.run(procs, url + CHAT_PATH, connections=connections, duration=1, key=MASTER_KEY, body=body)
            figures: dict[str, list[float]] = {"rev": [], "this": []}
            for _ in range(rounds):
                for name, url in urls.items():
                    out = wrk.run(procs, url + CHAT_PATH, connections=connections, duration=seconds, key=MASTER_KEY, body=body)
                    figures[name].append(out["rps"])
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, capture_output=True)
        shutil.rmtree(workdir, ignore_errors=True)
    ratios = [t / r for t, r in zip(figures["this"], figures["rev"], strict=True)]
    s = spread(ratios)
    what = f"{kind}, recording {'on' if recording else 'off'}, wrk c={connections}, {seconds} s x {rounds} rounds"
    print(f"{rev}: {', '.join(f'{v:.0f}' for v in figures['rev'])} req/s")
    print(f"this: {', '.join(f'{v:.0f}' for v in figures['this'])} req/s")
    print(f"this / {rev} ({what}): {s['median']:.3f} [{s['min']:.3f}–{s['max']:.3f}]")
    return 0
