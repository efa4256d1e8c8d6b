"""Drift of the pruned model from the dense one, block by block, on held-out tokens (``drift=True``; #27 item 5).

The layer objective a method minimises is each consumer's error on its own calibration inputs; perplexity is
the end of the chain. Between them: how far each block's output moves away from the dense model's, and how
far the final next-token distribution does. On the run's held-out windows (calibration text never used to
prune, :mod:`osscar.lm.text.heldout`):

* ``block_rel_error[i]``: ‖h_i − h_i^dense‖_F / ‖h_i^dense‖_F of the residual stream after block i (the
  model's ``output_hidden_states``; for the last block the stream after the final norm, as Hugging Face
  returns it);
* ``growth[i]``: block_rel_error[i] / block_rel_error[i − 1] (how much block i amplifies the drift it got);
* ``kl``: mean per-token KL(dense ‖ pruned) of the next-token distributions.

:func:`dense_reference` is taken before pruning (the dense hidden states in float32 and the dense
log-probabilities: held-out tokens × vocabulary floats), :func:`drift` after slicing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn


@dataclass
class DenseReference:
    """The dense model on the held-out ids: per-block hidden states ``(n, seqlen, d)`` and log-probabilities
    ``(n, seqlen − 1, vocab)``, on the CPU in float32."""

    ids: Tensor
    hidden: list[Tensor]
    log_probs: Tensor


@torch.no_grad()
def _forward(model: nn.Module, ids: Tensor, batch_size: int) -> tuple[list[Tensor], Tensor]:
    device = next(model.parameters()).device
    hidden: list[list[Tensor]] = []
    lps = []
    for b in range(0, len(ids), batch_size):
        out = model(ids[b:b + batch_size].to(device), use_cache=False, output_hidden_states=True)
        states = out.hidden_states[1:]  # the embeddings are not a block's output
        if not hidden:
            hidden = [[] for _ in states]
        for i, h in enumerate(states):
            hidden[i].append(h.float().cpu())
        lps.append(torch.log_softmax(out.logits[:, :-1].float(), -1).cpu())
    return [torch.cat(h) for h in hidden], torch.cat(lps)


def dense_reference(model: nn.Module, ids: Tensor, batch_size: int = 4) -> DenseReference:
    """The dense model's hidden states and log-probabilities on ``ids: (n, seqlen)``."""
    hidden, lps = _forward(model, ids, batch_size)
    return DenseReference(ids=ids, hidden=hidden, log_probs=lps)


def drift(model: nn.Module, ref: DenseReference, batch_size: int = 4) -> dict[str, Any]:
    """Per-block relative output error, its growth and the final KL of ``model`` against ``ref`` (module docstring)."""
    hidden, lps = _forward(model, ref.ids, batch_size)
    if len(hidden) != len(ref.hidden):
        raise ValueError(f"the pruned model has {len(hidden)} blocks, the dense reference {len(ref.hidden)}")
    rel = [float(torch.linalg.vector_norm(h - d) / torch.linalg.vector_norm(d)) for h, d in zip(hidden, ref.hidden)]
    growth = [math.nan] + [b / a if a > 0 else math.nan for a, b in zip(rel, rel[1:])]
    kl = float((ref.log_probs.exp() * (ref.log_probs - lps)).sum(-1).mean())
    return {"block_rel_error": rel, "growth": growth, "kl": kl, "tokens": int(lps.shape[0] * lps.shape[1]),
            "windows": int(len(ref.ids)), "on": "held-out calibration windows (never used to prune)"}
