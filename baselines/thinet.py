"""ThiNet (Luo et al., 2017) as the OSSCAR authors ran it, and the paper's greedy variant.

``selection="own-energy"`` (default, the authors' code): score every group by its own output
energy e_g = ½ tr(Ŵ_gᵀ H_gg Ŵ_g) = ½‖X_g Ŵ_g‖², remove the n − k lowest (Ŵ is not updated during
selection), then refit the kept groups by least squares.

``selection="joint-greedy"`` (the paper): grow the removed set T one group at a time so that the
removed groups' joint contribution ½‖Σ_{g∈T} X_g Ŵ_g‖² = ½ tr(Ŵ_Tᵀ H_TT Ŵ_T) (cross terms
included) stays smallest; then the same refit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from osscar.groups import top_groups
from osscar.method import PruningMethod, register_method
from osscar.obs import REFIT_NOTE, diag_blocks, refit, refit_floats
from osscar.problem import LayerProblem

SELECTIONS = ("own-energy", "joint-greedy")


def own_energy(H: Tensor, W: Tensor, s: int) -> Tensor:
    """e_g = ½ tr(W_gᵀ H_gg W_g) per group. H: (p, p), W: (p, m) -> (p // s,)."""
    Wg = W.reshape(H.shape[0] // s, s, -1)
    return 0.5 * (Wg * torch.bmm(diag_blocks(H, s), Wg)).sum(dim=(1, 2))


def thinet_removed(H: Tensor, W: Tensor, s: int, n_remove: int, blocks: int = 1) -> Tensor:
    """The joint-greedy removal order. H: (p, p), W: (p, m) dense weights -> (n_remove,) long.

    ``blocks > 1``: each of the contiguous equal blocks of groups loses n_remove / blocks."""
    n = H.shape[0] // s
    Wg = W.reshape(n, s, -1)
    own = 2 * own_energy(H, W, s)  # tr(W_gᵀ H_gg W_g)
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
    """Remove the groups whose output energy is smallest, then refit.

    Args:
        selection: ``"own-energy"`` (default, the OSSCAR authors' code): each group's own energy,
            no cross terms; ``"joint-greedy"`` (Luo et al.): greedy on the removed set's joint energy.
    """

    @classmethod
    def working_set(cls, p: int, m: int, kept_rows: int) -> tuple[int, str]:
        """The refit's (:func:`osscar.obs.refit_floats`)."""
        return refit_floats(p, m, kept_rows), REFIT_NOTE

    selection: str = "own-energy"

    def __post_init__(self) -> None:
        if self.selection not in SELECTIONS:
            raise ValueError(f"selection: unknown ThiNet selection {self.selection!r}; allowed: {', '.join(SELECTIONS)}")

    def solve(self, problem: LayerProblem) -> tuple[Tensor, Tensor, dict[str, Any]]:
        H, W, s = problem.H, problem.W_dense, problem.group_size
        if self.selection == "own-energy":
            kept = top_groups(own_energy(H, W, s), problem.k, problem.blocks)
        else:
            removed = thinet_removed(H, W, s, problem.n_groups - problem.k, problem.blocks)
            keep = torch.ones(problem.n_groups, dtype=torch.bool, device=problem.device)
            keep[removed] = False
            kept = torch.nonzero(keep).flatten()
        return kept, refit(problem, kept), {"selection": self.selection}
