"""Per-layer loss curves for allocation: the loss of a layer at each number of groups kept.

The loss curve of a layer comes for free from one gradual-removal pass (:func:`removal_path`):
Stage A visits every support size from all groups down to the smallest level, and the least-
squares objective is exact on each support it visits. :func:`loss_at` reads a curve between the
sizes it visited.
"""

from __future__ import annotations

from collections.abc import Mapping

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
