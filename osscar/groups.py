"""Small pure helpers on contiguous groups of rows."""

from __future__ import annotations

import torch
from torch import Tensor


def block_rows(blocks: Tensor, s: int) -> Tensor:
    """Row positions of ``blocks`` (indices of contiguous s-row groups), block-major. (b,) -> (b·s,) long."""
    blocks = torch.as_tensor(blocks, dtype=torch.long, device=blocks.device if isinstance(blocks, Tensor) else "cpu")
    return (blocks[:, None] * s + torch.arange(s, dtype=torch.long, device=blocks.device)[None, :]).reshape(-1)


def group_view(W: Tensor, s: int) -> Tensor:
    """(n·s, m) -> (n, s·m): one flattened row per group."""
    return W.reshape(W.shape[0] // s, -1)


def group_norms(W: Tensor, s: int, ord: int = 2) -> Tensor:
    """Per-group L1 (``ord=1``) or Frobenius (``ord=2``) norm. W: (n·s, m) -> (n,)."""
    G = group_view(W, s)
    return G.abs().sum(dim=1) if ord == 1 else G.norm(dim=1)


def top_groups(scores: Tensor, k: int) -> Tensor:
    """Sorted indices of the k largest scores (ties broken by lower index). scores: (n,)."""
    if k == 0:
        return torch.zeros(0, dtype=torch.long, device=scores.device)
    order = torch.argsort(scores.double(), descending=True, stable=True)
    return order[:k].sort().values
