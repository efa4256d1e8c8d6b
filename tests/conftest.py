"""Shared fixtures: small random layer problems and an exhaustive reference solver."""

from __future__ import annotations

import itertools

import pytest
import torch

from osscar.problem import LayerProblem


def random_problem(seed: int, n_groups: int, group_size: int, k: int, m: int = 5, n: int | None = None,
                   correlated: bool = True, damping: float = 0.01) -> LayerProblem:
    """A layer problem from random calibration inputs X: (n, p) with correlated features."""
    g = torch.Generator().manual_seed(seed)
    p = n_groups * group_size
    n = n or 3 * p
    X = torch.randn(n, p, generator=g, dtype=torch.float64)
    if correlated:  # mix features so that groups interact, as real activations do
        X = X @ (torch.eye(p, dtype=torch.float64) + 0.5 * torch.randn(p, p, generator=g, dtype=torch.float64) / p**0.5)
    W = torch.randn(p, m, generator=g, dtype=torch.float64)
    return LayerProblem.from_calibration(X.T @ X, W, group_size, k, damping=damping)


def brute_force(problem: LayerProblem) -> tuple[float, tuple[int, ...]]:
    """Exact optimum over all supports of size k: min over S of −½ tr(G_Sᵀ H_SS⁻¹ G_S)."""
    best, best_s = float("inf"), ()
    supports = list(itertools.combinations(range(problem.n_groups), problem.k))
    rows = torch.stack([problem.rows_of(torch.tensor(S, dtype=torch.long)) for S in supports]) if problem.k else None
    if rows is None:
        return 0.0, ()
    Hs = problem.H[rows[:, :, None], rows[:, None, :]]  # (N, r, r)
    Gs = problem.G[rows]  # (N, r, m)
    vals = -0.5 * (Gs * torch.cholesky_solve(Gs, torch.linalg.cholesky(Hs))).sum(dim=(1, 2))
    i = int(torch.argmin(vals))
    best, best_s = float(vals[i]), supports[i]
    return best, best_s


@pytest.fixture
def make_problem():
    return random_problem
