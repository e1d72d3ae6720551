"""S2: the capacity of one core: wrk at c=8 and c=128 through the proxy to nginx, recording off and on.

Also measures the TGI translation path on the same rounds when S6 asks for it, so that S6 compares
figures taken side by side.
"""

from __future__ import annotations

import functools
import time
from collections import Counter
from typing import Any

from ..configs import MASTER_KEY, Variant
from ..harness import Check, Harness, Measure, Result, at_least, fmt_spread
from ..launch import Service
from ..procs import cpu_seconds
from ..stats import paired, spread

CONCURRENCY = (8, 128)


def services(h: Harness, with_tgi: bool) -> dict[str, Service]:
    """The proxies S2 loads, by their name in the rounds. ``proxy`` is the variant that is checked: recording on where
    the build records."""
    out = {"proxy": h.proxy(h.default_variant(), h.nginx)}
    if h.recording.available:
        out["proxy-rec-off"] = h.proxy(Variant("passthrough", False), h.nginx)
        if "proxy-spare-core" in (recording := recording_proxies(h)):
            out["proxy-spare-core"] = recording["proxy-spare-core"]
    if with_tgi:
        out["tgi"] = h.proxy(h.default_variant("tgi"), h.nginx)
    return out


def recording_proxies(h: Harness) -> dict[str, Service]:
    """S2's proxies that record, by their name in the rounds."""
    if not h.recording.available:
        return {}
    out = {"proxy": h.proxy(h.default_variant(), h.nginx)}
    if h.recorder_core is None and out["proxy"].recorder is not None:
        # The recorder process on another core (the load core): what recording costs with a core to spare.
        out["proxy-spare-core"] = h.proxy(h.default_variant(), h.nginx, spare_core=True)
    return out


def measure(h: Harness, with_tgi: bool) -> dict[int, dict[str, list[dict[str, Any]]]]:
    if "S2" in h.cache and ("tgi" in h.cache["S2"][8] or not with_tgi):
        return dict(h.cache["S2"])
    svcs = services(h, with_tgi)
    targets = {"direct": (h.nginx, MASTER_KEY), **{name: (svc.url, MASTER_KEY) for name, svc in svcs.items()}}
    recorder = svcs["proxy"].recorder
    proxy_cpu = {name: cpu_seconds(svc.proc.pid) for name, svc in svcs.items()}
    cpu_before = cpu_seconds(recorder) if recorder is not None else 0.0
    recording = recording_proxies(h)
    given = {name: h.core_given(svc) for name, svc in recording.items()}
    data = {}
    served: Counter[str] = Counter()  # requests each proxy answered, warm-ups included: what its CPU time was spent on

    def load(name: str, url: str, key: str, c: int, d: float) -> dict[str, Any]:
        result = h.wrk(url, key, c, d)
        served[name] += result["requests"]
        return result

    for c in CONCURRENCY:
        measures: dict[str, Measure] = {
            name: functools.partial(load, name, url, key, c) for name, (url, key) in targets.items()
        }
        data[c] = h.rounds(measures, h.s.wrk_s, warmup=None if c == CONCURRENCY[0] else 0)
    h.cache["S2"] = data
    # Each proxy works only in its own rounds and warm-ups: its CPU time over the requests it answered there is what
    # one request costs it (its recorder process apart).
    h.cache["S2-proxy-cpu-us"] = {name: (cpu_seconds(svc.proc.pid) - proxy_cpu[name]) * 1e6 / max(1, served[name])
                                  for name, svc in svcs.items()}
    if recorder is not None:
        time.sleep(0.5)  # the last exchanges recorded
        exchanges = sum(r["requests"] for c in CONCURRENCY for r in data[c]["proxy"])
        h.cache["S2-recorder-cpu"] = {"cpu_s": cpu_seconds(recorder) - cpu_before, "exchanges": exchanges}
        h.cache["S2-core-given"] = {name: h.core_given(svc) - given[name] for name, svc in recording.items()}
    proxy_url = targets["proxy"][0]
    h.cache["capacity"] = max(spread([r["rps"] for r in data[c]["proxy"]])["median"] for c in CONCURRENCY)
    prof = h.profiled(h.proxy(h.default_variant(), h.nginx), "S2-c128", lambda: h.wrk(proxy_url, MASTER_KEY, 128, h.profile_s))
    if prof is not None:
        h.cache["S2-profile"] = prof
    if h.recording.available:
        off = h.proxy(Variant("passthrough", False), h.nginx)
        prof = h.profiled(off, "S2-c128-rec-off", lambda: h.wrk(off.url, MASTER_KEY, 128, h.profile_s))
        if prof is not None:
            h.cache["S2-rec-off-profile"] = prof
    if with_tgi:
        tgi = h.proxy(h.default_variant("tgi"), h.nginx)
        prof = h.profiled(tgi, "S6-S2-c128", lambda: h.wrk(tgi.url, MASTER_KEY, 128, h.profile_s))
        if prof is not None:
            h.cache["S6-S2-profile"] = prof
    return data


