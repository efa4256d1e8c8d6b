"""Multiple-choice knapsack by dynamic programming: one option per layer, least Σ w_l·error_l under a cost limit.

The cost axis is discretised into buckets, and every option's cost is rounded **up** to whole
buckets (``ceil(cost / bucket − 1e-9)``, the 1e-9 absorbing floating-point error when a cost lies on
the grid). An allocation is feasible for the DP when its bucket counts fit in the limit's buckets, so
the true total never exceeds the limit (by more than n_layers · 1e-9 buckets of rounding), and the
DP is exact on that discretised problem: it returns a minimiser of Σ w_l·error_l over every
allocation whose rounded-up costs fit. The bucket:

* **exact grid**: when every cost is an integer (parameter or FLOP counts) and ``limit / g`` ≤
  ``resolution`` for their greatest common divisor g, the bucket is g and the limit holds
  ``floor(limit / g)`` of them: nothing is rounded, the DP is exact on the problem itself;
* otherwise ``limit / resolution`` (measured latencies): an allocation may be turned away when it fits
  by less than one bucket per layer, which a finer ``resolution`` recovers.

Time O(n_layers · n_options · resolution) (vectorised over the buckets), memory O(n_layers · resolution).
Ties go to the option listed first and then to the smallest total bucket count.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from osscar.allocation.budgets import AllocationError, least_cost, within
from osscar.allocation.choices import Allocation, LayerChoices

DEFAULT_RESOLUTION = 10_000
_GRID_TOL = 1e-9  # in buckets: a cost within 1e-9 bucket above a grid point counts as on it


def knapsack(costs: Sequence[Sequence[float]], errors: Sequence[Sequence[float]], unit: float,
             resolution: int) -> list[int] | None:
    """The DP itself (module docstring) on plain arrays.

    Args:
        costs: per layer, (n_options,) costs ≥ 0.
        errors: per layer, (n_options,) objective terms (weights already applied).
        unit: the bucket (> 0); costs are rounded up to whole buckets.
        resolution: the buckets the limit holds (limit ≥ unit · resolution).

    Returns the option index per layer, or None when no allocation fits once costs are rounded up.
    """
    best = np.full(resolution + 1, math.inf)  # best[b]: least objective with exactly b buckets used
    best[0] = 0.0
    steps: list[tuple[np.ndarray, list[int]]] = []  # per layer: (option chosen at each bucket, buckets per option)
    for cost, err in zip(costs, errors):
        new = np.full(resolution + 1, math.inf)
        pick = np.full(resolution + 1, -1, dtype=np.int64)
        widths = [math.ceil(float(c) / unit - _GRID_TOL) for c in cost]
        for j, (w, e) in enumerate(zip(widths, err)):
            if w > resolution:
                continue
            cand = best[: resolution + 1 - w] + float(e)
            better = cand < new[w:]
            new[w:][better] = cand[better]
            pick[w:][better] = j
        best = new
        steps.append((pick, widths))
    end = int(np.argmin(best))
    if not math.isfinite(best[end]):
        return None
    out = []
    for pick, widths in reversed(steps):
        j = int(pick[end])
        out.append(j)
        end -= widths[j]
    return out[::-1]


def grid(choices: Sequence[LayerChoices], limit: float, resolution: int) -> tuple[float, int]:
    """(bucket, buckets in the limit) for ``limit`` > 0: the exact integer grid when it fits in ``resolution``
    buckets, else ``limit / resolution`` (module docstring)."""
    costs = np.concatenate([c.cost for c in choices])
    rounded = np.round(costs)
    if np.all(np.abs(costs - rounded) <= 1e-9 * np.maximum(1.0, costs)) and np.any(rounded > 0):
        g = float(np.gcd.reduce(rounded[rounded > 0].astype(np.int64)))
        n = math.floor(limit / g + _GRID_TOL)
        if n <= resolution:
            return g, n
    return limit / resolution, resolution


def _check_weights(weights: Sequence[float] | None, n: int) -> list[float]:
    if weights is None:
        return [1.0] * n
    w = [float(x) for x in weights]
    if len(w) != n:
        raise ValueError(f"weights must have one value per layer ({n}), got {len(w)}")
    if not all(math.isfinite(x) and x >= 0 for x in w):
        raise ValueError(f"weights must be finite and ≥ 0, got {w}")
    return w


def solve_dp(choices: Sequence[LayerChoices], limit: float, weights: Sequence[float] | None = None,
             resolution: int = DEFAULT_RESOLUTION) -> Allocation:
    """One option per layer minimising Σ_l w_l·error_l subject to Σ_l cost_l ≤ ``limit`` (module docstring).

    Args:
        choices: the layers' options.
        limit: the summed cost allowed (e.g. :meth:`Budget.check`'s result).
        weights: per-layer w_l ≥ 0 (None: all 1), e.g. SPDY's sensitivity coefficients.
        resolution: buckets of the cost axis.

    AllocationError when even the cheapest allocation exceeds ``limit``, or when none fits once
    costs are rounded up (then a larger ``resolution`` may help).
    """
    if not choices:
        raise ValueError("solve_dp needs at least one layer")
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1:
        raise ValueError(f"resolution must be an integer ≥ 1, got {resolution!r}")
    if not math.isfinite(limit):
        raise ValueError(f"limit must be finite, got {limit!r}")
    w = _check_weights(weights, len(choices))
    cheapest = least_cost(choices)
    if not within(cheapest, limit):
        raise AllocationError(f"cost limit {limit:.6g} is below the least total cost {cheapest:.6g} of these options")
    objective = [wl * c.error for wl, c in zip(w, choices)]
    if limit <= 0:  # only free options fit (the cheapest total is 0): best free option per layer
        return tuple(int(np.argmin(np.where(c.cost <= 0, o, math.inf))) for c, o in zip(choices, objective))
    unit, n_buckets = grid(choices, limit, resolution)
    out = knapsack([c.cost for c in choices], objective, unit, n_buckets)
    if out is None:
        raise AllocationError(f"no allocation fits the cost limit {limit:.6g} once costs are rounded up to "
                              f"1/{resolution} of it; raise the resolution")
    return tuple(out)
