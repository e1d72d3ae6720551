"""S7: big answers and slow readers: 100 clients each read a 10 MB non-stream answer at 1 MB/s while 64 fast
clients run S2's load (wrk, small chat answers from nginx) through the same proxy.

A fresh proxy has two targets: the default, nginx, for the fast clients, and ``big``, the stub, which the slow
readers pick with a ``target`` header. Each round runs wrk alone (``without``) and wrk beside the slow readers
(``with``), for the same time: the readers' whole read plus 2 s, so that the end of the answers, and the records
they leave, fall inside wrk's window. The fast clients' latency counts each request once (bench/raw.lua; wrk's
own percentiles are corrected for coordinated omission). Every big answer is checked whole: its length and
SHA-256 against the same answer read straight from the stub. Resident memory is sampled every 20 ms from the
readers' start until the proxy is quiet again (records built); the growth is the peak over the baseline before.
A second fresh proxy with recording off runs as many rounds, to tell the record's share from the relay's (a proxy
keeps memory from one round to the next: a single round recording off measured only a fresh process's growth).

Three rounds, not five: a ``with`` round lasts the 10 s read, and the scenario stays within three minutes.
"""

from __future__ import annotations

import contextlib
import math
import time
from typing import Any

from ..configs import MASTER_KEY, Variant, auth_headers
from ..harness import CHAT_BODY, CHAT_PATH, Check, Harness, Result, at_most, fmt_spread
from ..launch import Service
from ..procs import RssSampler, quiet, rss_bytes
from ..stats import paired, spread

FAST = 64  # S2's load, from wrk
MB = 1024 * 1024
SPREAD_S = 1.0  # the readers' requests go out evenly over this time, so that they do not all wake at once
LEAD_S = SPREAD_S + 0.2  # every reader's answer is flowing before wrk starts
ROUNDS = 3
# The readers ask something else than the fast clients: the same conversation answered again would be its regeneration,
# whose record the recorder must link after the first answer's, in order.
READER_BODY = CHAT_BODY.replace("Say something short.", "Tell me a long story.")
PER_READER_MB = 2.0  # bounded: a fifth of a 10 MB answer (the relay holds about 1 MB per connection at most)


def _p(r: dict[str, Any], q: str = "p99") -> float:
    return float(r["wrk"]["raw"]["all"][q])


