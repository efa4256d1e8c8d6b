"""Runtime-aware per-layer allocation (ZipLM's idea), available to every method.

Given, for every prunable layer, a calibration-loss estimate and a measured latency for each
candidate level (groups kept), choose one level per layer so that the summed latency meets a
budget at the least summed loss: a multiple-choice knapsack, solved exactly on a discretised
latency axis by dynamic programming.

The loss curve of a layer comes for free from one gradual-removal pass (:func:`removal_path`):
Stage A visits every support size from all groups down to the smallest level, and the least-
squares objective is exact on each support it visits.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from osscar.obs import SupportState
from osscar.problem import LayerProblem


def removal_path(problem: LayerProblem, p_hat: int = 1, down_to: int = 0) -> dict[int, float]:
    """Q (least-squares optimum on the support) at each support size visited by Stage A.

    Returns {k: Q} for k = n_groups, n_groups − p̂, …, down_to (the last step may be shorter);
    ``problem.k`` is ignored. Q at k = 0 is 0.
    """
    if not isinstance(p_hat, int) or p_hat < 1:
        raise ValueError(f"p_hat must be an integer ≥ 1, got {p_hat!r}")
    if not isinstance(down_to, int) or not 0 <= down_to <= problem.n_groups:
        raise ValueError(f"down_to must be an integer in [0, {problem.n_groups}], got {down_to!r}")
    state = SupportState(problem, deferred=True)
    path = {problem.n_groups: state.objective()}
    while (n_kept := int(state.kept.sum())) > down_to:
        n_remove = min(p_hat, n_kept - down_to)
        state.remove(torch.topk(state.costs(), n_remove, largest=False).indices)
        path[n_kept - n_remove] = state.objective() if n_kept - n_remove > 0 else 0.0
    return path


def loss_at(path: Mapping[int, float], k: int) -> float:
    """Loss at k from a removal path, linearly interpolated between visited sizes."""
    if k in path:
        return float(path[k])
    sizes = sorted(path)
    if not sizes[0] <= k <= sizes[-1]:
        raise ValueError(f"k={k} is outside the path's range [{sizes[0]}, {sizes[-1]}]")
    hi = next(s for s in sizes if s > k)
    lo = max(s for s in sizes if s < k)
    t = (k - lo) / (hi - lo)
    return float(path[lo]) * (1 - t) + float(path[hi]) * t


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
    unit = budget / resolution
    inf = math.inf
    best = [0.0] + [inf] * resolution  # best[b]: least loss with total buckets exactly b
    choices: list[list[tuple[int, int]]] = []  # per layer: (bucket, level) back-pointers
    for lo, la in zip(losses, latencies):
        new = [inf] * (resolution + 1)
        back = [(-1, -1)] * (resolution + 1)
        for level, lat in la.items():
            w = math.ceil(lat / unit - 1e-9)
            if w > resolution:
                continue
            for b in range(resolution - w + 1):
                if best[b] < inf and best[b] + lo[level] < new[b + w]:
                    new[b + w] = best[b] + lo[level]
                    back[b + w] = (b, level)
        best = new
        choices.append(back)
    end = min(range(resolution + 1), key=lambda b: best[b])
    if best[end] == inf:
        raise ValueError("no allocation meets the budget at this resolution; raise `resolution`")
    levels = []
    for back in reversed(choices):
        prev, level = back[end]
        levels.append(level)
        end = prev
    return levels[::-1]
