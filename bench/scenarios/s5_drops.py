"""S5: clients that drop their streams after 3 events: is every upstream request cancelled within 1 s,
and is every dropped exchange recorded as cut short?

The stub stamps each cancel with ``time.monotonic()``, the client each drop with the same clock, so
the delay is measured across processes without guessing.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from ..configs import MASTER_KEY, auth_headers
from ..harness import CHAT_PATH, STREAM_BODY, Check, Harness, Result, fmt_spread
from ..stats import spread

DROP_AFTER = 3
WITHIN_S = 1.0


def one(h: Harness, url: str, n: int) -> dict[str, Any]:
    """n streams dropped after 3 events; how many upstream requests were cancelled within 1 s of the last drop."""
    h.stub_idle()
    h.stub_reset()
    # Streams long enough (10 s) that only a cancel, never the natural end, finishes them within the window.
    out = h.load({"mode": "burst", "url": f"{url}?tokens=500&token_delay=0.02", "body": STREAM_BODY,
                  "headers": auth_headers(MASTER_KEY), "n": n, "drop_after": DROP_AFTER, "timeout": 30})
    deadline = out["last_drop"] + WITHIN_S
    while time.monotonic() < deadline + 0.2 and h.stub_stats()["cancelled"] < n:
        time.sleep(0.05)
    st = h.stub_stats()
    cancels = sorted(st["cancel_times"])
    within = sum(1 for t in cancels if t <= deadline)
    last = (cancels[-1] - out["last_drop"]) * 1000 if cancels else float("nan")
    h.stub_idle(timeout=15)
    return {"dropped": out["dropped"], "cancelled_within": within, "cancelled": len(cancels), "finished": st["finished"],
            "last_cancel_after_last_drop_ms": last, "errors": out["errors"]}


def cut_short_records(dataset_dir: Path | None) -> int | None:
    """Records marked meta.cut_short in the JSONL files of a dataset dir; None when there is no dataset."""
    if dataset_dir is None or not dataset_dir.exists():
        return None
    count = 0
    for path in dataset_dir.rglob("*.jsonl"):
        for line in path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and (record.get("meta") or {}).get("cut_short"):
                count += 1
    return count


def run(h: Harness) -> Result:
    n = h.s.drop_clients
    res = Result("S5", f"{n} clients drop their streams after {DROP_AFTER} events")
    proxy = h.proxy(h.default_variant(), h.stub.url, fresh="s5")
    before = cut_short_records(proxy.dataset_dir) or 0
    rounds = h.rounds({"direct": lambda d: one(h, h.stub.url + CHAT_PATH, n),
                       "proxy": lambda d: one(h, proxy.url + CHAT_PATH, n)}, 0)
    for name, rs in rounds.items():
        res.lines.append(f"{name:<6} cancelled within 1 s: {', '.join(str(r['cancelled_within']) for r in rs)} of {n}; "
                         f"last cancel after last drop {fmt_spread(spread([r['last_cancel_after_last_drop_ms'] for r in rs]), ' ms', 1)}")
    worst = min(r["cancelled_within"] for r in rounds["proxy"])
    res.checks.append(Check("upstream requests cancelled within 1 s (worst round)", f"{worst}/{n}", f"{n}/{n}", worst == n))
    drops = sum(r["dropped"] for r in rounds["proxy"]) + n  # the warm-up round drops too
    if proxy.dataset_dir is None:
        why = h.recording.skipped if not h.recording.available else "no dataset dir"
        res.checks.append(Check("dropped exchanges recorded as cut short", "not available", "every one", None, why))
    else:
        time.sleep(1.0)  # the recorder writes from a queue
        found = (cut_short_records(proxy.dataset_dir) or 0) - before
        res.checks.append(Check("dropped exchanges recorded as cut short", f"{found}/{drops}", f"{drops}/{drops}", found >= drops))
    res.data = {"rounds": rounds}
    h.stop(proxy)
    return res
