"""S3: a slow, realistic upstream (the stub): non-stream answers after 50 ms at c=64 (wrk), and SSE streams of
50 tokens 20 ms apart at c=64 and c=256 (closed loop, SSE-aware client).

Also measures the TGI translation path on the same rounds when S6 asks for it.
"""

from __future__ import annotations

from typing import Any

from ..configs import MASTER_KEY
from ..harness import CHAT_PATH, Check, Harness, Measure, Result, at_least, at_most, fmt_spread
from ..stats import paired, spread

SSE_CONCURRENCY = (64, 256)


def targets(h: Harness, with_tgi: bool) -> dict[str, str]:
    out = {"direct": h.stub.url, "proxy": h.proxy(h.default_variant(), h.stub.url).url}
    if with_tgi:
        out["tgi"] = h.proxy(h.default_variant("tgi"), h.stub.url).url
    return out


def measure(h: Harness, with_tgi: bool) -> dict[str, dict[str, list[dict[str, Any]]]]:
    if "S3" in h.cache and ("tgi" in h.cache["S3"]["wrk64"] or not with_tgi):
        return dict(h.cache["S3"])
    urls = targets(h, with_tgi)
    data: dict[str, dict[str, list[dict[str, Any]]]] = {}
    measures: dict[str, Measure] = {name: (lambda d, url=url: h.wrk(url, MASTER_KEY, 64, d)) for name, url in urls.items()}
    data["wrk64"] = h.rounds(measures, h.s.wrk_s)

    def sse(url: str, c: int, d: float) -> dict[str, Any]:
        r = h.sse(f"{url}{CHAT_PATH}?tokens={h.s.sse_tokens}", MASTER_KEY, c, d)
        h.stub_idle()
        return r

    for c in SSE_CONCURRENCY:
        measures = {name: (lambda d, url=url, c=c: sse(url, c, d)) for name, url in urls.items()}
        data[f"sse{c}"] = h.rounds(measures, h.s.sse_s, warmup=h.s.sse_s if c == SSE_CONCURRENCY[0] else 0)
    h.cache["S3"] = data
    proxy = h.proxy(h.default_variant(), h.stub.url)
    prof = h.profiled(proxy, "S3-sse256", lambda: sse(proxy.url, 256, h.profile_s))
    if prof is not None:
        h.cache["S3-profile"] = prof
    if with_tgi:
        tgi = h.proxy(h.default_variant("tgi"), h.stub.url)
        prof = h.profiled(tgi, "S6-S3-sse256", lambda: sse(tgi.url, 256, h.profile_s))
        if prof is not None:
            h.cache["S6-S3-profile"] = prof
    return data


def col(rounds: list[dict[str, Any]], group: str, key: str) -> list[float]:
    return [float(r[group][key]) for r in rounds]


def throughput(rounds: list[dict[str, Any]]) -> list[float]:
    return [float(r["throughput"]) for r in rounds]


def stream_checks(res: Result, data: dict[str, list[dict[str, Any]]], name: str, c: int, label: str) -> None:
    d, p = data["direct"], data[name]
    first = paired(col(p, "first_event_ms", "p99"), col(d, "first_event_ms", "p99"), "-")
    res.checks.append(at_most(f"{label}first-event Δp99 (c={c})", first, 10, " ms"))
    res.checks.append(at_most(f"{label}gap Δp99 (c={c})", paired(col(p, "gap_ms", "p99"), col(d, "gap_ms", "p99"), "-"), 3, " ms"))
    missing = sum(r["missing_done"] for r in p)
    failed = sum(sum(r["errors"].values()) + sum(v for k, v in r["statuses"].items() if k != "200") for r in p)
    res.checks.append(Check(f"{label}missing [DONE] / failed streams (c={c})", f"{missing} / {failed}", "0 / 0",
                            missing == 0 and failed == 0))


def run(h: Harness, with_tgi: bool = False) -> Result:
    res = Result("S3", f"slow realistic upstream (stub: 50 ms to answer; {h.s.sse_tokens} tokens × 20 ms)")
    data = measure(h, with_tgi)
    w = data["wrk64"]
    rps = {n: [r["rps"] for r in v] for n, v in w.items()}
    res.lines.append("non-stream c=64 req/s: " + " · ".join(f"{n} {fmt_spread(spread(v), '', 0)}" for n, v in rps.items()))
    res.checks.append(at_least("non-stream proxy / direct (c=64)", paired(rps["proxy"], rps["direct"], "/"), 0.97, "", 3))
    for c in SSE_CONCURRENCY:
        s = data[f"sse{c}"]
        res.lines.append(f"SSE c={c:<3} streams/s: " + " · ".join(f"{n} {fmt_spread(spread(throughput(v)), '', 1)}" for n, v in s.items()))
        for n, v in s.items():
            res.lines.append(f"    {n:<6} first event p50/p99 {fmt_spread(spread(col(v, 'first_event_ms', 'p50')), '', 1)} / "
                             f"{fmt_spread(spread(col(v, 'first_event_ms', 'p99')), ' ms', 1)} · gap p99 "
                             f"{fmt_spread(spread(col(v, 'gap_ms', 'p99')), ' ms', 1)}")
        limit = 0.97 if c == 64 else 0.95
        ratio = paired(throughput(s["proxy"]), throughput(s["direct"]), "/")
        res.checks.append(at_least(f"SSE proxy / direct (c={c})", ratio, limit, "", 3))
        stream_checks(res, s, "proxy", c, "")
    bad = sum(r["non2xx"] + r["socket_errors"] for r in w["proxy"])
    res.checks.append(Check("failed non-stream answers through the proxy", str(bad), "0", bad == 0))
    res.data = {"rounds": data}
    if "S3-profile" in h.cache:
        res.data["profile"] = h.cache["S3-profile"]
    return res
