"""S8: streaming translation at scale: 1000 concurrent chat streams translated to TGI (``/generate_stream`` with the
llama2-chat prompter, as in S6), each 50 tokens a second (20 ms apart), recording on.

The stub plays TGI. Each round opens the 1000 connections, sends one short stream on each (so that the proxy has
accepted every connection and pooled its upstream connections, as a client's pool of kept-alive connections
would have them), then starts the 1000 measured streams together and reads them to the end. Direct: the same
streams straight from the stub's ``/generate_stream``, in TGI's framing (no ``[DONE]``), on the same core.
Tokens relayed per second: completed streams × tokens per stream over the time until the last one ended. The
proxy's CPU share: its user and system time (every thread, /proc/<pid>/stat) while the measured streams ran,
over their wall time. After the rounds: one round of each with half as many streams (where the proxy's core is
not full), and one proxy round on new client connections (no short stream first; its upstream connections
are still pooled), which shows what accepting a burst of connections costs.
"""

from __future__ import annotations

from typing import Any

from ..configs import MASTER_KEY, auth_headers
from ..harness import CHAT_PATH, STREAM_BODY, Check, Harness, Measure, Result, at_least, at_most, fmt_spread
from ..stats import paired, spread

DELAY = 0.02  # 50 tokens a second


def run(h: Harness) -> Result:
    n, tokens = h.s.scale_streams, h.s.scale_tokens
    res = Result("S8", f"{n} concurrent TGI-translated streams, {tokens} tokens each at {1 / DELAY:g} tokens/s (stub as TGI)")
    tgi = h.proxy(h.default_variant("tgi"), h.stub.url)
    stream_q = f"tokens={tokens}&token_delay={DELAY}"
    warm_q = "tokens=1&ttft=0"
    urls = {"direct": (f"{h.stub.url}/generate_stream", False, None), "tgi": (f"{tgi.url}{CHAT_PATH}", True, tgi.proc.pid)}

    def burst(name: str, count: int, query: str, *, warm: bool = True) -> dict[str, Any]:
        base, done, pid = urls[name]
        spec = {"mode": "burst", "url": f"{base}?{query}", "body": STREAM_BODY, "headers": auth_headers(MASTER_KEY), "n": count,
                "expect_done": done, "timeout": 120, "cpu_pid": pid}
        if warm:
            spec["warm_url"] = f"{base}?{warm_q}"
        out = h.load(spec, timeout=300)
        h.stub_idle(timeout=60)
        return out

    for name in urls:  # warm-up: imports, pools, the prompter's template
        burst(name, min(n, 100), f"tokens=20&token_delay={DELAY}")
    def streams(name: str) -> Measure:
        return lambda d: burst(name, n, stream_q)

    data = h.rounds({name: streams(name) for name in urls}, 0, warmup=0)
    half = {name: burst(name, n // 2, stream_q) for name in urls}
    cold = burst("tgi", n, stream_q, warm=False)
    prof = h.profiled(tgi, "S8-tgi", lambda: burst("tgi", n, stream_q))

    def tps(r: dict[str, Any]) -> float:
        return float(r["completed"] * tokens / r["elapsed_s"]) if r["elapsed_s"] else 0.0

    def col(rounds: list[dict[str, Any]], group: str, key: str) -> list[float]:
        return [float(r[group][key]) for r in rounds]

    def sp(values: list[float], unit: str = "", digits: int = 1) -> str:
        return fmt_spread(spread(values), unit, digits)

    d, p = data["direct"], data["tgi"]
    cpu = [r["cpu_s"] / r["elapsed_s"] for r in p]
    res.lines.append(f"tokens relayed/s: tgi {sp([tps(r) for r in p], '', 0)} · direct {sp([tps(r) for r in d], '', 0)}"
                     f" (offered {n / DELAY:.0f}/s while all {n} stream)")
    for name, rounds in (("direct", d), ("tgi", p)):
        res.lines.append(f"    {name:<6} gap p50 {sp(col(rounds, 'gap_ms', 'p50'), ' ms')}, p99 {sp(col(rounds, 'gap_ms', 'p99'), ' ms')}, "
                         f"max {sp(col(rounds, 'gap_ms', 'max'), ' ms')} · first event p50 "
                         f"{sp(col(rounds, 'first_event_ms', 'p50'), ' ms', 0)}, p99 {sp(col(rounds, 'first_event_ms', 'p99'), ' ms', 0)}")
    res.lines.append(f"proxy CPU share while the streams ran: {sp(cpu, ' of a core', 2)}; "
                     f"{sp([r['cpu_s'] / max(1, r['completed'] * tokens) * 1e6 for r in p], ' µs per token')}")
    hd, hp = half["direct"], half["tgi"]
    res.lines.append(f"{n // 2} streams, one round: tokens/s tgi {tps(hp):.0f} · direct {tps(hd):.0f}; "
                     f"gap p99 tgi {hp['gap_ms']['p99']:.1f} ms · direct {hd['gap_ms']['p99']:.1f} ms; "
                     f"proxy CPU share {hp['cpu_s'] / hp['elapsed_s']:.2f}")
    first, gaps = cold["first_event_ms"], cold["gap_ms"]
    res.lines.append(f"new client connections (no short stream first), tgi: {tps(cold):.0f} tokens/s, "
                     f"first event p50 {first['p50']:.0f} ms, p99 {first['p99']:.0f} ms, gap p99 {gaps['p99']:.1f} ms, "
                     f"{cold['completed']}/{n} completed")
    res.checks.append(at_least("tokens relayed/s, tgi / direct", paired([tps(r) for r in p], [tps(r) for r in d], "/"), 0.97, "", 3))
    gap = paired(col(p, "gap_ms", "p99"), col(d, "gap_ms", "p99"), "-")
    res.checks.append(at_most("inter-token gap Δp99, tgi − direct", gap, 3, " ms"))
    missing = sum(r["missing_done"] for r in p)
    failed = sum(sum(r["errors"].values()) + sum(v for k, v in r["statuses"].items() if k != "200") + r["warm_failed"] for r in p)
    res.checks.append(Check("tgi missing [DONE] / failed streams", f"{missing} / {failed}", "0 / 0", missing == 0 and failed == 0))
    res.data = {"rounds": data, "half": half, "cold": cold, "cpu_share": cpu, "tokens": tokens, "streams": n}
    if prof is not None:
        res.data["profile"] = prof
    return res
