"""Percentiles of samples, and the median with its spread over interleaved rounds."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of unsorted values; NaN for none."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def summary(values: Sequence[float]) -> dict[str, float]:
    """n, p50, p90, p99, max and mean of samples (in whatever unit they came)."""
    if not values:
        return {"n": 0, "p50": math.nan, "p90": math.nan, "p99": math.nan, "max": math.nan, "mean": math.nan}
    ordered = sorted(values)
    n = len(ordered)

    def at(q: float) -> float:
        return ordered[max(1, math.ceil(q / 100 * n)) - 1]

    return {"n": n, "p50": at(50), "p90": at(90), "p99": at(99), "max": ordered[-1], "mean": sum(ordered) / n}


def spread(values: Sequence[float]) -> dict[str, Any]:
    """The median of per-round figures, with their min and max (the spread quoted beside every median)."""
    clean = [v for v in values if v is not None and not math.isnan(v)]
    if not clean:
        return {"median": math.nan, "min": math.nan, "max": math.nan, "rounds": list(values)}
    return {"median": statistics.median(clean), "min": min(clean), "max": max(clean), "rounds": list(values)}


def paired(a: Sequence[float], b: Sequence[float], op: str) -> dict[str, Any]:
    """Per-round ``a - b`` or ``a / b`` (rounds are paired because they ran back to back), then their spread."""
    out = []
    for x, y in zip(a, b, strict=True):
        if op == "-":
            out.append(x - y)
        else:
            out.append(x / y if y else math.nan)
    return spread(out)
