"""``allocate_lm``: per-block widths for an LM from a global search over the candidate database.

Steps: the allocator's name is checked, the budget is checked against the cheapest allocation
(:class:`osscar.allocation.Budget`: an unreachable target names the fastest reachable speedup),
both before any calibration work; then the database is built or reused
(:func:`~osscar.lm.allocation.database.build_database`, dense-model inputs), one
:class:`~osscar.allocation.LayerChoices` per block and consumer (block-major: ``0.attn, 0.mlp,
1.attn, …``; errors: the database's relative layer errors; costs: params, FLOPs or measured
latency per level), and the allocator runs (:func:`osscar.allocation.run_allocator`) with the
stitched model's fitness: calibration loss for ``spdy``, KL to the dense model on held-out tokens
for ``evolutionary`` (:class:`~osscar.lm.allocation.stitch.StitchedFitness`). No solver call is
made after the database exists.

Costs of the decoder blocks only (embeddings and LM head are not pruned); for ``latency`` the
caller passes per-level costs (:func:`~osscar.lm.allocation.levels.latency_costs`) and the fixed
time (``table.fixed_s()``), for ``params`` / ``flops`` they are computed
(:func:`~osscar.lm.allocation.levels.level_costs`) with no fixed part.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from torch import Tensor, nn

from osscar.lm.adapters import ModelAdapter, get_adapter
from osscar.lm.allocation.database import CandidateDatabase, build_database
from osscar.lm.allocation.levels import PARTS, ladder, level_costs
from osscar.lm.allocation.stitch import StitchedFitness
from osscar.method import PruningMethod

Costs = Mapping[str, Mapping[int, float]]  # {"attn" | "mlp": {level: cost}} of one block


@dataclass
class LMAllocation:
    """What :func:`allocate_lm` returns (everything a record needs)."""

    widths: list[tuple[int, int]]  # (attention level, MLP level) per block
    database: dict[str, Any]  # key, path, inputs, the build report
    search: dict[str, Any]  # the allocator's SearchResult (trace, evaluations, config)
    budget: dict[str, Any]  # kind, target, dense cost, fixed, limit, predicted cost and speedup
    seconds: dict[str, float]  # database build, search

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "widths": [list(w) for w in self.widths]}


def layer_choices(n_blocks: int, levels: Mapping[str, Sequence[int]], costs: Costs,
                  db: CandidateDatabase | None = None) -> list[Any]:
    """One LayerChoices per block and part, block-major; errors from ``db`` (None: zeros, for the
    budget check before the database exists)."""
    from osscar.allocation import LayerChoices

    out = []
    for i in range(n_blocks):
        for part in PARTS:
            lv = list(levels[part])
            err = db.errors(i, part) if db is not None else dict.fromkeys(lv, 0.0)
            out.append(LayerChoices(name=f"{i}.{part}", levels=tuple(lv), cost=[float(costs[part][k]) for k in lv],
                                    error=[err[k] for k in lv]))
    return out


def widths_of(levels: Sequence[int]) -> list[tuple[int, int]]:
    """Per-layer levels (block-major, attention then MLP) as (attention, MLP) per block."""
    return [(int(levels[j]), int(levels[j + 1])) for j in range(0, len(levels), 2)]


def _fitness(allocator: str, fitness: StitchedFitness, choices: Sequence[Any]) -> Callable[..., float] | None:
    from osscar.allocation import levels_of

    if allocator == "spdy":
        return lambda alloc: fitness.loss(widths_of(levels_of(choices, alloc)))
    if allocator == "evolutionary":
        return lambda alloc, n_tokens: fitness.kl(widths_of(levels_of(choices, alloc)), n_tokens)
    return None


def allocate_lm(model: nn.Module, calibration: Tensor, heldout: Tensor | None, method: PruningMethod, allocator: str,
                budget: Any, root: str | os.PathLike, *, mlp_steps: int = 8, damping: float = 0.01,
                costs: Costs | None = None, fixed: float = 0.0, config: Any = None, batch_size: int = 8,
                fitness_rows: int | None = None, progress: Callable[[str], None] | None = None,
                adapter: ModelAdapter | None = None) -> LMAllocation:
    """Per-block widths of the dense ``model`` for ``budget`` (module docstring).

    ``calibration: (n, seqlen)`` builds the database and scores ``spdy``; ``heldout: (h, seqlen')``
    (not the database's tokens) scores ``evolutionary``. ``costs`` / ``fixed``: per-level costs of
    one block and the unprunable cost, required for a ``latency`` budget. ``config``: the allocator's
    settings; ``fitness_rows``: the first rows of ``calibration`` that ``spdy``'s fitness scores (None: all).
    ``adapter``: the run's, which holds the attention unit (None: ``get_adapter(model)``, kv-group).
    """
    from osscar.allocation import get_allocator, run_allocator

    info = get_allocator(allocator)  # an unknown name fails here, before any work
    if allocator == "evolutionary" and heldout is None:
        raise ValueError("allocation='evolutionary' scores KL on held-out tokens: give heldout")
    adapter = adapter or get_adapter(model)
    n_blocks, levels = len(adapter.layers(model)), ladder(adapter, mlp_steps)
    if costs is None:
        if budget.kind == "latency":
            raise ValueError("a latency budget needs measured per-level costs (levels.latency_costs) and the fixed time")
        costs = level_costs(model.config, mlp_steps, budget.kind, adapter.requested_unit)
    dense_cost = fixed + n_blocks * (costs["attn"][levels["attn"][-1]] + costs["mlp"][levels["mlp"][-1]])
    limit = budget.check(layer_choices(n_blocks, levels, costs), dense_cost, fixed)  # unreachable: before work
    db, report = build_database(model, calibration, method, root, mlp_steps, damping, batch_size, progress, adapter)
    choices = layer_choices(n_blocks, levels, costs, db)
    fitness = StitchedFitness(model, db, calibration[:fitness_rows], heldout, batch_size, adapter)
    t0 = time.perf_counter()
    result = run_allocator(allocator, choices, limit, _fitness(allocator, fitness, choices), config)
    search_s = time.perf_counter() - t0
    widths = widths_of(result.levels)
    predicted = fixed + sum(costs[p][k] for w in widths for p, k in zip(PARTS, w))
    return LMAllocation(
        widths=widths,
        database={"key": db.spec.key(), "path": str(db.path), "spec": db.spec.to_dict(), "build": asdict(report)},
        search={**result.to_dict(), "fitness_kind": info.fitness, "stitched_evaluations": fitness.evaluations},
        budget={"kind": budget.kind, "target": budget.target, "as_speedup": budget.as_speedup, "dense_cost": dense_cost,
                "fixed": fixed, "limit": limit, "predicted_cost": predicted,
                "predicted_speedup": dense_cost / predicted if predicted > 0 else math.inf},
        seconds={"database": report.seconds, "search": search_s})
