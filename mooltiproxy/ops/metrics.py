"""Metrics in the Prometheus text format, summed over every worker process.

Each process counts in memory (a dictionary update per request) and leaves a snapshot in
``<dataset.dir>/metrics/worker-<pid>.json``, refreshed every second and whenever it answers a scrape
(so another worker's figures lag by a second at most). ``GET /metrics`` sums the snapshots: counters
and histograms of every process that ever wrote one (so they never go backwards when a worker is
replaced), gauges of the processes still alive.
"""

from __future__ import annotations

import bisect
import json
import logging
import os
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ..state.files import write_private

log = logging.getLogger("mooltiproxy")

# Series of requests_total one process keeps: labels come from the config (targets, routes, dynamic hosts), so
# this is never reached in use; a flood of new label values past it is counted under target "(other)".
MAX_SERIES = 2000
UPSTREAM_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1)

HELP = {
    "mooltiproxy_requests_total": ("counter", "Requests answered, by target, route and status."),
    "mooltiproxy_upstream_seconds": ("histogram", "Time from sending a request upstream to its answer's end, by target."),
    "mooltiproxy_overhead_seconds": ("histogram", "Time spent in the proxy itself, the upstream's time taken out."),
    "mooltiproxy_upstream_failures_total": ("counter", "Upstream attempts that failed (connect error, 5xx, 429), by target."),
    "mooltiproxy_active_streams": ("gauge", "Streams being relayed now."),
    "mooltiproxy_dataset_records_written_total": ("counter", "Dataset records written."),
    "mooltiproxy_dataset_records_lost_total": ("counter", "Dataset records that could not be written (queue full, disk failure)."),
    "mooltiproxy_dataset_records_spilled_total": ("counter", "Dataset records the sink could not take in time, written to a local "
                                                             "JSONL file instead."),
    "mooltiproxy_dataset_records_altered_total": ("counter", "Dataset records written with a part that could not be written as it "
                                                             "was (nested too deep, say) kept as text; meta.altered says what."),
    "mooltiproxy_dataset_recorder_core_seconds_total": ("counter", "Seconds the proxy paused to give its core to the recorder "
                                                        "process, which was behind and waiting for it: give it a core of its own."),
    "mooltiproxy_dataset_records_held": ("gauge", "Dataset records waiting for a sink that failed, to be tried again."),
    "mooltiproxy_bans": ("gauge", "Addresses banned now."),
    "mooltiproxy_state_up": ("gauge", "Whether the shared state (Redis) is reachable: 1, or 0 while this instance runs on its own state."),
}


class Histogram:
    __slots__ = ("buckets", "count", "counts", "sum")

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1

    def dump(self) -> dict[str, Any]:
        return {"counts": self.counts, "sum": self.sum, "count": self.count}


