"""The options of one prunable layer (its candidate levels, their cost and estimated error) and allocations.

An *allocation* is a tuple of option indices, one per layer, in the order of the layers'
:class:`LayerChoices`: ``allocation[l] = j`` keeps ``choices[l].levels[j]`` units of layer ``l``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

Allocation = tuple[int, ...]


def _as_vector(name: str, field: str, values: object, n: int) -> np.ndarray:
    """``values`` as a read-only float64 vector of length n, all finite; ValueError naming the field otherwise."""
    arr = np.array(values, dtype=np.float64)
    if arr.shape != (n,):
        raise ValueError(f"LayerChoices {name!r}: {field} must have one value per level ({n}), got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"LayerChoices {name!r}: {field} must be finite, got {arr.tolist()}")
    arr.setflags(write=False)
    return arr


@dataclass(frozen=True, eq=False)
class LayerChoices:
    """The candidate options of one prunable layer (one consumer: an attention or MLP module).

    Attributes:
        name: the layer's name (e.g. ``"model.layers.3.mlp"``), used in messages and records.
        levels: units kept at each option, strictly increasing; 0 = the module removed.
        cost: (n_options,) float, the option's cost in the budget's unit (seconds, FLOPs, parameters), ≥ 0.
        error: (n_options,) float, the layer-wise loss estimate of the option (lower is better).
    """

    name: str
    levels: tuple[int, ...]
    cost: np.ndarray
    error: np.ndarray

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"LayerChoices: name must be a non-empty string, got {self.name!r}")
        levels = tuple(self.levels)
        if not levels:
            raise ValueError(f"LayerChoices {self.name!r}: needs at least one level")
        if not all(isinstance(k, (int, np.integer)) and not isinstance(k, bool) and k >= 0 for k in levels):
            raise ValueError(f"LayerChoices {self.name!r}: levels must be integers ≥ 0, got {list(levels)}")
        levels = tuple(int(k) for k in levels)
        if any(a >= b for a, b in zip(levels, levels[1:])):
            raise ValueError(f"LayerChoices {self.name!r}: levels must be strictly increasing, got {list(levels)}")
        cost = _as_vector(self.name, "cost", self.cost, len(levels))
        if np.any(cost < 0):
            raise ValueError(f"LayerChoices {self.name!r}: cost must be ≥ 0, got {cost.tolist()}")
        object.__setattr__(self, "levels", levels)
        object.__setattr__(self, "cost", cost)
        object.__setattr__(self, "error", _as_vector(self.name, "error", self.error, len(levels)))

    @property
    def n_options(self) -> int:
        return len(self.levels)


def check_allocation(choices: Sequence[LayerChoices], allocation: Sequence[int]) -> Allocation:
    """``allocation`` as a tuple of ints after checking it has one valid option index per layer."""
    if len(allocation) != len(choices):
        raise ValueError(f"an allocation needs one option per layer ({len(choices)}), got {len(allocation)}")
    out = tuple(int(j) for j in allocation)
    for c, j in zip(choices, out):
        if not 0 <= j < c.n_options:
            raise ValueError(f"layer {c.name!r}: option {j} is out of range [0, {c.n_options - 1}]")
    return out


def levels_of(choices: Sequence[LayerChoices], allocation: Sequence[int]) -> list[int]:
    """The units kept per layer under ``allocation``."""
    return [c.levels[j] for c, j in zip(choices, check_allocation(choices, allocation))]


def weighted_error(choices: Sequence[LayerChoices], allocation: Sequence[int],
                   weights: Sequence[float] | None = None) -> float:
    """Σ_l w_l · error_l(allocation_l) (w = 1 when ``weights`` is None): the additive objective of the DP."""
    w = [1.0] * len(choices) if weights is None else list(weights)
    return math.fsum(wl * float(c.error[j]) for wl, c, j in zip(w, choices, check_allocation(choices, allocation)))
