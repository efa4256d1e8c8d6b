"""Group-lasso channel selection (He et al., 2017) by accelerated proximal gradient (FISTA).

Minimise Q(W) + λ₁ Σ_g ‖W_g‖_F for ``steps`` iterations from Ŵ, keep the k groups with the
largest norms, refit. λ₁ starts at ``lambda_scale · tr(H)``; when the penalty leaves fewer than
k nonzero groups it is halved and the solve repeated (as He et al. tune λ to hit the target).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from osscar.groups import group_norms, top_groups
from osscar.method import PruningMethod, register_method
from osscar.obs import refit
from osscar.problem import LayerProblem


def largest_eigenvalue(H: Tensor, iters: int = 50) -> float:
    """Power-iteration estimate of λ_max(H) for SPD H: (p, p), padded by 2%."""
    v = H.new_ones(H.shape[0]) / H.shape[0] ** 0.5
    lam = 0.0
    for _ in range(iters):
        w = H @ v
        lam = float(w.norm())
        if lam == 0:
            return 1.0
        v = w / lam
    return 1.02 * lam


def group_soft_threshold(W: Tensor, s: int, tau: float) -> Tensor:
    """prox of τ Σ_g ‖W_g‖_F. W: (n·s, m)."""
    norms = group_norms(W, s).repeat_interleave(s)[:, None]
    return W * torch.clamp(1 - tau / torch.clamp(norms, min=1e-300), min=0)


def group_lasso(H: Tensor, G: Tensor, W0: Tensor, s: int, lam: float, steps: int) -> Tensor:
    """FISTA on ½tr(WᵀHW) − tr(GᵀW) + lam Σ_g ‖W_g‖_F. Returns W: (p, m)."""
    step = 1.0 / largest_eigenvalue(H)
    W = W0.clone()
    Y, t = W.clone(), 1.0
    for _ in range(steps):
        W_next = group_soft_threshold(Y - step * (H @ Y - G), s, step * lam)
        t_next = (1 + (1 + 4 * t * t) ** 0.5) / 2
        Y = W_next + ((t - 1) / t_next) * (W_next - W)
        W, t = W_next, t_next
    return W


@register_method("lasso")
@dataclass(frozen=True)
class GroupLasso(PruningMethod):
    """Group-lasso selection by FISTA, then least-squares refit."""

    lambda_scale: float = 0.005
    steps: int = 100
    max_halvings: int = 30

    def __post_init__(self) -> None:
        if not (self.lambda_scale > 0):
            raise ValueError(f"lambda_scale must be > 0, got {self.lambda_scale!r}")
        if not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"steps must be an integer ≥ 1, got {self.steps!r}")

    def solve(self, problem: LayerProblem) -> tuple[Tensor, Tensor, dict[str, Any]]:
        s, k = problem.group_size, problem.k
        lam = self.lambda_scale * float(torch.trace(problem.H))
        for halvings in range(self.max_halvings + 1):  # noqa: B007 (reported below)
            W = group_lasso(problem.H, problem.G, problem.W_dense, s, lam, self.steps)
            norms = group_norms(W, s)
            if int((norms > 0).sum()) >= k:
                break
            lam /= 2
        # ties among zeroed groups are broken by the dense weights' norms
        score = norms + 1e-12 * group_norms(problem.W_dense, s) / (1 + float(group_norms(problem.W_dense, s).max()))
        kept = top_groups(score, k, problem.blocks)
        return kept, refit(problem, kept), {"lambda": lam, "halvings": halvings,
                                             "nonzero_groups": int((norms > 0).sum())}
