"""The ``spdy`` allocator: ZipLM's SPDY search over per-layer sensitivity coefficients.

SPDY (Frantar & Alistarh, 2022; used by ZipLM) does not search allocations directly. It searches
per-layer coefficients c ∈ [0, 1]^L: each c maps to the allocation the dynamic program
(:func:`osscar.allocation.dp.solve_dp`) picks for the objective Σ c_l·error_l under the budget, so
every candidate meets the budget and is layer-wise sensible, while c lets the whole-model fitness
correct the layer-wise error estimates. The search:

1. c = 1 (the plain DP solution, the ``runtime`` allocation), then ``random_inits`` uniform draws;
2. a randomized local search with a shrinking neighbourhood: resample ``k`` random coefficients
   uniformly in [0, 1] and keep the result when the fitness improves; ``k`` starts at
   max(1, round(``resample_fraction`` · L)) and drops by one after ``patience`` steps in a row
   without improvement, down to 1;
3. stop there, or when ``max_evaluations`` fitness calls have been made.

Fitness is whatever the caller passes (lower is better), e.g. the calibration loss of the model
stitched from the candidate database; it must be a deterministic function of the allocation (repeats
are served from a cache and do not count as evaluations). Seeded by a numpy Generator.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from osscar import validate
from osscar.allocation.budgets import total_cost
from osscar.allocation.choices import Allocation, LayerChoices, levels_of
from osscar.allocation.dp import DEFAULT_RESOLUTION, solve_dp
from osscar.allocation.result import SearchResult


@dataclass(frozen=True)
class SpdyConfig:
    """Settings of :func:`search_spdy` (module docstring)."""

    seed: int = 0
    random_inits: int = 0
    resample_fraction: float = 0.1
    patience: int = 20
    max_evaluations: int = 200
    resolution: int = DEFAULT_RESOLUTION

    def __post_init__(self) -> None:
        for name in ("seed", "random_inits", "patience", "max_evaluations", "resolution"):
            validate.int_at_least(f"spdy {name}", getattr(self, name), 0 if name in ("seed", "random_inits") else 1)
        if not 0 < self.resample_fraction <= 1:
            raise ValueError(f"spdy resample_fraction must be in (0, 1], got {self.resample_fraction!r}")


class _Scorer:
    """``fitness`` with a cache by allocation; counts the calls that reached ``fitness``."""

    def __init__(self, fitness: Callable[[Allocation], float], limit: int) -> None:
        self.fitness, self.limit, self.cache, self.calls = fitness, limit, {}, 0

    def exhausted(self) -> bool:
        return self.calls >= self.limit

    def __call__(self, allocation: Allocation) -> tuple[float, bool]:
        """(fitness, whether it came from the cache)."""
        if allocation in self.cache:
            return self.cache[allocation], True
        value = float(self.fitness(allocation))
        if math.isnan(value):
            raise ValueError(f"fitness returned NaN for allocation {list(allocation)}")
        self.calls += 1
        self.cache[allocation] = value
        return value, False


def search_spdy(choices: Sequence[LayerChoices], limit: float, fitness: Callable[[Allocation], float],
                config: SpdyConfig | None = None) -> SearchResult:
    """SPDY search (module docstring): the best allocation found and a trace with the fitness of every step.

    Args:
        choices: the layers' options; ``limit``: the summed cost allowed.
        fitness: allocation → whole-model fitness (lower is better), deterministic.
        config: search settings (default :class:`SpdyConfig`).

    Every allocation scored, and the one returned, meets ``limit`` (it comes from :func:`solve_dp`).
    """
    cfg = config or SpdyConfig()
    rng = np.random.default_rng(cfg.seed)
    n = len(choices)
    score = _Scorer(fitness, cfg.max_evaluations)
    trace: list[dict[str, Any]] = []
    best: dict[str, Any] = {"fitness": math.inf}

    def step(coefs: np.ndarray, phase: str, resampled: int) -> bool:
        alloc = solve_dp(choices, limit, weights=coefs, resolution=cfg.resolution)
        value, cached = score(alloc)
        accepted = "allocation" not in best or value < best["fitness"]
        if accepted:
            best.update(fitness=value, allocation=alloc, coefs=coefs)
        trace.append({"step": len(trace), "phase": phase, "resampled": resampled, "fitness": value,
                      "best": best["fitness"], "accepted": accepted, "cached": cached,
                      "coefficients": [float(x) for x in coefs]})
        return accepted

    step(np.ones(n), "init", 0)
    for _ in range(cfg.random_inits):
        if score.exhausted():
            break
        step(rng.uniform(0.0, 1.0, n), "random", n)
    for k in range(max(1, round(cfg.resample_fraction * n)), 0, -1):
        misses = 0
        while misses < cfg.patience and not score.exhausted():
            coefs = best["coefs"].copy()
            coefs[rng.choice(n, size=k, replace=False)] = rng.uniform(0.0, 1.0, k)
            misses = 0 if step(coefs, "local", k) else misses + 1
    alloc = best["allocation"]
    return SearchResult(allocator="spdy", allocation=alloc, levels=levels_of(choices, alloc),
                        cost=total_cost(choices, alloc), limit=limit, fitness=best["fitness"],
                        evaluations=score.calls, trace=trace,
                        config={**asdict(cfg), "coefficients": [float(x) for x in best["coefs"]]})
