"""How a global search's widths become the pruned model (``allocation_apply``).

Modes (:data:`osscar.options.ALLOCATION_APPLY`):

* ``sequential`` (default): the widths go to :func:`~osscar.lm.calibrate.calibration.prune_model_sequential`,
  which solves every consumer again at its width on the *pruned* model's inputs (the protocol of every other
  run): the database decides the widths, the sequential solve the weights.
* ``database``: every consumer takes the database's own candidate at its width — the kept groups and weights
  solved on the *dense* model's inputs, exactly what the search scored on its stitched model — and no solver
  is called after the search. Level 0 zeroes the consumer (the module's output is its bias), the top level
  keeps the dense weights.

Either way the model leaves this step unsliced with its pruned columns zero, so slicing, saving, evaluation and
latency run as for any other run.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from osscar.groups import block_rows
from osscar.lm.adapters import ModelAdapter, get_adapter
from osscar.lm.allocation.database import CandidateDatabase, DatabaseSpec
from osscar.lm.allocation.levels import PARTS
from osscar.lm.allocation.stitch import check_model
from osscar.lm.calibrate.calibration import LayerRecord, PruneOutcome



def open_database(report: dict[str, Any]) -> CandidateDatabase:
    """The candidate database a global search's ``report`` (``result["allocation"]``) names."""
    from pathlib import Path

    info = report["database"]
    spec = DatabaseSpec(**{**info["spec"], "attn_levels": tuple(info["spec"]["attn_levels"]),
                           "mlp_levels": tuple(info["spec"]["mlp_levels"])})
    return CandidateDatabase.open(Path(info["path"]).parent, spec, create=False)


@torch.no_grad()
def _write_candidate(adapter: Any, layer: nn.Module, part: str, level: int, db: CandidateDatabase,
                     block: int) -> Tensor:
    """Write the database's candidate of one consumer at ``level`` into its unsliced weight ``(m, p)``;
    returns the kept groups ``(level,)``."""
    consumer = adapter.consumer(layer, part)
    n = adapter.n_groups(part)
    if level == n:
        return torch.arange(n)
    if level == 0:
        consumer.weight.data.zero_()
        return torch.zeros(0, dtype=torch.long)
    kept, W = db.candidate(block, part, level)  # W: (m, level·group_size)
    full = torch.zeros_like(consumer.weight.data)
    full[:, block_rows(kept, adapter.group_size(part)).to(full.device)] = W.to(full.device, full.dtype)
    consumer.weight.data.copy_(full)
    return kept


def apply_from_database(model: nn.Module, db: CandidateDatabase, widths: Sequence[tuple[int, int]],
                        adapter: ModelAdapter | None = None) -> PruneOutcome:
    """Write every block's candidates at ``widths`` ((attention level, MLP level) per block) into ``model`` (the
    dense model the database was built from; modified in place, left unsliced). No solver call.

    Each :class:`LayerRecord` carries the database's layer error on the dense calibration inputs (``calib_error``,
    ``calib_rel_error``); ``objective`` is None (the database stores errors, not objectives). ``adapter``: the
    run's, which holds the attention unit (None: ``get_adapter(model)``, kv-group); it must be the database's."""
    adapter = adapter or get_adapter(model)
    check_model(db, model, adapter)
    t0 = time.perf_counter()
    layers = adapter.layers(model)
    if len(widths) != len(layers):
        raise ValueError(f"{len(widths)} widths for {len(layers)} blocks")
    kept: dict[int, dict[str, Tensor]] = {}
    records: list[LayerRecord] = []
    for i, (layer, levels) in enumerate(zip(layers, widths)):
        kept[i] = {}
        for part, level in zip(PARTS, levels):
            if not db.done(i, part):
                raise ValueError(f"candidate database {db.path}: block {i} {part} is not built")
            kept[i][part] = _write_candidate(adapter, layer, part, int(level), db, i)
            consumer = adapter.attn_consumer if part == "attn" else adapter.mlp_consumer
            records.append(LayerRecord(
                name=f"{adapter.layers_path}.{i}.{consumer}", part=part, n_groups=adapter.n_groups(part),
                k=int(level), kept=kept[i][part].tolist(), objective=None, dense_objective=None, seconds=0.0,
                info={"from_database": 1}, calib_error=db.errors(i, part, relative=False)[int(level)],
                calib_rel_error=db.errors(i, part)[int(level)]))
    return PruneOutcome(kept=kept, records=records, seconds_total=time.perf_counter() - t0, seconds_solver=0.0)
