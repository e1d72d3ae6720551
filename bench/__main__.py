"""The runner: ``python -m bench run [--quick] [SCENARIO…]`` and ``python -m bench litellm-setup``.

The runner itself sits on the load core; the proxy gets core 0 to itself. Whatever happens (a target
missed, a scenario failing, Ctrl-C, SIGTERM), every process it started is stopped before it exits,
and the JSON of what was measured so far is written to bench/out/.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

from . import ab, litellm, nginx, report
from .harness import Harness, Result, Settings
from .procs import LOAD_CORE, Procs, pinned
from .scenarios import ORDER, runners

OUT = Path(__file__).resolve().parent / "out"


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _assignment(text: str) -> tuple[str, str]:
    """NAME=VALUE of ``--proxy-env``."""
    name, eq, value = text.partition("=")
    if not eq or not name:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=VALUE")
    return name, value


def _selected(names: list[str], quick: bool) -> set[str]:
    # LiteLLM alone takes seconds to start and is slow to measure: a quick run leaves it out unless named.
    # S9 needs llama-server built by the tests' script; a quick run leaves it out too.
    chosen = {n.upper() for n in names} or (set(ORDER) - {"PEER", "S9"} if quick else set(ORDER))
    unknown = chosen - set(ORDER)
    if unknown:
        raise SystemExit(f"unknown scenario {', '.join(sorted(unknown))}; choose from {', '.join(ORDER)}")
    return chosen


# The programs a run needs, and the Debian package that has each.
PROGRAMS = {"wrk": "wrk", "taskset": "util-linux", "nginx": "nginx-light"}


def preflight() -> str | None:
    """Why this machine cannot run the harness, or None."""
    found = {"nginx": nginx.binary()}
    missing = [tool for tool in PROGRAMS if (found[tool] if tool in found else shutil.which(tool)) is None]
    if missing:
        return f"missing {', '.join(missing)}: apt-get install {' '.join(PROGRAMS[t] for t in missing)}"
    if len(os.sched_getaffinity(0)) < 2:
        return "the harness needs two cores (proxy on core 0, upstream and load on core 1)"
    return None


def run(args: argparse.Namespace) -> int:
    """Run the selected scenarios. Whatever stops the run (a machine that cannot run it, a scenario that fails,
    Ctrl-C, SIGTERM, a bug in the runner), the JSON says so and what was measured until then is kept."""
    selected = _selected(args.scenarios, args.quick)
    settings = Settings.make(args.quick, args.rounds)
    started = datetime.now(UTC)
    stamp = started.strftime("%Y%m%d-%H%M%S")
    json_path = Path(args.json) if args.json else OUT / f"results-{stamp}{'-quick' if args.quick else ''}.json"
    signal.signal(signal.SIGTERM, _terminate)
    # Started in the background by a script, a process inherits SIGINT ignored; a run must still stop on it.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    results: list[Result] = []
    t0 = time.monotonic()
    status = "interrupted"
    failure = None
    pids: list[int] = []
    recording = None
    code: dict[str, object] = {}
    workdir: Path | None = None
    try:
        code = report.code_state()  # taken first: the tree may change while a long run goes on
        refusal = preflight()
        if refusal is not None:
            status, failure = "refused", refusal
            print(refusal, file=sys.stderr)
            return 2
        workdir = Path(tempfile.mkdtemp(prefix="mooltiproxy-bench-"))
        print(f"mooltiproxy bench: {'quick' if args.quick else 'full'} run of {', '.join(s for s in ORDER if s in selected)}; "
              f"{settings.rounds} interleaved rounds after a warm-up; work dir {workdir}"
              + "".join(f"; proxies started with {n}={v}" for n, v in args.proxy_env or ()), flush=True)
        with pinned(LOAD_CORE), Procs(workdir / "logs") as procs:
            try:
                h = Harness(settings, procs, workdir, profile=args.profile, client=args.client, log_level=args.log_level,
                            recorder_core=LOAD_CORE if args.recorder_core == "load" else None, proxy_env=dict(args.proxy_env or ()))
                recording = {"available": h.recording.available, "reason": h.recording.reason}
                if not h.recording.available:
                    print(f"recording: not available in this build ({h.recording.reason})", flush=True)
                for sid, fn in runners(selected).items():
                    t = time.monotonic()
                    try:
                        res = fn(h)
                    except Exception as exc:
                        res = Result(sid, "failed", error=f"{type(exc).__name__}: {exc}")
                        traceback.print_exc()
                    results.append(res)
                    report.show(res, time.monotonic() - t)
                status = "done"
            finally:
                pids = procs.pids()
    except KeyboardInterrupt:
        print("\ninterrupted: every process the run started has been stopped", file=sys.stderr)
    except Exception as exc:  # the runner's own failure: said in the JSON too, so a caller sees why
        status, failure = "failed", f"{type(exc).__name__}: {exc}"
        traceback.print_exc()
    finally:
        elapsed = time.monotonic() - t0
        meta = {"started": started.isoformat(timespec="seconds"), "elapsed_s": round(elapsed, 1), "status": status,
                "failure": failure, "command": "python -m bench " + " ".join(sys.argv[1:]), "quick": args.quick,
                "settings": settings.__dict__, "machine": report.machine(), "code": code, "code_at_end": report.code_state(),
                "recording": recording, "pids": pids}
        report.write(json_path, meta, results)
        if workdir is not None:
            if args.keep:
                print(f"logs and configs kept in {workdir}")
            else:
                shutil.rmtree(workdir, ignore_errors=True)
    print(report.summary(results))
    print(f"\n{status} in {elapsed:.0f} s; results in {json_path}")
    if status != "done" or any(r.error for r in results):
        return 2
    return 1 if any(c.ok is False for r in results for c in r.checks) else 0


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench", description="mooltiproxy against a direct connection, same run.")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run scenarios (all by default)")
    r.add_argument("scenarios", nargs="*", metavar="SCENARIO", help=" ".join(ORDER))
    r.add_argument("--quick", action="store_true", help="short runs for a sanity check (about a minute; PEER only when named)")
    r.add_argument("--rounds", type=int, help="interleaved rounds after the warm-up (at least 3)")
    r.add_argument("--profile", action="store_true", help="also sample the proxy with py-spy during one extra load per scenario")
    r.add_argument("--client", default="serve", choices=["serve", "serve-gc-default", "serve-granian", "aiohttp", "httpx",
                                                                  "httpx-aiohttp"],
                   help="the proxy as run: serve (mooltiproxy serve as shipped), serve-gc-default (the same with Python's default "
                        "garbage collection), serve-granian (the same app under granian instead of uvicorn; pip install "
                        "granian), or another upstream client for comparison")
    r.add_argument("--recorder-core", default="proxy", choices=["proxy", "load"],
                   help="where a recording proxy's recorder process runs: the proxy's core (default: one core in all; S2 also "
                        "measures it on the load core, a spare core) or the load core")
    r.add_argument("--log-level", default="info", help="the proxy's log level (its default, info, writes an access line per request)")
    r.add_argument("--proxy-env", type=_assignment, action="append", metavar="NAME=VALUE",
                   help="a variable added to every proxy's environment (and its recorder process's), e.g. "
                        "MALLOC_MMAP_THRESHOLD_=131072; may be given again")
    r.add_argument("--json", help="where to write the results (default: bench/out/results-<time>.json)")
    r.add_argument("--keep", action="store_true", help="keep the work dir (configs, logs, profiles)")
    compare = sub.add_parser("ab", help="this checkout against another revision, side by side, alternating (requests per second)")
    compare.add_argument("rev", help="the git revision to compare with (a worktree of it is made and removed)")
    compare.add_argument("--kind", default="passthrough", choices=["passthrough", "tgi"])
    compare.add_argument("--recording", choices=["on", "off"], default="on")
    compare.add_argument("--connections", type=int, default=8)
    compare.add_argument("--seconds", type=int, default=4)
    compare.add_argument("--rounds", type=int, default=6)
    s = sub.add_parser("litellm-setup", help="create bench/.litellm-venv with the pinned LiteLLM proxy")
    s.add_argument("--pin", default=litellm.PIN)
    args = p.parse_args()
    if args.command == "litellm-setup":
        sys.exit(litellm.setup(args.pin))
    if args.command == "ab":
        refusal = preflight()
        if refusal is not None:
            raise SystemExit(refusal)
        sys.exit(ab.run(args.rev, kind=args.kind, recording=args.recording == "on", connections=args.connections,
                        seconds=args.seconds, rounds=args.rounds))
    if args.rounds is not None and args.rounds < 3:
        p.error("--rounds must be at least 3")
    sys.exit(run(args))


if __name__ == "__main__":
    main()
