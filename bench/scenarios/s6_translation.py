"""S6: the cost of translation: S2 and S3 through the TGI mappers (chat → /generate with the llama2-chat
Jinja prompter), each figure against the pass-through figure of the same rounds."""

from __future__ import annotations

from typing import Any

from ..harness import Check, Harness, Result, at_least, fmt_spread
from ..stats import paired, spread
from . import s2_capacity, s3_slow


def run(h: Harness) -> Result:
    res = Result("S6", "translation cost: chat → TGI with the llama2-chat prompter, against pass-through")
    s2 = s2_capacity.measure(h, True)
    s3 = s3_slow.measure(h, True)

    def ratio(label: str, tgi: list[float], pt: list[float], unit: str = "", digits: int = 0) -> None:
        r = paired(tgi, pt, "/")
        res.lines.append(f"{label}: tgi {fmt_spread(spread(tgi), unit, digits)} · pass-through {fmt_spread(spread(pt), unit, digits)}")
        res.checks.append(at_least(f"{label} tgi / pass-through", r, 0.9, "", 3))

    for c in s2_capacity.CONCURRENCY:
        ratio(f"S2 c={c} req/s", s2_capacity.rps(s2[c]["tgi"]), s2_capacity.rps(s2[c]["proxy"]))
    cpu_us = h.cache.get("S2-proxy-cpu-us", {})
    if "tgi" in cpu_us and "proxy" in cpu_us:
        res.lines.append(f"proxy CPU per request under S2's load: tgi {cpu_us['tgi']:.0f} µs · pass-through {cpu_us['proxy']:.0f} µs: "
                         f"the translation costs {cpu_us['tgi'] - cpu_us['proxy']:.0f} µs a request")
    ratio("S3 non-stream c=64 req/s", [r["rps"] for r in s3["wrk64"]["tgi"]], [r["rps"] for r in s3["wrk64"]["proxy"]])
    for c in s3_slow.SSE_CONCURRENCY:
        s = s3["sse" + str(c)]
        ratio(f"S3 SSE c={c} streams/s", s3_slow.throughput(s["tgi"]), s3_slow.throughput(s["proxy"]), "", 1)
        tgi_first = paired(s3_slow.col(s["tgi"], "first_event_ms", "p99"), s3_slow.col(s["direct"], "first_event_ms", "p99"), "-")
        tgi_gap = paired(s3_slow.col(s["tgi"], "gap_ms", "p99"), s3_slow.col(s["direct"], "gap_ms", "p99"), "-")
        res.lines.append(f"    tgi vs direct: first-event Δp99 {fmt_spread(tgi_first, ' ms', 1)} · "
                         f"gap Δp99 {fmt_spread(tgi_gap, ' ms', 1)}")
        missing = sum(r["missing_done"] for r in s["tgi"])
        failed = sum(sum(r["errors"].values()) + sum(v for k, v in r["statuses"].items() if k != "200") for r in s["tgi"])
        res.checks.append(Check(f"tgi missing [DONE] / failed streams (c={c})", f"{missing} / {failed}", "0 / 0",
                                missing == 0 and failed == 0))
    bad = sum(r["non2xx"] + r["socket_errors"] for c in s2_capacity.CONCURRENCY for r in s2[c]["tgi"])
    bad += sum(r["non2xx"] + r["socket_errors"] for r in s3["wrk64"]["tgi"])
    res.checks.append(Check("failed non-stream answers through tgi", str(bad), "0", bad == 0))
    data: dict[str, Any] = {"S2": {str(c): s2[c] for c in s2_capacity.CONCURRENCY}, "S3": s3}
    for key in ("S6-S2-profile", "S6-S3-profile"):
        if key in h.cache:
            data[key] = h.cache[key]
    res.data = data
    return res
