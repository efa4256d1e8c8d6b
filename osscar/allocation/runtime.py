"""Runtime-aware per-layer allocation (ZipLM's idea) on {level: value} tables: the ``runtime`` allocator.

Given, for every prunable layer, a calibration-loss estimate and a measured latency for each
candidate level (groups kept), choose one level per layer so that the summed latency meets a
budget at the least summed loss: the multiple-choice knapsack of :mod:`osscar.allocation.dp`,
with the levels offered in each table's order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from osscar.allocation.dp import knapsack


def allocate(losses: Sequence[Mapping[int, float]], latencies: Sequence[Mapping[int, float]], budget: float,
             resolution: int = 2000) -> list[int]:
    """Choose one level per layer: minimise Σ loss subject to Σ latency ≤ budget.

    Args:
        losses: per layer, {level: calibration loss} (lower is better).
        latencies: per layer, {level: latency} with the same levels.
        budget: the total latency allowed for these layers.
        resolution: buckets of the latency axis; latencies are rounded *up* to a bucket, so a
            returned choice always meets the budget.

    Returns the chosen level of every layer. ValueError if even the fastest levels exceed it.
    """
    if len(losses) != len(latencies):
        raise ValueError(f"losses and latencies must have one entry per layer, got {len(losses)} and {len(latencies)}")
    for i, (lo, la) in enumerate(zip(losses, latencies)):
        if set(lo) != set(la) or not lo:
            raise ValueError(f"layer {i}: losses and latencies must give the same non-empty set of levels")
    fastest = sum(min(la.values()) for la in latencies)
    if fastest > budget * (1 + 1e-12):
        raise ValueError(f"budget={budget:.4g} is below the fastest possible total latency {fastest:.4g}; "
                         "allow smaller levels or a lower target speedup")
    levels = [list(la) for la in latencies]
    picked = knapsack([[la[k] for k in lv] for la, lv in zip(latencies, levels)],
                      [[lo[k] for k in lv] for lo, lv in zip(losses, levels)], budget / resolution, resolution)
    if picked is None:
        raise ValueError("no allocation meets the budget at this resolution; raise `resolution`")
    return [lv[j] for lv, j in zip(levels, picked)]
