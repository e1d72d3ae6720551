"""S1: what the proxy adds to each answer, open loop below the knee (200 req/s and half of S2's capacity),
and the check that the ``x-mooltiproxy-overhead-ms`` header agrees with what clients see.

Beside direct and proxy, each round also goes through nginx relaying from the proxy's core (the
"floor"): what the extra hop and the cross-core wake-ups cost any proxy on this layout, so that the
proxy's own part of the added latency can be told apart. The targets are checked on the proxy's
full figure, floor included.
"""

from __future__ import annotations

from typing import Any

from ..configs import MASTER_KEY
from ..harness import CHAT_PATH, Check, Harness, Result, at_most, fmt_spread
from ..stats import paired, spread

HEADER = "x-mooltiproxy-overhead-ms"
LATE_MS = 1.0


def capacity(h: Harness) -> float:
    """S2's figure when it ran; otherwise a short closed-loop probe at c=64."""
    if "capacity" not in h.cache:
        url = h.proxy(h.default_variant(), h.nginx).url
        h.wrk(url, MASTER_KEY, 64, 1)
        h.cache["capacity"] = h.wrk(url, MASTER_KEY, 64, max(2, h.s.wrk_s))["rps"]
    return float(h.cache["capacity"])


def measure(h: Harness, rates: list[float]) -> dict[float, dict[str, list[dict[str, Any]]]]:
    proxy = h.proxy(h.default_variant(), h.nginx)
    data = h.cache.setdefault("S1", {})
    for rate in rates:
        if rate in data:
            continue
        warm = 1.0 if not data else 0
        given = h.core_given(proxy) if h.recording.available else 0.0
        data[rate] = h.rounds({
            "direct": lambda d, rate=rate: h.openloop(h.nginx + CHAT_PATH, MASTER_KEY, rate, d),
            "proxy": lambda d, rate=rate: h.openloop(proxy.url + CHAT_PATH, MASTER_KEY, rate, d, capture=HEADER),
            "floor": lambda d, rate=rate: h.openloop(h.relay + CHAT_PATH, MASTER_KEY, rate, d),
        }, h.s.openloop_s, warmup=warm)
        if h.recording.available:
            h.cache.setdefault("S1-core-given", {})[rate] = h.core_given(proxy) - given
    return {r: data[r] for r in rates}


def col(rounds: list[dict[str, Any]], group: str, key: str) -> list[float]:
    return [float(r[group][key]) for r in rounds]


