"""What an allocator returns: the allocation, its cost and fitness, and the search trace (for the record)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from osscar.allocation.choices import Allocation


@dataclass
class SearchResult:
    """The outcome of one allocator run.

    Attributes:
        allocator: the allocator's registered name.
        allocation: option index per layer.
        levels: units kept per layer (``choices[l].levels[allocation[l]]``).
        cost: Σ cost of the allocation; ``limit``: the limit it meets.
        fitness: the whole-model fitness of ``allocation`` as last scored (None when no fitness was used).
        evaluations: fitness calls made (cached repeats not counted).
        trace: one dict per search step (SPDY) or generation (evolutionary); [] for one-shot allocators.
        config: the allocator's settings, seed included, as plain values.
    """

    allocator: str
    allocation: Allocation
    levels: list[int]
    cost: float
    limit: float
    fitness: float | None = None
    evaluations: int = 0
    trace: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"allocator": self.allocator, "allocation": list(self.allocation), "levels": list(self.levels),
                "cost": self.cost, "limit": self.limit, "fitness": self.fitness, "evaluations": self.evaluations,
                "trace": list(self.trace), "config": dict(self.config)}
