"""The scenarios of BENCHMARKS.md, in the order a run takes them (S2 first: S1 needs its capacity)."""

from __future__ import annotations

from collections.abc import Callable

from ..harness import Harness, Result
from . import fairness, peer, s1_latency, s2_capacity, s3_slow, s4_memory, s5_drops, s6_translation, s7_big, s8_scale, s9_llama

ORDER = ["S2", "S1", "OVERHEAD", "S3", "S6", "S4", "S5", "FAIR", "S7", "S8", "S9", "PEER"]


def runners(selected: set[str]) -> dict[str, Callable[[Harness], Result]]:
    """Each selected scenario's entry point; S2 and S3 also measure the TGI path when S6 is selected."""
    tgi = "S6" in selected
    table: dict[str, Callable[[Harness], Result]] = {
        "S1": s1_latency.run,
        "S2": lambda h: s2_capacity.run(h, tgi),
        "OVERHEAD": s1_latency.run_overhead,
        "S3": lambda h: s3_slow.run(h, tgi),
        "S4": s4_memory.run,
        "S5": s5_drops.run,
        "S6": s6_translation.run,
        "S7": s7_big.run,
        "S8": s8_scale.run,
        "FAIR": fairness.run,
        "S9": s9_llama.run,
        "PEER": peer.run,
    }
    return {sid: table[sid] for sid in ORDER if sid in selected}