def run(h: Harness) -> Result:
    res = Result("S1", "non-stream overhead, open loop (nginx upstream)")
    cap = capacity(h)
    rates = [200.0, float(round(cap / 2))]
    data = measure(h, rates)
    rec = "recording on" if h.recording.available else "recording off: this build cannot record"
    res.lines.append(f"rates: 200 req/s and {rates[1]:.0f} req/s (half of {cap:.0f} req/s); {rec}")
    for rate in rates:
        d, p = data[rate]["direct"], data[rate]["proxy"]
        res.lines.append(
            f"{rate:>5.0f} req/s  direct p50 {fmt_spread(spread(col(d, 'latency_ms', 'p50')), ' ms')} p99 "
            f"{fmt_spread(spread(col(d, 'latency_ms', 'p99')), ' ms')} · proxy p50 {fmt_spread(spread(col(p, 'latency_ms', 'p50')), ' ms')}"
            f" p99 {fmt_spread(spread(col(p, 'latency_ms', 'p99')), ' ms')}")
        res.lines.append(f"             generator lag p99: direct {fmt_spread(spread(col(d, 'lag_ms', 'p99')), ' ms')}, "
                         f"proxy {fmt_spread(spread(col(p, 'lag_ms', 'p99')), ' ms')}")
        # The generator runs late only when its core was taken from it: such a round measured the machine.
        late = sum(1 for r in d + p if r["lag_ms"]["p99"] > LATE_MS)
        if late:
            res.lines.append(f"             {late} of {len(d + p)} rounds had generator lag p99 > {LATE_MS:g} ms: "
                             "the load core was busy with something else then, so their p99 is the machine's")
        d50 = paired(col(p, "latency_ms", "p50"), col(d, "latency_ms", "p50"), "-")
        d99 = paired(col(p, "latency_ms", "p99"), col(d, "latency_ms", "p99"), "-")
        f = data[rate]["floor"]
        f50 = paired(col(f, "latency_ms", "p50"), col(d, "latency_ms", "p50"), "-")
        f99 = paired(col(f, "latency_ms", "p99"), col(d, "latency_ms", "p99"), "-")
        res.lines.append(f"             floor (nginx relay on core 0): Δp50 {fmt_spread(f50, ' ms')} Δp99 {fmt_spread(f99, ' ms')}; "
                         f"the proxy's own part of Δp50: {d50['median'] - f50['median']:.2f} ms")
        given = h.cache.get("S1-core-given", {}).get(rate)
        if given is not None:
            res.lines.append(f"             the proxy paused {given:.2f} s in all to give its core to the recorder process")
        res.checks.append(at_most(f"Δp50 at {rate:.0f} req/s", d50, 0.5, " ms"))
        res.checks.append(at_most(f"Δp99 at {rate:.0f} req/s", d99, 2, " ms"))
        bad = sum(r["sent"] - r["ok"] for r in p)
        res.checks.append(Check(f"failed answers at {rate:.0f} req/s", str(bad), "0", bad == 0))
        res.data[f"{rate:.0f}"] = {"rounds": data[rate], "delta_p50_ms": d50, "delta_p99_ms": d99, "floor_delta_p50_ms": f50,
                                   "floor_delta_p99_ms": f99}
    res.data["capacity"] = cap
    return res


def run_overhead(h: Harness) -> Result:
    """The header's distribution next to the client-side added latency at 200 req/s."""
    res = Result("OVERHEAD", f"{HEADER} header vs the client-side added latency (S1, 200 req/s)")
    rounds = measure(h, [200.0])[200.0]
    d, p = rounds["direct"], rounds["proxy"]
    seen = [r["header_ms"]["n"] for r in p]
    if not all(seen):
        res.checks.append(Check("header present on every answer", f"{sum(seen)} of {sum(r['sent'] for r in p)}", "all", False))
        return res
    h50, h99 = spread(col(p, "header_ms", "p50")), spread(col(p, "header_ms", "p99"))
    d50 = paired(col(p, "latency_ms", "p50"), col(d, "latency_ms", "p50"), "-")
    d99 = paired(col(p, "latency_ms", "p99"), col(d, "latency_ms", "p99"), "-")
    res.lines.append(f"header p50 {fmt_spread(h50, ' ms', 3)} · client Δp50 {fmt_spread(d50, ' ms', 3)}")
    res.lines.append(f"header p99 {fmt_spread(h99, ' ms', 3)} · client Δp99 {fmt_spread(d99, ' ms', 3)}")
    gap = d50["median"] - h50["median"]
    res.lines.append(f"the header leaves out {gap:.3f} ms of the client-side median (uvicorn's parsing and writing, the extra hop)")
    # They agree when the header accounts for the client-side figure within a factor of two, or within
    # 0.3 ms where both are too small for a ratio to mean much.
    agree = abs(gap) <= 0.3 or (d50["median"] > 0 and 0.5 <= h50["median"] / d50["median"] <= 2)
    res.checks.append(Check("header p50 agrees with client Δp50", f"{h50['median']:.3f} vs {d50['median']:.3f} ms",
                            "within ×2 or 0.3 ms", agree))
    res.data = {"header_p50_ms": h50, "header_p99_ms": h99, "client_delta_p50_ms": d50, "client_delta_p99_ms": d99}
    return res

