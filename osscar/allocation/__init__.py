"""Per-layer allocation: which width each prunable layer keeps under a global budget.

Model-independent: the layers' options (:class:`LayerChoices`: levels, cost, layer-wise error) come
from the caller (for LMs, the per-layer candidate database), and so does the whole-model fitness the
searches score candidates with. Modules: ``choices`` (options, allocations), ``budgets`` (targets and
limits), ``dp`` (the multiple-choice knapsack), ``uniform``, ``runtime`` (today's knapsack on
{level: value} tables), ``spdy`` and ``evolutionary`` (the searches), ``loss_curves`` (Stage-A
removal paths), ``result`` (what an allocator returns).

This module is the registry of allocators by name (:data:`ALLOCATORS`, :func:`run_allocator`).
``removal_path`` and ``loss_at`` are imported on first use, so that the rest imports without torch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from osscar.allocation.budgets import BUDGET_KINDS, AllocationError, Budget, least_cost, total_cost, within
from osscar.allocation.choices import Allocation, LayerChoices, check_allocation, levels_of, weighted_error
from osscar.allocation.dp import DEFAULT_RESOLUTION, solve_dp
from osscar.allocation.evolutionary import EvolutionConfig, search_evolutionary
from osscar.allocation.result import SearchResult
from osscar.allocation.runtime import allocate
from osscar.allocation.spdy import SpdyConfig, search_spdy
from osscar.allocation.uniform import uniform_allocation

__all__ = ["ALLOCATORS", "BUDGET_KINDS", "DEFAULT_RESOLUTION", "Allocation", "AllocationError", "AllocatorInfo", "Budget",
           "EvolutionConfig", "LayerChoices", "SearchResult", "SpdyConfig", "allocate", "check_allocation",
           "get_allocator", "least_cost", "levels_of", "loss_at", "removal_path", "run_allocator", "search_evolutionary",
           "search_spdy", "solve_dp", "total_cost", "uniform_allocation", "weighted_error", "within"]


def __getattr__(name: str) -> Any:
    if name in ("removal_path", "loss_at"):  # their module imports torch (Stage A)
        from osscar.allocation import loss_curves

        return getattr(loss_curves, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass(frozen=True)
class AllocatorInfo:
    """A registered allocator: ``fitness`` names the fitness callable it needs (None: no fitness)."""

    name: str
    summary: str
    fitness: str | None


ALLOCATORS: dict[str, AllocatorInfo] = {a.name: a for a in (
    AllocatorInfo("uniform", "the same kept fraction in every layer, the largest that meets the budget", None),
    AllocatorInfo("runtime", "the multiple-choice knapsack (DP) on the layer-wise errors under the budget", None),
    AllocatorInfo("spdy", "ZipLM/SPDY: DP on c_l·error_l, local search over c scored by the whole model",
                  "fitness(allocation) -> float"),
    AllocatorInfo("evolutionary", "EvoPress: (1 + λ) search from the DP solution, multi-step selection",
                  "fitness(allocation, n_tokens) -> float"),
)}


def get_allocator(name: str) -> AllocatorInfo:
    """The registered allocator ``name``; ValueError (one line, the allowed names) for an unknown one."""
    if name not in ALLOCATORS:
        raise ValueError(f"allocation={name!r} is unknown; allowed: {', '.join(ALLOCATORS)}")
    return ALLOCATORS[name]


def run_allocator(name: str, choices: Sequence[LayerChoices], limit: float, fitness: Callable[..., float] | None = None,
                  config: SpdyConfig | EvolutionConfig | None = None,
                  seed_allocation: Sequence[int] | None = None) -> SearchResult:
    """Run the allocator ``name`` on ``choices`` under ``limit``.

    ``fitness``: required by ``spdy`` and ``evolutionary`` (their signatures in :data:`ALLOCATORS`);
    ``config``: that allocator's settings; ``seed_allocation``: the evolutionary search's start.
    """
    info = get_allocator(name)
    if info.fitness is not None and fitness is None:
        raise ValueError(f"allocation={name!r} needs a fitness callable: {info.fitness}")
    wanted = {"spdy": SpdyConfig, "evolutionary": EvolutionConfig}.get(name)
    if config is not None and (wanted is None or not isinstance(config, wanted)):
        raise ValueError(f"allocation={name!r} takes {'no config' if wanted is None else wanted.__name__}, "
                         f"got {type(config).__name__}")
    if name == "spdy":
        return search_spdy(choices, limit, fitness, config)  # type: ignore[arg-type]
    if name == "evolutionary":
        return search_evolutionary(choices, limit, fitness, seed_allocation, config)  # type: ignore[arg-type]
    alloc = uniform_allocation(choices, limit) if name == "uniform" else solve_dp(choices, limit)
    return SearchResult(allocator=name, allocation=alloc, levels=levels_of(choices, alloc),
                        cost=total_cost(choices, alloc), limit=limit)
