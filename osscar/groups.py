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


def top_groups(scores: Tensor, k: int, blocks: int = 1) -> Tensor:
    """Sorted indices of the k largest scores (ties broken by lower index). scores: (n,).

    ``blocks > 1``: the scores form ``blocks`` contiguous equal blocks and each keeps its
    k / blocks largest (the layer problem's partition constraint)."""
    if k == 0:
        return torch.zeros(0, dtype=torch.long, device=scores.device)
    if blocks > 1:
        n = scores.shape[0] // blocks
        per = k // blocks
        order = torch.argsort(scores.double().reshape(blocks, n), dim=1, descending=True, stable=True)[:, :per]
        offsets = torch.arange(blocks, device=scores.device)[:, None] * n
        return (order + offsets).reshape(-1).sort().values
    order = torch.argsort(scores.double(), descending=True, stable=True)
    return order[:k].sort().values


def cheapest_within_budget(costs: Tensor, n: int, budget: Tensor | None, block_size: int) -> Tensor:
    """The ``n`` lowest-cost groups, taking at most ``budget[b]`` from block b (None: no limit).

    costs: (n_groups,), +inf for groups that may not be taken; budget: (blocks,) long. -> (≤ n,) long."""
    if budget is None:
        return torch.topk(costs, n, largest=False).indices
    order = torch.argsort(costs, stable=True).tolist()
    left = budget.tolist()
    out = []
    for g in order:
        if len(out) == n or not torch.isfinite(costs[g]):
            break
        b = g // block_size
        if left[b] > 0:
            left[b] -= 1
            out.append(g)
    return torch.tensor(out, dtype=torch.long, device=costs.device)
