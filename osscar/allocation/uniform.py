"""The ``uniform`` allocator on a candidate database: the same kept fraction in every layer."""

from __future__ import annotations

from collections.abc import Sequence

from osscar.allocation.budgets import AllocationError, total_cost, within
from osscar.allocation.choices import Allocation, LayerChoices


def at_fraction(choices: Sequence[LayerChoices], fraction: float) -> Allocation:
    """Per layer, the option with the largest level ≤ ``fraction`` · (its largest level); its first option when none is."""
    out = []
    for c in choices:
        cap = fraction * c.levels[-1] * (1 + 1e-12)
        out.append(max((j for j, k in enumerate(c.levels) if k <= cap), default=0))
    return tuple(out)


def uniform_allocation(choices: Sequence[LayerChoices], limit: float) -> Allocation:
    """The largest common kept fraction whose allocation (:func:`at_fraction`) meets ``limit``.

    The fractions tried are every level / largest level of every layer, from the largest down.
    AllocationError when none meets the limit.
    """
    fractions = sorted({k / c.levels[-1] for c in choices for k in c.levels if c.levels[-1] > 0}, reverse=True)
    for f in fractions or [0.0]:
        alloc = at_fraction(choices, f)
        if within(total_cost(choices, alloc), limit):
            return alloc
    raise AllocationError(f"no uniform kept fraction meets the cost limit {limit:.6g}")
