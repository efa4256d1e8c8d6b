"""The stitched model of an allocation, and its fitness: what a global search scores (no solver call).

An **allocation** is one ``(attention level, MLP level)`` per block (the ``per_layer`` widths of
:mod:`osscar.lm.slicing`). :func:`stitch` assembles it from a
:class:`~osscar.lm.allocation.database.CandidateDatabase`: a copy of the dense model whose every
block is sliced to the level's kept groups (level 0: the module removed) and whose consumers get
the database's weights. The result is a sliced model like any other (``save_pruned`` /
``load_pruned``).

:class:`StitchedFitness` scores allocations on the stitched model:

* :meth:`~StitchedFitness.loss` — mean next-token cross-entropy on calibration tokens (SPDY's
  score; the database's own tokens may be used);
* :meth:`~StitchedFitness.kl` — mean per-token KL(dense ‖ stitched) of the final next-token
  distributions on held-out calibration tokens **not used to build the database** (EvoPress's
  score), on the first ``n_tokens`` of them (growing token counts in a multi-step selection).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from osscar.lm.adapters import ModelAdapter, get_adapter
from osscar.lm.allocation.database import CandidateDatabase, data_fingerprint, model_fingerprint
from osscar.lm.allocation.levels import PARTS
from osscar.lm.slicing import finish_slicing, original_widths, slice_block

Allocation = Sequence[tuple[int, int]]  # (attention level, MLP level) per block


def check_model(db: CandidateDatabase, model: nn.Module, adapter: ModelAdapter) -> None:
    """ValueError unless ``db`` was built from this (dense) model with ``adapter``'s attention unit."""
    if db.spec.model != model_fingerprint(model, adapter.requested_unit) or db.spec.model_type != model.config.model_type:
        raise ValueError(f"candidate database {db.path} was built from another model "
                         f"({db.spec.model_type}, fingerprint {db.spec.model}); rebuild it for this one")


@torch.no_grad()
def stitch(dense: nn.Module, db: CandidateDatabase, widths: Allocation, share_weights: bool = False) -> nn.Module:
    """A sliced copy of ``dense`` with every block's consumers taken from ``db`` at ``widths``.

    ``dense`` is not modified. ValueError if a level is not in the database's ladder or a part is
    missing (an unfinished build). ``share_weights``: the copy's modules hold ``dense``'s own tensors
    wherever slicing leaves them whole (embeddings, norms, unpruned projections), so scoring a candidate
    costs the sliced Linears alone, not a second dense model; for a model that is only run and dropped
    (:class:`StitchedFitness`), never for one that is cast, trained or saved."""
    widths = [(int(a), int(m)) for a, m in widths]
    if len(widths) != db.spec.n_blocks:
        raise ValueError(f"allocation has {len(widths)} blocks, the database {db.spec.n_blocks}")
    shared = {id(t): t for t in (*dense.parameters(), *dense.buffers())} if share_weights else {}
    model = copy.deepcopy(dense, memo=shared)  # slicing writes new Linears: no shared tensor is written
    adapter = get_adapter(model, db.spec.attention_unit)
    original = original_widths(adapter)
    for i, (layer, levels) in enumerate(zip(adapter.layers(model), widths)):
        kept: dict[str, Tensor] = {}
        weights: dict[str, Tensor] = {}
        for part, level in zip(PARTS, levels):
            if not db.done(i, part):
                raise ValueError(f"candidate database {db.path}: block {i} {part} is not built yet")
            cand = db.candidate(i, part, level)
            if level == 0:
                kept[part] = torch.zeros(0, dtype=torch.long)
            elif cand is not None:
                kept[part], weights[part] = cand
        slice_block(adapter, layer, kept)
        for part, W in weights.items():
            consumer = adapter.consumer(layer, part)
            consumer.weight.data.copy_(W.to(consumer.weight.dtype))
    finish_slicing(model, adapter, widths, original)
    return model


def _log_probs(model: nn.Module, ids: Tensor, batch_size: int) -> Tensor:
    """Next-token log-probabilities ``(n, seqlen − 1, vocab)`` float64 of ``ids: (n, seqlen)``."""
    device = next(model.parameters()).device
    out = [torch.log_softmax(model(ids[b:b + batch_size].to(device), use_cache=False).logits[:, :-1].double(), -1)
           for b in range(0, len(ids), batch_size)]
    return torch.cat(out).cpu()


@dataclass
class StitchedFitness:
    """Scores of allocations on stitched models (module docstring). ``calibration: (n, seqlen)``,
    ``heldout: (h, seqlen')`` token ids, which must differ from the database's tokens (None: no
    :meth:`kl`)."""

    dense: nn.Module
    db: CandidateDatabase
    calibration: Tensor
    heldout: Tensor | None
    batch_size: int = 8
    adapter: ModelAdapter | None = None  # the run's, which holds the attention unit (None: kv-group)
    evaluations: int = 0
    _dense_lp: Tensor | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.adapter = self.adapter or get_adapter(self.dense)
        check_model(self.db, self.dense, self.adapter)
        if self.heldout is not None and data_fingerprint(self.heldout) == self.db.spec.data:
            raise ValueError("the KL tokens (heldout) are the database's calibration tokens; give tokens "
                             "not used to build the database")

    @torch.no_grad()
    def loss(self, widths: Allocation) -> float:
        """Mean next-token cross-entropy of the stitched model on the calibration tokens."""
        self.evaluations += 1
        lp = _log_probs(stitch(self.dense, self.db, widths, share_weights=True), self.calibration, self.batch_size)
        target = self.calibration[:, 1:].to(torch.long)
        return float(-lp.gather(-1, target[..., None]).mean())

    @torch.no_grad()
    def kl(self, widths: Allocation, n_tokens: int | None = None) -> float:
        """Mean per-token KL(dense ‖ stitched) on the held-out rows covering the first ``n_tokens``
        predicted tokens (None: all rows)."""
        if self.heldout is None:
            raise ValueError("StitchedFitness.kl needs held-out tokens (heldout=None was given)")
        self.evaluations += 1
        per_row = self.heldout.shape[1] - 1
        rows = len(self.heldout) if n_tokens is None else max(1, min(len(self.heldout), math.ceil(n_tokens / per_row)))
        if self._dense_lp is None:
            self._dense_lp = _log_probs(self.dense, self.heldout, self.batch_size)
        p_log = self._dense_lp[:rows]
        q_log = _log_probs(stitch(self.dense, self.db, widths, share_weights=True), self.heldout[:rows], self.batch_size)
        return float((p_log.exp() * (p_log - q_log)).sum(-1).mean())
