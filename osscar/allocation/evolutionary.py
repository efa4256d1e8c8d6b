"""The ``evolutionary`` allocator: EvoPress-style (1 + λ) search over allocations under a budget.

EvoPress (Sieberling et al., 2024) searches the allocations themselves, scored on the whole model
(KL divergence to the dense model on calibration tokens):

* **start** from a given allocation (by default the DP solution, :func:`osscar.allocation.dp.solve_dp`);
* **mutation** moves budget between layers and keeps it met: raise 1–``max_raises`` random layers by
  one option (the number drawn as the smaller of two uniform draws, so small moves are likelier),
  then lower random layers by one option until the total cost is within the limit (a child that
  cannot be brought within the limit, a duplicate, or the parent itself is discarded). Then, with
  probability ``fill_probability``, raise random layers by one option for as long as a raise still
  fits: EvoPress's levels cost the same in every layer, so its repaired children use the budget up;
  here costs differ per layer and level, and without this step children keep the budget the repair
  freed. On 20 instances of ``tests/test_allocation_search.py`` with pairwise interaction tables of
  scale 0.2 / 0.6, 40 generations reached the brute-force optimum on 12 / 12 instances never
  filling, 15 / 9 always filling, 19 / 13 filling half the time (the default);
* **multi-step selection** with growing token counts: the ``offspring`` children are scored on
  ``tokens[0]`` tokens and the best ``survivors[0]`` kept, these are re-scored on ``tokens[1]``, …;
  the parent joins the last stage (elitism), whose single survivor is the next parent;
* a fixed number of ``generations``; the trace records each generation's best fitness.

Fitness is the caller's ``fitness(allocation, n_tokens)`` (lower is better); it must be a
deterministic function of its arguments (repeats are served from a cache and not counted).
Seeded by a numpy Generator; every allocation scored and the one returned meet the limit.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from osscar import validate
from osscar.allocation.budgets import AllocationError, total_cost, within
from osscar.allocation.choices import Allocation, LayerChoices, check_allocation, levels_of
from osscar.allocation.dp import solve_dp
from osscar.allocation.result import SearchResult

Fitness = Callable[[Allocation, int], float]


@dataclass(frozen=True)
class EvolutionConfig:
    """Settings of :func:`search_evolutionary` (module docstring). ``survivors`` and ``tokens``: one
    entry per selection stage; survivors non-increasing and ending at 1, tokens non-decreasing."""

    seed: int = 0
    generations: int = 50
    offspring: int = 16
    survivors: tuple[int, ...] = (4, 1)
    tokens: tuple[int, ...] = (2048, 16384)
    max_raises: int = 3
    fill_probability: float = 0.5
    max_tries: int = 20

    def __post_init__(self) -> None:
        for name in ("seed", "generations", "offspring", "max_raises", "max_tries"):
            validate.int_at_least(f"evolutionary {name}", getattr(self, name), 0 if name in ("seed", "generations") else 1)
        if not 0 <= self.fill_probability <= 1:
            raise ValueError(f"evolutionary fill_probability must be in [0, 1], got {self.fill_probability!r}")
        s, t = tuple(self.survivors), tuple(self.tokens)
        if not s or len(s) != len(t):
            raise ValueError(f"evolutionary survivors and tokens need one entry per stage, got {list(s)} and {list(t)}")
        if not all(isinstance(x, int) and not isinstance(x, bool) and x >= 1 for x in (*s, *t)):
            raise ValueError(f"evolutionary survivors and tokens must be integers ≥ 1, got {list(s)} and {list(t)}")
        if s[-1] != 1 or any(a < b for a, b in zip(s, s[1:])) or s[0] > self.offspring + 1:
            raise ValueError(f"evolutionary survivors must be non-increasing from at most offspring + 1 "
                             f"({self.offspring + 1}) down to 1, got {list(s)}")
        if any(a > b for a, b in zip(t, t[1:])):
            raise ValueError(f"evolutionary tokens must be non-decreasing (growing token counts), got {list(t)}")
        object.__setattr__(self, "survivors", s)
        object.__setattr__(self, "tokens", t)


def mutate(choices: Sequence[LayerChoices], limit: float, parent: Allocation, max_raises: int,
           rng: np.random.Generator, fill_probability: float = 0.0) -> Allocation | None:
    """A child of ``parent`` within ``limit`` (module docstring), or None when it cannot be brought within it."""
    child = list(parent)
    tops = [c.n_options - 1 for c in choices]
    n_raise = int(min(rng.integers(1, max_raises + 1), rng.integers(1, max_raises + 1)))
    for _ in range(n_raise):
        up = [i for i, j in enumerate(child) if j < tops[i]]
        if not up:
            break
        child[up[int(rng.integers(len(up)))]] += 1
    while not within(total_cost(choices, child), limit):
        down = [i for i, j in enumerate(child) if j > 0]
        if not down:
            return None
        child[down[int(rng.integers(len(down)))]] -= 1
    if rng.random() < fill_probability:
        _fill(choices, limit, child, rng)
    return tuple(child)


def _fill(choices: Sequence[LayerChoices], limit: float, child: list[int], rng: np.random.Generator) -> None:
    """Raise random layers of ``child`` (in place) by one option while the raise keeps it within ``limit``."""
    while True:
        cost = total_cost(choices, child)
        up = [i for i, j in enumerate(child) if j < choices[i].n_options - 1
              and within(cost + float(choices[i].cost[j + 1] - choices[i].cost[j]), limit)]
        if not up:
            return
        child[up[int(rng.integers(len(up)))]] += 1


def _offspring(choices: Sequence[LayerChoices], limit: float, parent: Allocation, cfg: EvolutionConfig,
               rng: np.random.Generator) -> list[Allocation]:
    """Up to ``cfg.offspring`` distinct children, each different from the parent (fewer if tries run out)."""
    kids: list[Allocation] = []
    for _ in range(cfg.offspring * cfg.max_tries):
        if len(kids) == cfg.offspring:
            break
        child = mutate(choices, limit, parent, cfg.max_raises, rng, cfg.fill_probability)
        if child is not None and child != parent and child not in kids:
            kids.append(child)
    return kids


class CachedFitness:
    """``fitness`` with a cache by (allocation, tokens); counts the calls that reached ``fitness``."""

    def __init__(self, fitness: Fitness) -> None:
        self.fitness, self.cache, self.calls = fitness, {}, 0

    def __call__(self, allocation: Allocation, n_tokens: int) -> float:
        key = (allocation, n_tokens)
        if key not in self.cache:
            value = float(self.fitness(allocation, n_tokens))
            if math.isnan(value):
                raise ValueError(f"fitness returned NaN for allocation {list(allocation)} on {n_tokens} tokens")
            self.calls += 1
            self.cache[key] = value
        return self.cache[key]


def select(pool: list[Allocation], parent: Allocation, cfg: EvolutionConfig,
           score: CachedFitness) -> tuple[Allocation, float]:
    """Multi-step selection (module docstring): the one survivor of the last stage and its fitness there."""
    values: list[float] = []
    for stage, (keep, n_tokens) in enumerate(zip(cfg.survivors, cfg.tokens)):
        if stage == len(cfg.survivors) - 1 and parent not in pool:
            pool = [*pool, parent]
        values = [score(a, n_tokens) for a in pool]
        order = sorted(range(len(pool)), key=lambda i: values[i])[:keep]  # stable: ties keep the earlier
        pool, values = [pool[i] for i in order], [values[i] for i in order]
    return pool[0], values[0]


def search_evolutionary(choices: Sequence[LayerChoices], limit: float, fitness: Fitness,
                        seed_allocation: Sequence[int] | None = None,
                        config: EvolutionConfig | None = None) -> SearchResult:
    """EvoPress-style search (module docstring): the final parent and the per-generation best fitness.

    Args:
        choices: the layers' options; ``limit``: the summed cost allowed.
        fitness: (allocation, n_tokens) → fitness on that many calibration tokens (lower is better).
        seed_allocation: the starting point (None: :func:`solve_dp` on the layer-wise errors); must meet ``limit``.
        config: search settings (default :class:`EvolutionConfig`).
    """
    cfg = config or EvolutionConfig()
    parent = check_allocation(choices, seed_allocation) if seed_allocation is not None else solve_dp(choices, limit)
    if not within(total_cost(choices, parent), limit):
        raise AllocationError(f"the seed allocation costs {total_cost(choices, parent):.6g}, over the limit {limit:.6g}")
    rng = np.random.default_rng(cfg.seed)
    score = CachedFitness(fitness)
    best = score(parent, cfg.tokens[-1])
    trace: list[dict[str, Any]] = [{"generation": 0, "best_fitness": best, "offspring": 0, "evaluations": score.calls,
                                    "cost": total_cost(choices, parent)}]
    for gen in range(1, cfg.generations + 1):
        kids = _offspring(choices, limit, parent, cfg, rng)
        parent, best = select(kids, parent, cfg, score)
        trace.append({"generation": gen, "best_fitness": best, "offspring": len(kids), "evaluations": score.calls,
                      "cost": total_cost(choices, parent)})
    return SearchResult(allocator="evolutionary", allocation=parent, levels=levels_of(choices, parent),
                        cost=total_cost(choices, parent), limit=limit, fitness=best, evaluations=score.calls,
                        trace=trace, config=asdict(cfg))
