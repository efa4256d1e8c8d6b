"""The latency-table allocations of a run: ``uniform-latency`` (one kept fraction in every block, chosen on the
measured latency table) and the global searches ``spdy`` / ``evolutionary`` (per-block widths from a search over
the method's own candidate database), each then re-solved sequentially at those widths.

``uniform-latency`` is step 1 and the largest common kept fraction whose predicted block latency meets the
budget (:func:`osscar.allocation.uniform_allocation`, no database, no search): uniform widths at a *measured*
speedup rather than the block-FLOPs one of ``allocation="uniform"``. The global searches:

1. A latency table of the dense architecture at ``allocation_point`` with level 0 timed (a module removed):
   the per-level cost of one block (:func:`~osscar.lm.allocation.levels.latency_costs`).
2. :func:`~osscar.lm.allocation.allocate.allocate_lm`: the candidate database of the run's method at every level
   (dense-model inputs, cached under ``cache_dir``), the search scored on the stitched model (``spdy``: the
   calibration loss; ``evolutionary``: KL to the dense model on the held-out windows, which are disjoint from
   the calibration windows), under the budget ``block latency / speedup`` (embeddings and LM head are neither
   pruned nor counted, as for the uniform and runtime allocations).
3. The caller prunes the model sequentially at the chosen widths (:func:`prune_model_sequential` with per-block
   counts; level 0 removes the module): the database's weights decide the widths, the sequential protocol
   the weights, as the runtime allocation does; or, with ``allocation_apply="database"``, takes the database's
   own weights at those widths (:mod:`osscar.lm.allocation.apply`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import Tensor, nn

GLOBAL_ALLOCATIONS = ("spdy", "evolutionary")
TABLE_ALLOCATIONS = ("uniform-latency", *GLOBAL_ALLOCATIONS)  # the allocations this module runs
FITNESS_SAMPLES = "fitness_samples"  # allocation_params key: calibration rows spdy's fitness scores (default: all)


def search_settings(allocation: str, params: dict[str, Any], seed: int) -> tuple[Any, int | None]:
    """(allocator settings, fitness rows) from a run's ``allocation_params``: the fields of
    :class:`~osscar.allocation.SpdyConfig` / :class:`~osscar.allocation.EvolutionConfig` (``seed``: the
    run's seed unless given) and, for ``spdy``, ``fitness_samples``. ValueError (one line) for a key the
    allocation does not take or a bad value."""
    from dataclasses import fields

    from osscar.allocation import EvolutionConfig, SpdyConfig

    if not isinstance(params, dict):
        raise ValueError(f"allocation_params must be a dict, got {type(params).__name__}")
    cls = {"spdy": SpdyConfig, "evolutionary": EvolutionConfig}.get(allocation)
    if cls is None:
        if params:
            raise ValueError(f"allocation_params {sorted(params)} given, but allocation={allocation!r} takes none "
                             "(only spdy and evolutionary have search settings)")
        return None, None
    allowed = [f.name for f in fields(cls)] + ([FITNESS_SAMPLES] if allocation == "spdy" else [])
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ValueError(f"allocation_params {unknown} unknown for allocation={allocation!r}; allowed: {', '.join(allowed)}")
    settings = {k: (tuple(v) if isinstance(v, list) else v) for k, v in params.items() if k != FITNESS_SAMPLES}
    rows = params.get(FITNESS_SAMPLES)
    if rows is not None and (isinstance(rows, bool) or not isinstance(rows, int) or rows < 1):
        raise ValueError(f"allocation_params {FITNESS_SAMPLES} must be a positive integer, got {rows!r}")
    return cls(**{"seed": seed, **settings}), rows


def _table_costs(model: nn.Module, config: Any) -> tuple[Any, dict[str, list[int]], dict, tuple[int, int]]:
    """(adapter, level ladder, per-level latency of one block, (batch, seqlen)): the latency table of the dense
    architecture at ``allocation_point`` with level 0 timed (cached per architecture and point)."""
    from osscar.lm.adapters import get_adapter
    from osscar.lm.allocation.levels import ladder, latency_costs
    from osscar.lm.evaluation.latency import latency_table

    adapter = get_adapter(model, config.attention_unit)
    batch, seqlen = config.allocation_point or (1, config.seqlen)
    levels = ladder(adapter, config.allocation_mlp_levels)
    table = latency_table(model.config, batch=batch, seqlen=seqlen, threads=config.threads,
                          repeats=config.latency_repeats, mlp_levels=config.allocation_mlp_levels, device=config.device,
                          dtype=config.dtype, cache_dir=config.cache_dir, removal=True,
                          attention_unit=config.attention_unit)
    return adapter, levels, latency_costs(table, levels), (batch, seqlen)


def uniform_latency_allocation(model: nn.Module, config: Any) -> tuple[dict[int, int], dict[int, int], dict]:
    """({block: attention groups kept}, {block: neurons kept}, report): the largest kept fraction, the same in every
    block and consumer (:func:`osscar.allocation.uniform.at_fraction`), whose predicted block latency meets
    dense / ``config.speedup``. ValueError if the target is out of reach."""
    from osscar.allocation import Budget, levels_of, run_allocator
    from osscar.lm.allocation.allocate import layer_choices, widths_of

    if config.layers is not None:
        raise ValueError("allocation='uniform-latency' allocates every block; it cannot be combined with layers")
    adapter, levels, costs, point = _table_costs(model, config)
    n_blocks = len(adapter.layers(model))
    choices = layer_choices(n_blocks, levels, costs)
    dense_cost = n_blocks * (costs["attn"][levels["attn"][-1]] + costs["mlp"][levels["mlp"][-1]])
    limit = Budget("latency", float(config.speedup), True).check(choices, dense_cost)
    result = run_allocator("uniform", choices, limit)
    widths = widths_of(levels_of(choices, result.allocation))
    report = {"scheme": "one kept fraction in every block, the largest whose predicted block latency (latency "
                        "table) meets the target; then sequential pruning at those widths",
              "target_speedup": float(config.speedup), "point": list(point), "limit": limit, "dense_cost": dense_cost,
              "predicted_cost": result.cost, "predicted_speedup": dense_cost / result.cost if result.cost else None,
              "kept_attn_groups": [a for a, _ in widths], "kept_neurons": [m for _, m in widths]}
    return dict(enumerate(report["kept_attn_groups"])), dict(enumerate(report["kept_neurons"])), report


def database_root(cache_dir: str | os.PathLike | None) -> Path:
    """Where candidate databases live: ``<cache>/alloc-db`` (``$OSSCAR_CACHE`` or ``~/.cache/osscar``)."""
    base = Path(cache_dir) if cache_dir else Path(os.environ.get("OSSCAR_CACHE", Path.home() / ".cache" / "osscar"))
    return base / "alloc-db"


def global_allocation(model: nn.Module, segments: Tensor, heldout: Tensor | None, config: Any, method: Any,
                      progress: Callable[[str], None] | None = None) -> tuple[dict[int, int], dict[int, int], dict]:
    """({block: attention groups kept}, {block: neurons kept}, report) for ``config.allocation``.

    ``segments: (n, seqlen)`` calibration ids; ``heldout: (h, seqlen')`` held-out ids (``evolutionary``).
    ValueError if the target is out of reach (naming the fastest reachable speedup)."""
    from osscar.allocation import Budget
    from osscar.lm.allocation.allocate import allocate_lm

    if config.layers is not None:
        raise ValueError(f"allocation={config.allocation!r} allocates every block; it cannot be combined with layers")
    adapter, _, costs, (batch, seqlen) = _table_costs(model, config)
    settings, rows = search_settings(config.allocation, config.allocation_params, config.seed)
    out = allocate_lm(model, segments, heldout, method, config.allocation, Budget("latency", float(config.speedup), True),
                      database_root(config.cache_dir), mlp_steps=config.allocation_mlp_levels, damping=config.damping,
                      costs=costs, fixed=0.0, config=settings, fitness_rows=rows, progress=progress, adapter=adapter)
    keep_attn = {i: a for i, (a, _) in enumerate(out.widths)}
    keep_mlp = {i: m for i, (_, m) in enumerate(out.widths)}
    then = ("the chosen widths' weights taken from the database" if config.allocation_apply == "database"
            else "then sequential pruning at the chosen widths")
    report = {"scheme": f"{config.allocation} search over the method's candidate database (dense-model inputs), {then}",
              "apply": config.allocation_apply, "target_speedup": float(config.speedup), "point": [batch, seqlen],
              **out.to_dict(),
              "kept_attn_groups": [keep_attn[i] for i in range(len(out.widths))],
              "kept_neurons": [keep_mlp[i] for i in range(len(out.widths))]}
    return keep_attn, keep_mlp, report