def run(h: Harness) -> Result:
    n, size, rate = h.s.big_readers, h.s.big_bytes, h.s.big_rate
    read_s = size / rate
    window = math.ceil(read_s + (2 if not h.s.quick else 1))
    res = Result("S7", f"{n} slow readers of {size / MB:g} MB answers at {rate / MB:g} MB/s, beside {FAST} fast clients (wrk)")
    big = {"big": h.stub.url}
    spec: dict[str, Any] = {"mode": "slow_readers", "url": "", "body": READER_BODY,
            "headers": {**auth_headers(MASTER_KEY), "target": "big"},
            "n": n, "rate": rate, "reference": f"{h.stub.url}{CHAT_PATH}?size={size}&ttft=0",
            "reference_headers": auth_headers(MASTER_KEY), "timeout": read_s * 3 + 60, "spread": SPREAD_S}

    def fast(svc: Service, d: float) -> dict[str, Any]:
        return h.wrk(svc.url, MASTER_KEY, FAST, d, raw=True)

    def without(svc: Service) -> dict[str, Any]:
        quiet(svc.proc.pid)
        return {"wrk": fast(svc, window)}

    def beside(svc: Service) -> dict[str, Any]:
        pid = svc.proc.pid
        h.stub_idle()
        quiet(pid)
        before = rss_bytes(pid)
        with RssSampler(pid) as rss, contextlib.ExitStack() as more:
            # The recorder process (dataset.recorder: process) holds what it builds: its memory is reported beside.
            recorder = more.enter_context(RssSampler(svc.recorder)) if svc.recorder is not None else None
            readers = h.start_load({**spec, "url": f"{svc.url}{CHAT_PATH}?size={size}&ttft=0"})
            time.sleep(LEAD_S)
            w = fast(svc, window)
            r = h.finish_load(readers, spec["timeout"] + 30)
            quiet(pid)  # the records of the big answers are built: their memory counts too
        early, late = (rss.at(SPREAD_S + f * read_s) for f in (0.4, 0.9))
        return {"wrk": w, "readers": r, "rss_before": before, "rss_peak": rss.peak, "rss_after": rss.last, "rss_early": early,
                "rss_late": late, "recorder_before": recorder.baseline if recorder else None,
                "recorder_peak": recorder.peak if recorder else None}

    def measure(svc: Service, rounds: int) -> dict[str, Any]:
        h.wrk(svc.url, MASTER_KEY, FAST, 2)  # warm-up: pools, caches, the stub's answer built
        h.load({**spec, "url": f"{svc.url}{CHAT_PATH}?size={size}&ttft=0", "n": 4, "rate": 0, "spread": 0})
        quiet(svc.proc.pid)
        out: dict[str, Any] = {"without": [], "with": [], "rss_fresh": rss_bytes(svc.proc.pid)}
        for _ in range(rounds):
            out["without"].append(without(svc))
            out["with"].append(beside(svc))
        return out

    proxy = h.proxy(h.default_variant(), h.nginx, fresh="s7", extra_targets=big)
    data = measure(proxy, min(h.s.rounds, ROUNDS))
    h.stop(proxy)
    lost = h.lost_records(proxy)
    off: dict[str, Any] | None = None
    if h.recording.available:
        off_proxy = h.proxy(Variant("passthrough", False), h.nginx, fresh="s7-off", extra_targets=big)
        off = measure(off_proxy, min(h.s.rounds, ROUNDS))  # as many rounds: a proxy keeps memory from one to the next
        h.stop(off_proxy)

    rec = "recording on" if h.recording.available else "recording off (this build cannot record)"
    w, wo = data["with"], data["without"]
    readers = [r["readers"] for r in w]
    whole = sum(r["whole"] for r in readers)
    asked = n * len(readers)
    res.lines.append(f"{rec}; {len(w)} rounds; wrk c={FAST} for {window} s alone and beside the readers")
    res.lines.append(f"slow readers: {whole}/{asked} answers whole ({readers[0]['expected_size']} bytes, sha256 "
                     f"{readers[0]['expected_sha256'][:12]}…); short {sum(r['short'] for r in readers)}, wrong hash "
                     f"{sum(r['bad_hash'] for r in readers)}, errors {sum(sum(r['errors'].values()) for r in readers)}; "
                     f"read in {fmt_spread(spread([r['duration_s']['p50'] for r in readers]), ' s', 1)} at the median, "
                     f"{fmt_spread(spread([r['rate_mb_s']['p50'] for r in readers]), ' MB/s', 2)}")
    def sp(values: list[float], unit: str = "", digits: int = 2) -> str:
        return fmt_spread(spread(values), unit, digits)

    for name, rounds in (("alone", wo), ("beside", w)):
        res.lines.append(f"fast clients {name:<6}: {sp([r['wrk']['rps'] for r in rounds], ' req/s', 0)}, "
                         f"p50 {sp([_p(r, 'p50') for r in rounds], ' ms')}, p99 {sp([_p(r) for r in rounds], ' ms')}, "
                         f"max {sp([_p(r, 'max') for r in rounds], ' ms', 1)} "
                         f"(wrk's corrected p99 {sp([r['wrk']['p99_ms'] for r in rounds], ' ms', 1)})")
    fresh = data["rss_fresh"]
    growth = [(r["rss_peak"] - fresh) / MB for r in w]
    per = [g / n for g in growth]
    res.lines.append(f"proxy RSS {fresh / MB:.1f} MB before the first round; peak growth over it {sp(growth, ' MB', 1)}, "
                     f"{sp(per, ' MB')} per slow reader; {sp([(r['rss_early'] - fresh) / MB for r in w], ' MB', 1)} 40 % into the read, "
                     f"{sp([(r['rss_late'] - fresh) / MB for r in w], ' MB', 1)} 90 % into it; {(w[-1]['rss_after'] - fresh) / MB:.1f} MB "
                     f"still held after the last round")
    if w[0].get("recorder_peak") is not None:
        res.lines.append(f"recorder process RSS {w[0]['recorder_before'] / MB:.1f} MB before a round; peak growth "
                         f"{sp([(r['recorder_peak'] - r['recorder_before']) / MB for r in w], ' MB', 1)}")
    res.checks.append(Check("big answers whole (length and SHA-256)", f"{whole}/{asked}", f"{asked}/{asked}", whole == asked))
    res.checks.append(at_most(f"fast clients' p99 beside the readers − alone (c={FAST}, {rec})",
                              paired([_p(r) for r in w], [_p(r) for r in wo], "-"), 2, " ms"))
    res.checks.append(at_most(f"proxy RSS growth per slow reader ({rec})", spread(per), PER_READER_MB, " MB"))
    if off is not None:
        ow, owo = off["with"], off["without"]
        ofresh = off["rss_fresh"]
        oper = [(r["rss_peak"] - ofresh) / MB / n for r in ow]
        owhole = sum(r["readers"]["whole"] for r in ow)
        res.lines.append(f"recording off: {owhole}/{n * len(ow)} whole; {sp(oper, ' MB')} per slow reader (peak over the fresh "
                         f"proxy, by round: {', '.join(f'{v:.2f}' for v in oper)}; recording on by round: "
                         f"{', '.join(f'{v:.2f}' for v in per)}); fast clients p99 {sp([_p(r) for r in ow], ' ms')} beside, "
                         f"{sp([_p(r) for r in owo], ' ms')} alone ({sp([r['wrk']['rps'] for r in ow], ' req/s', 0)} / "
                         f"{sp([r['wrk']['rps'] for r in owo], ' req/s', 0)})")
        res.checks.append(at_most("proxy RSS growth per slow reader (recording off)", spread(oper), PER_READER_MB, " MB"))
        res.checks.append(at_most("fast clients' p99 beside the readers − alone (recording off)",
                                  paired([_p(r) for r in ow], [_p(r) for r in owo], "-"), 2, " ms"))
        res.checks.append(Check("big answers whole, recording off", f"{owhole}/{n * len(ow)}", f"{n * len(ow)}/{n * len(ow)}",
                                owhole == n * len(ow)))
    bad = sum(r["wrk"]["non2xx"] + r["wrk"]["socket_errors"] for r in w + wo)
    res.checks.append(Check("fast clients' failed answers", str(bad), "0", bad == 0))
    res.checks.append(Check(f"exchange records lost ({rec}; the proxy's log)", str(lost), "0", lost == 0))
    res.data = {"rounds": data, "recording_off": off, "window_s": window, "readers": n, "size": size, "rate": rate}
    return res

