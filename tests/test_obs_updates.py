"""Every low-rank update (weights, inverse, costs, gains) matches a direct recomputation."""

import pytest
import torch

from osscar.obs import SupportState, refit, symmetric_downdate_


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


MODES = {"eager": {}, "deferred": {"deferred": True}, "deferred+pruned-inverse": {"deferred": True, "track_pruned": True}}


def _check_state(P, st):
    """E, W on the working list (live rows), costs and gains against direct recomputation."""
    st.compact()
    kept = torch.nonzero(st.kept).flatten()
    E, W = _direct(P, st.groups)  # working order: groups are not necessarily sorted
    assert sorted(st.groups.tolist()) == kept.tolist()
    assert _rel(st.E, E) < 1e-8 and _rel(st.W, W) < 1e-8
    assert _rel(st.costs()[kept], _direct_costs(P, kept)[kept]) < 1e-8
    pruned = torch.nonzero(~st.kept).flatten()
    if len(pruned):
        assert _rel(st.gains()[pruned], _direct_gains(P, kept)[pruned]) < 1e-8
    if st.pruned is not None:  # Q(S) − Q*, carried through every update
        q_star = -0.5 * float((P.G * torch.linalg.solve(P.H, P.G)).sum())
        excess = -0.5 * float((P.G[P.rows_of(kept)] * _direct(P, kept)[1]).sum()) - q_star
        assert abs(st.pruned.excess() - excess) <= 1e-8 * max(abs(excess), abs(q_star))
    torch.testing.assert_close(st.weights(), refit(P, kept), rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("group_size", [1, 3])
def test_remove_and_add_match_direct_recomputation(make_problem, group_size, mode):
    P = make_problem(7, 10, group_size, 4)
    st = SupportState(P, **MODES[mode])
    for R in ([3], [0, 7, 8], [5]):
        st.remove(torch.tensor(R))
        _check_state(P, st)
    st.add(torch.tensor([7, 3]))
    _check_state(P, st)
    st.remove(torch.tensor([2, 9]))  # a removal after an add (unsorted working list)
    st.add(torch.tensor([0]))
    _check_state(P, st)


@pytest.mark.parametrize("mode", ["deferred", "deferred+pruned-inverse"])
def test_deferred_updates_across_flushes_match_direct(make_problem, mode):
    """Enough removals that the pending factors fill up (capacity 64 rows) and flush twice,
    with costs read through the pending factors in between."""
    P = make_problem(3, 150, 1, 20, m=4)
    st = SupportState(P, **MODES[mode])
    eager = SupportState(P)
    for step in range(13):
        costs = st.costs()
        torch.testing.assert_close(costs, eager.costs(), rtol=1e-8, atol=0)
        R = torch.topk(costs, 10, largest=False).indices
        st.remove(R)
        eager.remove(R)
        if step in (5, 12):
            st.track_pruned()
            st2 = st.copy()  # copies keep the pending state intact, the pruned-set inverse included
            assert (st2.pruned is None) == (mode == "deferred") and (st2.pruned is None or st2.pruned is not st.pruned)
            assert st.copy(with_pruned=False).pruned is None
            _check_state(P, st2)
    _check_state(P, st)


def test_track_pruned_gains_follow_swaps(make_problem):
    """The pruned-set inverse stays exact through removals and adds after it is built."""
    P = make_problem(5, 14, 2, 6)
    st = SupportState(P, deferred=True, track_pruned=True)
    st.remove(torch.tensor([1, 4, 6, 10]))
    st.track_pruned()
    for out, back in (([0, 13], [4, 6]), ([2], [1]), ([6, 3], [10])):
        st.remove(torch.tensor(out))
        _check_state(P, st)
        st.add(torch.tensor(back))
        _check_state(P, st)


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


@pytest.mark.parametrize("a,r", [(100, 7), (601, 40)])  # one addmm_, and the blocked path
def test_symmetric_downdate_matches_full_product(a, r):
    g = torch.Generator().manual_seed(a)
    X = torch.randn(a, a, generator=g, dtype=torch.float64)
    E = X @ X.T
    U = torch.randn(a, r, generator=g, dtype=torch.float64)
    expected = E - U @ U.T
    out = symmetric_downdate_(E, U)
    assert out is E
    torch.testing.assert_close(E, expected, rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(E, E.T, rtol=0, atol=1e-10)


@pytest.mark.parametrize("mode", MODES)
def test_state_from_a_partial_support_matches_direct(make_problem, mode):
    P = make_problem(9, 12, 2, 5)
    st = SupportState(P, torch.tensor([0, 2, 3, 5, 8, 9, 11]), **MODES[mode])
    _check_state(P, st)
    st.remove(torch.tensor([3, 9]))
    st.add(torch.tensor([4]))
    _check_state(P, st)


def _q(problem, kept):
    return -0.5 * float((problem.G[problem.rows_of(kept)] * _direct(problem, kept)[1]).sum()) if len(kept) else 0.0


@pytest.mark.parametrize("group_size", [1, 3])
def test_swap_trial_scores_match_direct_recomputation(make_problem, group_size):
    """A swap trial's removal cost, add-back gains and joint gain equal Q recomputed from scratch on
    S \\ out, and committing it gives the pruned-set inverse of the swapped support."""
    P = make_problem(7, 12, group_size, 5)
    st = SupportState(P, deferred=True, track_pruned=True)
    st.remove(torch.tensor([1, 4, 6, 10]))
    st.track_pruned()
    st.remove(torch.tensor([8]))  # J grown by one bordering
    kept = torch.nonzero(st.kept).flatten()
    out = torch.tensor([0, 5])
    trial = st.swap_trial(out)
    rest = kept[~torch.isin(kept, out)]
    assert trial.removal_cost == pytest.approx(_q(P, rest) - _q(P, kept), rel=1e-9)
    expected = _direct_gains(P, rest)[st.pruned.groups]
    assert _rel(trial.gains(), expected) < 1e-8
    back = torch.tensor([4, 8])
    assert trial.joint_gain(back) == pytest.approx(_q(P, rest) - _q(P, torch.cat([rest, back])), rel=1e-9)
    new = trial.commit(back)
    swapped = SupportState(P, torch.cat([rest, back]), deferred=True, track_pruned=True)
    swapped.track_pruned()
    order = torch.argsort(new.groups)
    assert new.groups[order].tolist() == sorted(swapped.pruned.groups.tolist())
    assert _rel(new.gains()[order], swapped.pruned.gains()[torch.argsort(swapped.pruned.groups)]) < 1e-8
    assert new.excess() == pytest.approx(swapped.pruned.excess(), rel=1e-9)


@pytest.mark.parametrize("mode", MODES)
def test_a_copy_is_independent_and_keeps_the_pruned_set_inverse(make_problem, mode):
    """copy() (default: with the pruned-set inverse) then updates on the copy only: the copy matches
    direct recomputation on its support, the original is untouched."""
    P = make_problem(2, 10, 2, 4)
    st = SupportState(P, **MODES[mode])
    st.remove(torch.tensor([3, 6]))
    before = (st.kept.clone(), st.weights().clone())
    c = st.copy()
    assert (c.pruned is None) == (st.pruned is None)
    if st.pruned is not None:
        assert c.pruned is not st.pruned and torch.equal(c.pruned.K, st.pruned.K)
    c.remove(torch.tensor([1]))
    c.add(torch.tensor([6]))
    _check_state(P, c)
    assert torch.equal(st.kept, before[0]) and torch.equal(st.weights(), before[1])
    _check_state(P, st)


def test_remove_and_add_reject_groups_on_the_wrong_side(make_problem):
    st = SupportState(make_problem(0, 6, 1, 3))
    st.remove(torch.tensor([2]))
    with pytest.raises(ValueError, match=r"^remove\(\): every group must currently be kept$"):
        st.remove(torch.tensor([2]))
    with pytest.raises(ValueError, match=r"^add\(\): every group must currently be pruned$"):
        st.add(torch.tensor([1]))


@pytest.mark.parametrize("group_size", [1, 2])
@pytest.mark.parametrize("mode", ["eager", "deferred"])
def test_E_applies_pending_downdates_and_zeroes_removed_rows_without_compacting(make_problem, group_size, mode):
    """st.E after one removal (pending in the deferred engine: a single row for group size 1) is
    H_SS⁻¹ on the live rows and zero on the removed ones, the working list still uncompacted."""
    P = make_problem(4, 12, group_size, 6)
    st = SupportState(P, **MODES[mode])
    st.remove(torch.tensor([4]))
    E = st.E
    assert len(st.groups) == 12
    live = P.rows_of(st.groups[st.live])
    assert _rel(E[live[:, None], live], _direct(P, st.groups[st.live])[0]) < 1e-8
    assert float(E[P.rows_of(torch.tensor([4]))].abs().max()) == 0


def test_a_state_keeps_no_pruned_set_inverse_unless_asked(make_problem):
    P = make_problem(0, 6, 1, 3)
    assert SupportState(P).track_pruned() is False and SupportState(P).pruned is None
    assert SupportState(P, track_pruned=True).track_pruned() is True


@pytest.mark.parametrize("mode", MODES)
def test_updates_never_write_into_the_problem(make_problem, mode):
    """W_S starts as the problem's Ŵ (shared, G = HŴ) and E as F: the first in-place update copies."""
    P = make_problem(6, 10, 2, 4)
    assert P.G_is_HW
    before = {name: getattr(P, name).clone() for name in ("H", "G", "W_dense")}
    st = SupportState(P, **MODES[mode])
    for R in ([3], [0, 7], [5, 1, 2]):
        st.remove(torch.tensor(R))
    st.add(torch.tensor([7]))
    _check_state(P, st)
    assert all(torch.equal(getattr(P, name), t) for name, t in before.items())


def test_refit_of_one_group_and_of_none(make_problem):
    P = make_problem(3, 6, 2, 1)
    rows = P.rows_of(torch.tensor([4]))
    W = refit(P, torch.tensor([4]))
    torch.testing.assert_close(W[rows], torch.linalg.solve(P.H[rows[:, None], rows], P.G[rows]))
    assert float(W.abs().sum()) == float(W[rows].abs().sum()) > 0
    assert float(refit(P, torch.tensor([], dtype=torch.long)).abs().sum()) == 0


@pytest.mark.parametrize("group_size", [1, 3])
def test_pruned_set_joint_gain_matches_direct_recomputation(make_problem, group_size):
    """PrunedSetInverse.joint_gain(back): the decrease of Q from putting ``back`` (in J) into S together."""
    P = make_problem(8, 12, group_size, 5)
    st = SupportState(P, deferred=True, track_pruned=True)
    st.remove(torch.tensor([1, 4, 6, 10]))
    st.track_pruned()
    st.remove(torch.tensor([8]))  # bordered onto the built pruned-set inverse
    kept = torch.nonzero(st.kept).flatten()
    back = torch.tensor([4, 8])
    assert st.pruned.joint_gain(back) == pytest.approx(_q(P, kept) - _q(P, torch.cat([kept, back])), rel=1e-9)


def test_the_support_inverse_is_row_major_and_a_deferred_state_keeps_removals_pending(make_problem):
    """E comes out of LAPACK column-major and is stored as its (equal) transpose, so in-place
    compactions need no copy; a deferred state keeps a small removal as a pending factor."""
    P = make_problem(3, 12, 2, 6)
    for deferred in (False, True):
        st = SupportState(P, deferred=deferred)
        assert st._E.is_contiguous()
        st.remove(torch.tensor([3]))
        assert (st._r > 0) == deferred
        _check_state(P, st)


def test_a_state_on_no_groups_has_empty_matrices(make_problem):
    P = make_problem(2, 6, 2, 3)
    st = SupportState(P, torch.zeros(0, dtype=torch.long))
    assert st.E.shape == (0, 0) and st.W.shape == (0, P.m) and st.objective() == 0.0
    assert bool(torch.isinf(st.costs()).all())
    st.add(torch.tensor([1, 4]))
    _check_state(P, st)


def test_swap_trial_needs_the_pruned_set_inverse(make_problem):
    with pytest.raises(ValueError, match=r"^swap_trial needs SupportState\(problem, track_pruned=True\)$"):
        SupportState(make_problem(0, 6, 1, 3)).swap_trial(torch.tensor([0]))


def test_the_excess_of_a_full_support_is_zero(make_problem):
    P = make_problem(0, 6, 1, 3)
    st = SupportState(P, track_pruned=True)
    st.track_pruned()
    assert st.pruned.excess() == 0.0
    st.remove(torch.tensor([2]))
    assert st.pruned.excess() == pytest.approx(_q(P, [0, 1, 3, 4, 5]) - P.dense_objective(), rel=1e-8)
