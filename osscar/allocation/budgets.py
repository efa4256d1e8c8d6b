"""Budgets of an allocation: what is counted (latency, FLOPs, parameters), the target, and the limit it sets.

A :class:`Budget` turns the dense model's cost into a limit on the summed cost of the prunable
layers' options. The target is either a speedup (``as_speedup=True``: the total may be at most
``dense / target``) or, as for ``--head-fraction``/``--neuron-fraction``, the fraction of the dense
cost *removed* (``as_speedup=False``: at most ``dense · (1 − target)``). ``fixed`` is the part of
the dense cost no option changes (embeddings, LM head, norms): it is counted in the dense cost and
in the target total, and taken off the limit the layers share.

Feasibility is checked with a relative tolerance of :data:`FEASIBILITY_RTOL` (floating-point
rounding only): :func:`within` is the one test every search applies to every candidate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from osscar.allocation.choices import LayerChoices, check_allocation

BUDGET_KINDS = ("latency", "flops", "params")
FEASIBILITY_RTOL = 1e-9


class AllocationError(ValueError):
    """A budget or allocation request that cannot be met; the message is one line for the user."""


def total_cost(choices: Sequence[LayerChoices], allocation: Sequence[int]) -> float:
    """Σ_l cost_l(allocation_l), the summed cost of the chosen options."""
    return math.fsum(float(c.cost[j]) for c, j in zip(choices, check_allocation(choices, allocation)))


def least_cost(choices: Sequence[LayerChoices]) -> float:
    """Σ_l min_j cost_l(j): the cheapest total any allocation reaches."""
    return math.fsum(float(c.cost.min()) for c in choices)


def within(cost: float, limit: float) -> bool:
    """Whether ``cost`` meets ``limit`` (up to a relative :data:`FEASIBILITY_RTOL` of floating-point rounding)."""
    return cost <= limit + FEASIBILITY_RTOL * abs(limit)


@dataclass(frozen=True)
class Budget:
    """What an allocation may cost.

    Attributes:
        kind: ``latency`` (measured seconds), ``flops`` (block FLOPs) or ``params`` (parameter count).
        target: a speedup ≥ 1 when ``as_speedup``, else the fraction of the dense cost removed, in [0, 1).
        as_speedup: how ``target`` reads (see the module docstring).
    """

    kind: Literal["latency", "flops", "params"]
    target: float
    as_speedup: bool = True

    def __post_init__(self) -> None:
        if self.kind not in BUDGET_KINDS:
            raise ValueError(f"budget kind {self.kind!r} is unknown; allowed: {', '.join(BUDGET_KINDS)}")
        t = self.target
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t):
            raise ValueError(f"budget target must be a finite number, got {t!r}")
        if self.as_speedup and t < 1:
            raise ValueError(f"budget target {t!r} is a speedup: it must be ≥ 1")
        if not self.as_speedup and not 0 <= t < 1:
            raise ValueError(f"budget target {t!r} is the fraction of the {self.kind} removed: it must be in [0, 1)")

    def describe(self) -> str:
        return f"{self.target:g}× {self.kind} speedup" if self.as_speedup else f"{self.target:g} of the {self.kind} removed"

    def limit(self, dense_cost: float, fixed: float = 0.0) -> float:
        """The summed option cost allowed: target total − ``fixed`` (both in ``dense_cost``'s unit).

        ``dense_cost``: the dense model's total cost, ``fixed`` included (0 ≤ fixed ≤ dense_cost).
        """
        if not math.isfinite(dense_cost) or dense_cost <= 0:
            raise ValueError(f"dense cost must be a positive finite number, got {dense_cost!r}")
        if not math.isfinite(fixed) or not 0 <= fixed <= dense_cost:
            raise ValueError(f"fixed cost must be in [0, dense cost {dense_cost:g}], got {fixed!r}")
        total = dense_cost / self.target if self.as_speedup else dense_cost * (1 - self.target)
        return total - fixed

    def check(self, choices: Sequence[LayerChoices], dense_cost: float, fixed: float = 0.0) -> float:
        """:meth:`limit`, after checking the cheapest allocation meets it; AllocationError naming the
        fastest reachable speedup (dense / (fixed + least cost)) when it does not."""
        limit = self.limit(dense_cost, fixed)
        cheapest = least_cost(choices)
        if within(cheapest, limit):
            return limit
        reach = fixed + cheapest
        best = dense_cost / reach if reach > 0 else math.inf
        raise AllocationError(f"{self.describe()} is out of reach: the fastest reachable is a {best:.4g}× speedup "
                              f"({1 - reach / dense_cost:.4g} removed), with every layer at its cheapest option")
