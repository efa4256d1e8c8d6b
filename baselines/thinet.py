"""ThiNet (Luo et al., 2017): greedily grow the removed set T so that the removed groups'
joint contribution to the output, ‖Σ_{g∈T} X_g Ŵ_g‖² = tr(Ŵ_Tᵀ H_TT Ŵ_T), stays smallest;
then refit the kept groups by least squares.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from osscar.method import PruningMethod, register_method
from osscar.obs import diag_blocks, refit
from osscar.problem import LayerProblem


def thinet_removed(H: Tensor, W: Tensor, s: int, n_remove: int, blocks: int = 1) -> Tensor:
    """Greedy removal order. H: (p, p), W: (p, m) dense weights -> (n_remove,) long.

    ``blocks > 1``: each of the contiguous equal blocks of groups loses n_remove / blocks."""
    n = H.shape[0] // s
    Wg = W.reshape(n, s, -1)
    own = (Wg * torch.bmm(diag_blocks(H, s), Wg)).sum(dim=(1, 2))  # tr(W_gᵀ H_gg W_g)
    contrib = torch.zeros_like(W)  # H[:, T] W_T
    available = torch.ones(n, dtype=torch.bool, device=H.device)
    budget = [n_remove // blocks] * blocks
    removed = []
    for _ in range(n_remove):
        delta = own + 2 * (Wg * contrib.reshape(n, s, -1)).sum(dim=(1, 2))
        delta[~available] = float("inf")
        g = int(torch.argmin(delta))
        removed.append(g)
        available[g] = False
        b = g // (n // blocks)
        budget[b] -= 1
        if budget[b] == 0 and blocks > 1:  # this block has lost its share
            available[b * (n // blocks):(b + 1) * (n // blocks)] = False
        rows = slice(g * s, (g + 1) * s)
        contrib.addmm_(H[:, rows], W[rows])
    return torch.tensor(removed, dtype=torch.long, device=H.device)


@register_method("thinet")
@dataclass(frozen=True)
class ThiNet(PruningMethod):
    """Greedy selection by the removed groups' joint output energy, then refit."""

    def solve(self, problem: LayerProblem) -> tuple[Tensor, Tensor, dict[str, Any]]:
        n_remove = problem.n_groups - problem.k
        removed = thinet_removed(problem.H, problem.W_dense, problem.group_size, n_remove, problem.blocks)
        keep = torch.ones(problem.n_groups, dtype=torch.bool, device=problem.device)
        keep[removed] = False
        kept = torch.nonzero(keep).flatten()
        return kept, refit(problem, kept), {}
