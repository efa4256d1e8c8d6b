"""The global allocations of a run (``allocation="spdy"`` or ``"evolutionary"``): per-block widths from a search
over the method's own candidate database, then re-solved sequentially at those widths.

1. A latency table of the dense architecture at ``allocation_point`` with level 0 timed (a module removed):
   the per-level cost of one block (:func:`~osscar.lm.allocation.levels.latency_costs`).
2. :func:`~osscar.lm.allocation.allocate.allocate_lm`: the candidate database of the run's method at every level
   (dense-model inputs, cached under ``cache_dir``), the search scored on the stitched model (``spdy``: the
   calibration loss; ``evolutionary``: KL to the dense model on the held-out windows, which are disjoint from
   the calibration windows), under the budget ``block latency / speedup`` (embeddings and LM head are neither
   pruned nor counted, as for the uniform and runtime allocations).
3. The caller prunes the model sequentially at the chosen widths (:func:`prune_model_sequential` with per-block
   counts; level 0 removes the module): the database's weights decide the widths, the sequential protocol
   the weights, as the runtime allocation does.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import Tensor, nn

GLOBAL_ALLOCATIONS = ("spdy", "evolutionary")


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
    from osscar.lm.adapters import get_adapter
    from osscar.lm.allocation.allocate import allocate_lm
    from osscar.lm.allocation.levels import ladder, latency_costs
    from osscar.lm.evaluation.latency import latency_table

    if config.layers is not None:
        raise ValueError(f"allocation={config.allocation!r} allocates every block; it cannot be combined with layers")
    adapter = get_adapter(model)
    steps = config.allocation_mlp_levels
    batch, seqlen = config.allocation_point or (1, config.seqlen)
    table = latency_table(model.config, batch=batch, seqlen=seqlen, threads=config.threads,
                          repeats=config.latency_repeats, mlp_levels=steps, device=config.device, dtype=config.dtype,
                          cache_dir=config.cache_dir, removal=True)
    costs = latency_costs(table, ladder(adapter, steps))
    out = allocate_lm(model, segments, heldout, method, config.allocation, Budget("latency", float(config.speedup), True),
                      database_root(config.cache_dir), mlp_steps=steps, damping=config.damping, costs=costs,
                      fixed=0.0, progress=progress)
    keep_attn = {i: a for i, (a, _) in enumerate(out.widths)}
    keep_mlp = {i: m for i, (_, m) in enumerate(out.widths)}
    report = {"scheme": f"{config.allocation} search over the method's candidate database (dense-model inputs), "
                        "then sequential pruning at the chosen widths",
              "target_speedup": float(config.speedup), "point": [batch, seqlen], **out.to_dict(),
              "kept_attn_groups": [keep_attn[i] for i in range(len(out.widths))],
              "kept_neurons": [keep_mlp[i] for i in range(len(out.widths))]}
    return keep_attn, keep_mlp, report
