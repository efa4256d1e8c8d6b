"""Each baseline on a hand-built problem where its correct selection is known and differs from a
wrong variant's (the mutants named in the issue tracker: MP+ without its refit, Lasso replaced by
plain magnitude, FPGM's selection inverted)."""

from __future__ import annotations

import torch

from osscar.methods import make_method
from osscar.obs import refit
from osscar.problem import LayerProblem


def test_mp_plus_is_mp_support_with_the_least_squares_refit():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(200, 6, generator=g, dtype=torch.float64)
    X[:, 1] += 0.9 * X[:, 0]  # correlated features: the refit moves weight onto the kept ones
    W = torch.randn(6, 3, generator=g, dtype=torch.float64)
    P = LayerProblem.from_calibration(X.T @ X, W, 1, 3, damping=0.0)
    mp, mpp = make_method("mp").prune(P), make_method("mp+").prune(P)
    assert mp.kept.tolist() == mpp.kept.tolist()
    torch.testing.assert_close(mpp.W, refit(P, mpp.kept))  # the refit itself
    kept_rows = P.rows_of(mpp.kept)
    assert (mpp.W[kept_rows] - P.W_dense[kept_rows]).abs().max() > 1e-3  # and it is not Ŵ
    assert mpp.objective < mp.objective - 1e-6


def test_lasso_drops_a_large_weight_on_a_feature_that_barely_varies():
    """Group 0 has the largest weight but its input feature is 100× smaller than the others, so it
    hardly contributes to the output: magnitude (MP) keeps it, the group lasso (which sees H)
    shrinks it to zero and keeps the two features that matter."""
    g = torch.Generator().manual_seed(1)
    X = torch.randn(400, 3, generator=g, dtype=torch.float64)
    X[:, 0] *= 0.01
    W = torch.tensor([[2.0], [1.0], [0.9]], dtype=torch.float64)
    P = LayerProblem.from_calibration(X.T @ X, W, 1, 2, damping=1e-6)
    assert make_method("mp").prune(P).kept.tolist() == [0, 1]
    lasso = make_method("lasso").prune(P)
    assert lasso.kept.tolist() == [1, 2]
    assert lasso.objective < make_method("mp+").prune(P).objective - 1e-3


def test_fpgm_prunes_the_group_nearest_the_geometric_median():
    """Five groups: the centre of a cross and its four arms. The centre has the smallest summed
    distance to the others, so FPGM prunes it (an inverted selection would keep it)."""
    V = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [-10.0, 0.0], [0.0, -10.0]], dtype=torch.float64)
    P = LayerProblem(H=torch.eye(5, dtype=torch.float64), G=torch.ones(5, 1, dtype=torch.float64),
                     W_dense=torch.ones(5, 1, dtype=torch.float64), group_size=1, k=4, producer_weight=V)
    assert make_method("fpgm").prune(P).kept.tolist() == [1, 2, 3, 4]
    P1 = LayerProblem(H=torch.eye(5, dtype=torch.float64), G=torch.ones(5, 1, dtype=torch.float64),
                      W_dense=torch.ones(5, 1, dtype=torch.float64), group_size=1, k=1, producer_weight=V)
    assert make_method("fpgm").prune(P1).kept.tolist() != [0]