class Metrics:
    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        self.requests: dict[tuple[str, str, str], int] = defaultdict(int)
        self.failures: dict[str, int] = defaultdict(int)
        self.upstream: dict[str, Histogram] = {}
        self.overhead = Histogram(OVERHEAD_BUCKETS)
        self.streams = 0
        self.gauges: dict[str, Callable[[], float]] = {}  # read at snapshot time (dataset counters, ...)

    # ---------------------------------------------------------------------------- counting

    def request(self, target: str | None, route: str | None, status: int, upstream_ms: float | None, total_ms: float) -> None:
        key = (target or "-", route or "-", str(status))
        if key not in self.requests and len(self.requests) >= MAX_SERIES:
            key = ("(other)", "(other)", str(status))
            target = None if target not in self.upstream else target
        self.requests[key] += 1
        if upstream_ms is not None and target:
            hist = self.upstream.get(target)
            if hist is None:
                hist = self.upstream[target] = Histogram(UPSTREAM_BUCKETS)
            hist.observe(upstream_ms / 1000)
            self.overhead.observe(max(0.0, total_ms - upstream_ms) / 1000)

    def failed(self, target: str) -> None:
        self.failures[target] += 1

    # ---------------------------------------------------------------------------- sharing

    def snapshot(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "counters": {
                "mooltiproxy_requests_total": [[{"target": t, "route": r, "status": s}, n] for (t, r, s), n in self.requests.items()],
                "mooltiproxy_upstream_failures_total": [[{"target": t}, n] for t, n in self.failures.items()],
                **{name: [[{}, read()]] for name, read in self.gauges.items() if name.endswith("_total")},
            },
            "histograms": {
                "mooltiproxy_upstream_seconds": [[{"target": t}, h.dump()] for t, h in self.upstream.items()],
                "mooltiproxy_overhead_seconds": [[{}, self.overhead.dump()]],
            },
            "gauges": {"mooltiproxy_active_streams": [[{}, self.streams]],
                       **{name: [[{}, read()]] for name, read in self.gauges.items() if not name.endswith("_total")}},
        }

    def write(self) -> None:
        if self.directory is None:
            return
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            write_private(self.directory / f"worker-{os.getpid()}.json", json.dumps(self.snapshot()).encode())
        except OSError as exc:
            log.warning("could not write the metrics snapshot: %s", exc)

    def snapshots(self) -> list[dict[str, Any]]:
        if self.directory is None or not self.directory.is_dir():
            return [self.snapshot()]
        out = []
        for path in self.directory.glob("worker-*.json"):
            try:
                out.append(json.loads(path.read_text()))
            except (OSError, ValueError):
                continue
        return out

    def render(self, extra_gauges: Iterable[tuple[str, float]] = ()) -> str:
        """The Prometheus text for every worker's snapshot, this one's fresh."""
        self.write()
        snaps = self.snapshots()
        counters: dict[str, dict[tuple[tuple[str, str], ...], float]] = defaultdict(lambda: defaultdict(float))
        hists: dict[str, dict[tuple[tuple[str, str], ...], dict[str, Any]]] = defaultdict(dict)
        gauges: dict[str, dict[tuple[tuple[str, str], ...], float]] = defaultdict(lambda: defaultdict(float))
        for snap in snaps:
            alive = _alive(int(snap.get("pid", 0)))
            for name, series in snap.get("counters", {}).items():
                for labels, value in series:
                    counters[name][tuple(sorted(labels.items()))] += value
            for name, series in snap.get("histograms", {}).items():
                for labels, h in series:
                    key = tuple(sorted(labels.items()))
                    into = hists[name].setdefault(key, {"counts": [0] * len(h["counts"]), "sum": 0.0, "count": 0})
                    into["counts"] = [a + b for a, b in zip(into["counts"], h["counts"], strict=True)]
                    into["sum"] += h["sum"]
                    into["count"] += h["count"]
            if alive:
                for name, series in snap.get("gauges", {}).items():
                    for labels, value in series:
                        gauges[name][tuple(sorted(labels.items()))] += value
        for name, value in extra_gauges:
            gauges[name][()] = value
        lines: list[str] = []
        for name in HELP:
            kind, text = HELP[name]
            if name in counters or name in hists or name in gauges:
                lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
            for labels, value in sorted(counters.get(name, {}).items()):
                lines.append(f"{name}{_labels(labels)} {value:g}")
            for labels, value in sorted(gauges.get(name, {}).items()):
                lines.append(f"{name}{_labels(labels)} {value:g}")
            for labels, h in sorted(hists.get(name, {}).items()):
                buckets = UPSTREAM_BUCKETS if name == "mooltiproxy_upstream_seconds" else OVERHEAD_BUCKETS
                running = 0
                for bound, count in zip((*buckets, float("inf")), h["counts"], strict=True):
                    running += count
                    le = "+Inf" if bound == float("inf") else f"{bound:g}"
                    lines.append(f"{name}_bucket{_labels((*labels, ('le', le)))} {running}")
                lines.append(f"{name}_sum{_labels(labels)} {h['sum']:.6f}")
                lines.append(f"{name}_count{_labels(labels)} {h['count']}")
        return "\n".join(lines) + "\n"

    def forget(self) -> None:
        """At a clean stop: keep the counters for the totals, but this process's gauges are over."""
        self.streams = 0
        self.write()


def _labels(pairs: Iterable[tuple[str, str]]) -> str:
    items = list(pairs)
    if not items:
        return ""
    return "{" + ",".join(f'{k}="{_escape(str(v))}"' for k, v in items) + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
