"""PEER: the LiteLLM proxy side by side with mooltiproxy, same upstreams, same method, interleaved rounds.

Throughput: wrk at c=64 against nginx. Added latency: open loop at a rate below LiteLLM's knee (half
its measured capacity, at most 200 req/s), both proxies at the same rate. Also S3's c=64 slow upstream
(non-stream and SSE) as ratios against direct. Target: at least 5× LiteLLM's throughput with at most a
fifth of its added latency.
"""

from __future__ import annotations

from typing import Any

from .. import litellm
from ..configs import MASTER_KEY
from ..harness import CHAT_BODY, CHAT_PATH, STREAM_BODY, Check, Harness, Result, fmt_spread
from ..stats import paired, spread


def run(h: Harness) -> Result:
    res = Result("PEER", "LiteLLM proxy side by side")
    if not litellm.installed():
        res.checks.append(Check("LiteLLM comparison", "skipped: LiteLLM is not installed", "", None,
                                "python -m bench litellm-setup creates bench/.litellm-venv"))
        return res
    res.lines.append(f"LiteLLM {litellm.version()} (bench/.litellm-venv), one worker, no database, master key on")
    moolti = h.proxy(h.default_variant(), h.nginx)
    peer = litellm.start(h.procs, h.workdir, {"bench": h.nginx, "bench-slow": h.stub.url})
    targets = {"direct": (h.nginx, MASTER_KEY), "mooltiproxy": (moolti.url, MASTER_KEY), "litellm": (peer.url, peer.key)}

    cap = h.rounds({n: (lambda d, u=u, k=k: h.wrk(u, k, 64, d)) for n, (u, k) in targets.items()}, h.s.wrk_s)
    rps = {n: [r["rps"] for r in v] for n, v in cap.items()}
    res.lines.append("c=64 req/s: " + " · ".join(f"{n} {fmt_spread(spread(v), '', 0)}" for n, v in rps.items()))
    times = paired(rps["mooltiproxy"], rps["litellm"], "/")
    res.checks.append(Check("throughput mooltiproxy / LiteLLM (c=64)", fmt_spread(times, "×", 1), "≥ 5×", bool(times["median"] >= 5)))
    bad = sum(r["non2xx"] + r["socket_errors"] for r in cap["litellm"])
    if bad:
        res.lines.append(f"    LiteLLM failed {bad} answers")

    rate = float(min(200, max(10, round(spread(rps["litellm"])["median"] / 2))))
    lat = h.rounds({n: (lambda d, u=u, k=k: h.openloop(u + CHAT_PATH, k, rate, d)) for n, (u, k) in targets.items()}, h.s.openloop_s,
                   warmup=1.0)
    col = {n: ([r["latency_ms"]["p50"] for r in v], [r["latency_ms"]["p99"] for r in v]) for n, v in lat.items()}
    deltas: dict[str, Any] = {}
    for n in ("mooltiproxy", "litellm"):
        deltas[n] = (paired(col[n][0], col["direct"][0], "-"), paired(col[n][1], col["direct"][1], "-"))
        res.lines.append(f"open loop {rate:.0f} req/s, {n}: Δp50 {fmt_spread(deltas[n][0], ' ms')} · "
                         f"Δp99 {fmt_spread(deltas[n][1], ' ms')}")
    for i, q in enumerate(("p50", "p99")):
        m, p = deltas["mooltiproxy"][i]["median"], deltas["litellm"][i]["median"]
        res.checks.append(Check(f"added latency {q}: mooltiproxy vs LiteLLM / 5", f"{m:.2f} vs {p / 5:.2f} ms", "≤ a fifth",
                                bool(m <= p / 5)))

    # LiteLLM sends the slow upstream's requests under the model name bench-slow; the others ignore the name.
    slow = {"direct": (h.stub.url, MASTER_KEY), "mooltiproxy": (h.proxy(h.default_variant(), h.stub.url).url, MASTER_KEY),
            "litellm": (peer.url, peer.key)}
    body, stream_body = CHAT_BODY.replace('"bench"', '"bench-slow"'), STREAM_BODY.replace('"bench"', '"bench-slow"')
    w = h.rounds({n: (lambda d, u=u, k=k: h.wrk(u, k, 64, d, body=body)) for n, (u, k) in slow.items()}, h.s.wrk_s)
    # No ?tokens= here: LiteLLM does not forward a query string, so all three get the stub's 50 tokens.
    s = h.rounds({n: (lambda d, u=u, k=k: h.sse(u + CHAT_PATH, k, 64, d, body=stream_body)) for n, (u, k) in slow.items()},
                 max(h.s.sse_s, 1.0), warmup=1.0)
    for n in ("mooltiproxy", "litellm"):
        wr = paired([r["rps"] for r in w[n]], [r["rps"] for r in w["direct"]], "/")
        sr = paired([r["throughput"] for r in s[n]], [r["throughput"] for r in s["direct"]], "/")
        missing = sum(r["missing_done"] for r in s[n])
        res.lines.append(f"slow upstream c=64, {n}: non-stream {fmt_spread(wr, '', 3)} of direct · SSE {fmt_spread(sr, '', 3)} of direct"
                         f" (missing [DONE]: {missing})")
    h.procs.stop(peer.proc)
    res.data = {"capacity": cap, "latency": lat, "rate": rate, "slow_wrk": w, "slow_sse": s}
    return res
