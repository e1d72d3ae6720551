"""FAIR: under saturation, does any request wait while others overtake it? S2's load at c=128 (wrk, closed loop,
nginx upstream) through the proxy as shipped, with recording off, with the access log at warning level, with
Python's default garbage collection, and through a minimal aiohttp relay (bench/relay.py) on the same core,
in interleaved rounds.

Two sets of percentiles. wrk's own, as it prints them: wrk 4 corrects its histogram for coordinated omission
before printing it (each answer slower than twice the mean cycle adds samples at every multiple of the cycle
below it, as if a client had been kept from sending). And each request counted once (bench/raw.lua). The
first request on each of wrk's new connections also waits until the server accepts the connection (uvloop
accepts one connection per turn of its event loop); its latency is shown apart, as the accept wait.
"""

from __future__ import annotations

from typing import Any

from ..configs import MASTER_KEY, Variant
from ..harness import Check, Harness, Measure, Result, at_most, fmt_spread
from ..launch import Service
from ..stats import paired, spread

C = 128


def services(h: Harness) -> dict[str, Service]:
    """name → service; ``proxy`` as shipped (recording on where the build records, the run's log level and client)."""
    rec = h.default_variant()
    out = {"relay": h.aiohttp_relay, "proxy": h.proxy(rec, h.nginx)}
    if h.recording.available:
        out["rec-off"] = h.proxy(Variant("passthrough", False), h.nginx)
    out["log-warning"] = h.proxy(rec, h.nginx, log_level="warning")
    out["gc-default"] = h.proxy(rec, h.nginx, client="serve-gc-default")
    return out


def run(h: Harness) -> Result:
    res = Result("FAIR", f"who waits under saturation: c={C} (wrk, closed loop, nginx upstream), p99 / p50 per variant")
    svcs = services(h)
    def load(svc: Service) -> Measure:
        return lambda d: h.wrk(svc.url, MASTER_KEY, C, d, raw=True)

    measures = {name: load(svc) for name, svc in svcs.items()}
    recording = {name: svc for name, svc in svcs.items() if svc.dataset_dir is not None}
    given = {name: h.core_given(svc) for name, svc in recording.items()}
    data = h.rounds(measures, h.s.wrk_s)
    for name, svc in recording.items():
        res.lines.append(f"{name} paused {h.core_given(svc) - given[name]:.2f} s in all to give its core to its recorder process")
    for name in ("log-warning", "gc-default", "relay"):
        h.stop(svcs[name])  # idle, but not left on the proxy's core for the scenarios after this one

    def col(rounds: list[dict[str, Any]], f: Any) -> list[float]:
        return [float(f(r)) for r in rounds]

    def raw_ratio(r: dict[str, Any]) -> float:
        return float(r["raw"]["all"]["p99"] / r["raw"]["all"]["p50"])

    def sp(values: list[float], unit: str = "", digits: int = 1) -> str:
        return fmt_spread(spread(values), unit, digits)

    for name, rounds in data.items():
        res.lines.append(f"{name:<11} {sp(col(rounds, lambda r: r['rps']), ' req/s', 0)}")
        res.lines.append(f"    wrk's percentiles: p50 {sp(col(rounds, lambda r: r['p50_ms']), ' ms')}, "
                         f"p99 {sp(col(rounds, lambda r: r['p99_ms']), ' ms')}, "
                         f"p99/p50 {sp(col(rounds, lambda r: r['p99_ms'] / r['p50_ms']), '×')}")
        res.lines.append(f"    each request once: p50 {sp(col(rounds, lambda r: r['raw']['all']['p50']), ' ms')}, "
                         f"p99 {sp(col(rounds, lambda r: r['raw']['all']['p99']), ' ms')}, p99/p50 {sp(col(rounds, raw_ratio), '×', 2)}; "
                         f"accept wait (slowest first request) {sp(col(rounds, lambda r: r['raw']['first']['max']), ' ms', 0)}; "
                         f"later requests' max {sp(col(rounds, lambda r: r['raw']['rest']['max']), ' ms', 0)}")
    ratio = paired(col(data["proxy"], raw_ratio), col(data["relay"], raw_ratio), "/")
    res.checks.append(at_most(f"p99/p50 each request once, proxy ÷ aiohttp relay (c={C})", ratio, 1.0, "×"))
    bad = sum(r["non2xx"] + r["socket_errors"] for name, rounds in data.items() if name != "relay" for r in rounds)
    res.checks.append(Check("failed answers through the proxy", str(bad), "0", bad == 0))
    res.data = {"rounds": data}
    return res
