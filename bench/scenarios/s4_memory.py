"""S4: the proxy's memory: one very long stream, many concurrent streams twice, and a client that reads nothing.

A fresh proxy process serves this scenario alone, so its baseline is not what earlier scenarios left.
Resident memory is sampled every 20 ms from /proc while each load runs; the figures are peak growth
over the baseline taken just before.
"""

from __future__ import annotations

import time
from typing import Any

from ..configs import MASTER_KEY, Variant, auth_headers
from ..harness import CHAT_PATH, STREAM_BODY, Check, Harness, Result
from ..procs import RssSampler, rss_bytes

MB = 1024 * 1024


def stream_spec(url: str, n: int, **extra: Any) -> dict[str, Any]:
    return {"mode": "burst", "url": url, "body": STREAM_BODY, "headers": auth_headers(MASTER_KEY), "n": n, **extra}


def settle(pid: int) -> int:
    """RSS once the proxy has had a moment to drop what a finished load left behind."""
    time.sleep(0.5)
    return rss_bytes(pid)


def run(h: Harness) -> Result:
    res = Result("S4", "memory (resident set of the proxy process)")
    proxy = h.proxy(h.default_variant(), h.stub.url, fresh="s4")
    pid = proxy.proc.pid
    base = proxy.url + CHAT_PATH
    h.load(stream_spec(base, 20))  # warm-up: imports, pools and caches that a first request fills
    h.stub_idle()

    # One long stream, as fast as the stub can write it.
    events = h.s.long_events
    before = settle(pid)
    with RssSampler(pid) as rss:
        long = h.load(stream_spec(f"{base}?tokens={events}&token_delay=0&ttft=0", 1, timeout=600))
    growth = (rss.peak - before) / MB
    got = long["events"]["max"] if long["completed"] else 0
    res.lines.append(f"one stream of {events} events: {got:.0f} events read, [DONE] {'missing' if long['missing_done'] else 'seen'}; "
                     f"RSS {before / MB:.1f} MB → peak {rss.peak / MB:.1f} MB")
    label = f"long stream ({events} events) RSS growth"
    res.checks.append(Check(label, f"{growth:+.2f} MB", "≤ +5 MB", growth <= 5 and long["completed"] == 1))
    h.stub_idle()
    if h.recording.available:
        # The same stream with recording off, to tell the recorder's share from the relay's.
        off = h.proxy(Variant("passthrough", False), h.stub.url, fresh="s4-off")
        off_base = off.url + CHAT_PATH
        h.load(stream_spec(off_base, 20))
        h.stub_idle()
        off_before = settle(off.proc.pid)
        with RssSampler(off.proc.pid) as off_rss:
            h.load(stream_spec(f"{off_base}?tokens={events}&token_delay=0&ttft=0", 1, timeout=600))
        res.lines.append(f"    the same stream with recording off: RSS growth {(off_rss.peak - off_before) / MB:+.2f} MB")
        h.stop(off)
        h.stub_idle()

    # Many concurrent streams, twice. Streams last 8 s (2 s in a quick run) with an event every 200 ms: all must be open at
    # once, and 1000 streams at 50 events/s each would swamp the load core that the stub and the client
    # share (the figure would then measure admission, not memory). The figure per stream divides by
    # how many the upstream saw at once, never by more.
    n = h.s.concurrent_streams
    url = f"{base}?tokens={h.s.concurrent_tokens}&token_delay=0.2"
    peaks, afters, actives = [], [], []
    before = settle(pid)
    for _ in range(2):
        h.stub_reset()
        with RssSampler(pid) as rss:
            out = h.load(stream_spec(url, n, timeout=180))
        h.stub_idle()
        peaks.append(rss.peak)
        afters.append(settle(pid))
        actives.append(h.stub_stats()["peak_active"])
        if out["completed"] != n:
            res.lines.append(f"    only {out['completed']} of {n} streams completed: {out['errors']} {out['statuses']}")
    per_stream = (peaks[0] - before) / max(1, min(n, actives[0])) / 1024
    res.lines.append(f"{n} concurrent streams (upstream saw at most {actives[0]} and {actives[1]} at once): "
                     f"RSS {before / MB:.1f} MB → peak {peaks[0] / MB:.1f} MB, then {afters[0] / MB:.1f} MB; "
                     f"second round peak {peaks[1] / MB:.1f} MB, then {afters[1] / MB:.1f} MB")
    res.checks.append(Check(f"memory per concurrent stream ({n})", f"{per_stream:.1f} KiB", "≤ 32 KiB", per_stream <= 32))
    if h.recording.available:
        off = h.proxy(Variant("passthrough", False), h.stub.url, fresh="s4-off")
        h.load(stream_spec(off.url + CHAT_PATH, 20))
        h.stub_idle()
        h.stub_reset()
        off_before = settle(off.proc.pid)
        with RssSampler(off.proc.pid) as off_rss:
            h.load(stream_spec(f"{off.url}{CHAT_PATH}?tokens={h.s.concurrent_tokens}&token_delay=0.2", n, timeout=180))
        h.stub_idle()
        seen = h.stub_stats()["peak_active"]
        per = (off_rss.peak - off_before) / max(1, min(n, seen)) / 1024
        res.lines.append(f"    the same {n} streams with recording off: {per:.1f} KiB per stream ({seen} at once)")
        h.stop(off)
    second = (peaks[1] / peaks[0] - 1) * 100
    res.checks.append(Check("second round peak over first", f"{second:+.2f} %", "≤ +2 %", second <= 2))

    # A client that asks for a fast, long stream and reads nothing.
    h.stub_reset()
    before = settle(pid)
    slow_url = f"{base}?tokens=100000&token_delay=0&ttft=0"
    with RssSampler(pid) as rss:
        h.load({"mode": "slow", "url": slow_url, "body": STREAM_BODY, "headers": auth_headers(MASTER_KEY), "hold": h.s.slow_hold_s})
    growth = (rss.peak - before) / MB
    h.stub_idle(timeout=10)
    st = h.stub_stats()
    res.lines.append(f"slow reader held {h.s.slow_hold_s:g} s: RSS {before / MB:.1f} MB → peak {rss.peak / MB:.1f} MB; "
                     f"upstream request {'cancelled' if st['cancelled'] else 'not cancelled'} after the client left")
    res.checks.append(Check("slow reader RSS growth", f"{growth:+.2f} MB", "≤ +2 MB", growth <= 2))
    res.data = {"long_stream": long, "peaks": peaks, "afters": afters, "per_stream_kib": per_stream, "peak_active": actives}
    h.stop(proxy)
    return res