def rps(rounds: list[dict[str, Any]]) -> list[float]:
    return [r["rps"] for r in rounds]


def failures(rounds: list[dict[str, Any]]) -> int:
    return sum(r["non2xx"] + r["socket_errors"] for r in rounds)


def run(h: Harness, with_tgi: bool = False) -> Result:
    res = Result("S2", "capacity of one core (wrk, closed loop, nginx upstream)")
    data = measure(h, with_tgi)
    for c in CONCURRENCY:
        parts = [f"{name} {fmt_spread(spread(rps(rounds)), '', 0)}" for name, rounds in data[c].items()]
        res.lines.append(f"c={c:<3} req/s: " + " · ".join(parts))
    rec = "recording on" if h.recording.available else "recording off (this build cannot record)"
    best = max(CONCURRENCY, key=lambda c: spread(rps(data[c]["proxy"]))["median"])
    res.checks.append(at_least(f"proxy req/s on one core (c={best}, {rec})", spread(rps(data[best]["proxy"])), 4000, "", 0))
    res.checks.append(at_least("c128 / c8", paired(rps(data[128]["proxy"]), rps(data[8]["proxy"]), "/"), 0.9))
    if h.recording.available:
        for c in CONCURRENCY:
            ratio = paired(rps(data[c]["proxy"]), rps(data[c]["proxy-rec-off"]), "/")
            res.checks.append(at_least(f"recording on / off (c={c})", ratio, 0.9))
        for c in CONCURRENCY if "proxy-spare-core" in data[8] else ():
            ratio = paired(rps(data[c]["proxy-spare-core"]), rps(data[c]["proxy-rec-off"]), "/")
            res.lines.append(f"recording on / off (c={c}), the recorder process on the load core: {fmt_spread(ratio)}")
        if "S2-recorder-cpu" in h.cache:
            cpu = h.cache["S2-recorder-cpu"]
            per = cpu["cpu_s"] / cpu["exchanges"] * 1e6 if cpu["exchanges"] else 0.0
            res.lines.append(f"recorder process: {cpu['cpu_s']:.1f} s of CPU for {cpu['exchanges']} exchanges, {per:.1f} µs each")
        for name, seconds in h.cache.get("S2-core-given", {}).items():
            res.lines.append(f"{name} paused {seconds:.2f} s in all to give its core to its recorder process")
    else:
        res.checks.append(Check("recording on / off", h.recording.skipped, "≥ 0.9", None, h.recording.reason))
    cpu_us = h.cache.get("S2-proxy-cpu-us", {})
    res.lines.append("proxy CPU per request (its own process): " + ", ".join(f"{name} {us:.0f} µs" for name, us in cpu_us.items()))
    bad = sum(failures(data[c][name]) for c in CONCURRENCY for name in data[c] if name != "direct")
    res.checks.append(Check("failed answers through the proxy", str(bad), "0", bad == 0))
    if h.recording.available:
        lost = sum(h.lost_records(svc) for svc in recording_proxies(h).values())
        res.checks.append(Check("exchange records lost, recording on (the proxies' logs)", str(lost), "0", lost == 0))
    res.data = {"rounds": {str(c): data[c] for c in CONCURRENCY}, "recording": h.recording.available}
    for key in ("S2-profile", "S2-rec-off-profile"):
        if key in h.cache:
            res.data[key] = h.cache[key]
    return res
