"""Every low-rank update (weights, inverse, costs, gains) matches a direct recomputation."""

import pytest
import torch

from osscar.obs import SupportState, refit


def _direct(problem, kept_groups):
    rows = problem.rows_of(kept_groups)
    E = torch.linalg.inv(problem.H[rows][:, rows])
    return E, E @ problem.G[rows]


def _rel(a, b):
    return float((a - b).abs().max() / max(float(b.abs().max()), 1e-300))


def _direct_costs(problem, kept):
    out = torch.full((problem.n_groups,), float("inf"), dtype=torch.float64)
    base = -0.5 * float((problem.G[problem.rows_of(kept)] * _direct(problem, kept)[1]).sum())
    for g in kept.tolist():
        rest = kept[kept != g]
        val = -0.5 * float((problem.G[problem.rows_of(rest)] * _direct(problem, rest)[1]).sum()) if len(rest) else 0.0
        out[g] = val - base
    return out


def _direct_gains(problem, kept):
    out = torch.full((problem.n_groups,), float("-inf"), dtype=torch.float64)
    base = -0.5 * float((problem.G[problem.rows_of(kept)] * _direct(problem, kept)[1]).sum()) if len(kept) else 0.0
    for j in range(problem.n_groups):
        if j in kept.tolist():
            continue
        more = torch.cat([kept, torch.tensor([j])]).sort().values
        out[j] = base - (-0.5 * float((problem.G[problem.rows_of(more)] * _direct(problem, more)[1]).sum()))
    return out


@pytest.mark.parametrize("group_size", [1, 3])
def test_remove_and_add_match_direct_recomputation(make_problem, group_size):
    P = make_problem(7, 10, group_size, 4)
    st = SupportState(P)
    for R in ([3], [0, 7, 8], [5]):
        st.remove(torch.tensor(R))
        kept = torch.nonzero(st.kept).flatten()
        E, W = _direct(P, kept)
        st.compact()
        assert _rel(st.E, E) < 1e-8 and _rel(st.W, W) < 1e-8
        assert _rel(st.costs()[kept], _direct_costs(P, kept)[kept]) < 1e-8
        pruned = torch.nonzero(~st.kept).flatten()
        assert _rel(st.gains()[pruned], _direct_gains(P, kept)[pruned]) < 1e-8
    st.add(torch.tensor([7, 3]))
    kept = torch.nonzero(st.kept).flatten()
    E, W = _direct(P, kept)
    assert _rel(st.E, E) < 1e-8 and _rel(st.W, W) < 1e-8
    torch.testing.assert_close(st.weights(), refit(P, kept), rtol=1e-8, atol=1e-10)


def test_removal_without_compaction_keeps_zero_rows(make_problem):
    P = make_problem(1, 12, 2, 6)
    st = SupportState(P)
    st.remove(torch.tensor([4]))  # 1/12 dead: below the compaction threshold
    assert len(st.groups) == 12
    rows = P.rows_of(torch.tensor([4]))
    assert float(st.E[rows].abs().max()) == 0 and float(st.W[rows].abs().max()) == 0
    kept = torch.nonzero(st.kept).flatten()
    assert _rel(st.weights()[P.rows_of(kept)], _direct(P, kept)[1]) < 1e-8


@pytest.mark.parametrize("group_size", [1, 4])
def test_refit_has_zero_gradient_on_kept_rows(make_problem, group_size):
    P = make_problem(11, 12, group_size, 5)
    kept = torch.tensor([0, 2, 3, 9, 11])
    W = refit(P, kept)
    grad = P.H @ W - P.G
    rows = P.rows_of(kept)
    assert float(grad[rows].abs().max()) < 1e-9 * float(P.G.abs().max())
    pruned = torch.ones(P.p, dtype=torch.bool)
    pruned[rows] = False
    assert float(W[pruned].abs().max()) == 0
