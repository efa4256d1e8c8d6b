"""Every method against the exact optimum (brute force over supports, float64) and invariants."""

import pytest
import torch

from conftest import brute_force, random_problem
from osscar.methods import available_methods, make_method
from osscar.problem import LayerProblem
from osscar.obs import SupportState
from osscar.solver import default_p_hat, default_t_hat, local_search

OBS_METHODS = ["osscar", "ziplm"]


def _methods_for(problem):
    names = [n for n in available_methods() if n != "chip"]
    return names


@pytest.mark.parametrize("group_size", [1, 4])
def test_osscar_is_exact_on_most_instances_and_never_worse_than_mp_plus_or_ziplm(group_size):
    exact, gaps = 0, {}
    instances = [(seed, n) for seed in range(12) for n in (10, 12, 14)]
    for seed, n_groups in instances:
        P = random_problem(seed, n_groups, group_size, n_groups // 2, m=4)
        opt, _ = brute_force(P)
        res = {name: make_method(name).prune(P) for name in _methods_for(P)}
        scale = abs(opt)
        for name, r in res.items():
            assert r.objective >= opt - 1e-9 * scale, f"{name} beat the exact optimum: bug"
            gaps.setdefault(name, []).append((r.objective - opt) / scale)
        o = res["osscar"].objective
        assert o <= res["mp+"].objective + 1e-9 * scale
        assert o <= res["ziplm"].objective + 1e-9 * scale
        exact += o <= opt + 1e-9 * scale
    report = {k: f"mean {sum(v) / len(v):.2e} max {max(v):.2e}" for k, v in gaps.items()}
    print(f"\nOSSCAR exact on {exact}/{len(instances)}; relative objective gap to the exact optimum "
          f"(group_size={group_size}): {report}")
    assert exact >= 0.75 * len(instances), f"OSSCAR exact on {exact}/{len(instances)} only; gaps {report}"


@pytest.mark.parametrize("name", sorted(set(available_methods()) - {"chip"}))
@pytest.mark.parametrize("group_size", [1, 4])
def test_every_method_returns_exactly_k_groups(name, group_size):
    n = 8
    for k in (0, 1, n // 2, n):
        P = random_problem(3, n, group_size, k)
        r = make_method(name).prune(P)
        assert r.kept.tolist() == sorted(set(r.kept.tolist())) and len(r.kept) == k
        pruned = torch.ones(P.p, dtype=torch.bool)
        pruned[P.rows_of(r.kept)] = False
        assert float(r.W[pruned].abs().sum()) == 0
        assert r.W.shape == (P.p, P.m) and r.seconds >= 0 and r.method == name
        if k == n and name not in ("mp", "fpgm"):
            torch.testing.assert_close(r.W, torch.linalg.solve(P.H, P.G), rtol=1e-8, atol=1e-9)


def test_chip_returns_exactly_k_and_prefers_independent_channels():
    g = torch.Generator().manual_seed(0)
    N, C, L = 6, 6, 20
    A = torch.randn(N, C, L, generator=g)
    A[:, 1] = A[:, 0] * 1.0001  # channel 1 duplicates channel 0: redundant
    A[:, 3] = 1e-3 * A[:, 3]  # nearly silent channel
    P = random_problem(0, C, 1, 4)
    P = LayerProblem(H=P.H, G=P.G, W_dense=P.W_dense, group_size=1, k=4, activations=A)
    r = make_method("chip").prune(P)
    assert len(r.kept) == 4 and 3 not in r.kept.tolist()
    assert not {0, 1} <= set(r.kept.tolist())


@pytest.mark.parametrize("name", ["osscar", "ziplm", "mp", "mp+", "thinet", "lasso"])
@pytest.mark.parametrize("group_size", [1, 3])
def test_identity_hessian_keeps_largest_norm_groups(name, group_size):
    """With H = I, Q on support S is −½ Σ_{g∈S} ‖Ŵ_g‖²: the largest-norm groups are optimal."""
    g = torch.Generator().manual_seed(5)
    n, m = 9, 4
    p = n * group_size
    row_scale = torch.linspace(0.2, 2.0, p, dtype=torch.float64)[torch.randperm(p, generator=g)]
    W = torch.randn(p, m, generator=g, dtype=torch.float64) * row_scale[:, None]
    eye = torch.eye(p, dtype=torch.float64)
    P = LayerProblem(H=eye, G=W.clone(), W_dense=W, group_size=group_size, k=4, G_is_HW=True)
    # MP and MP+ select by the L1 norm by definition; the optimum (H = I) keeps the largest L2 norms
    norms = W.reshape(n, -1).abs().sum(dim=1) if name in ("mp", "mp+") else W.reshape(n, -1).norm(dim=1)
    expected = torch.topk(norms, 4).indices.sort().values
    r = make_method(name).prune(P)
    assert r.kept.tolist() == expected.tolist()
    if name != "mp":
        torch.testing.assert_close(r.W[P.rows_of(r.kept)], W[P.rows_of(r.kept)])


def test_local_search_never_increases_the_objective():
    for seed in range(10):
        P = random_problem(seed, 24, 2, 9)
        r = make_method("osscar", p_hat=6, t_hat=6, min_swap=1).prune(P)
        hist = r.info["local_search_objective"]
        assert all(b < a for a, b in zip(hist, hist[1:]))
        assert r.objective <= r.info["stage_a_objective"] + 1e-9 * abs(r.objective)


def test_methods_are_pure():
    P = random_problem(2, 10, 2, 4)
    for name in sorted(set(available_methods()) - {"chip"}):
        a, b = make_method(name).prune(P), make_method(name).prune(P)
        assert a.kept.tolist() == b.kept.tolist() and a.objective == b.objective


def _greedy_obs_reference(P) -> list[int]:
    """ZipLM's selection written out from its definition, with a fresh solve per step (no shared
    code with osscar.obs): remove the group whose removal raises min_W Q the least, until k remain."""
    support = list(range(P.n_groups))

    def q(groups):
        rows = P.rows_of(torch.tensor(groups, dtype=torch.long))
        Hs, Gs = P.H[rows][:, rows], P.G[rows]
        return float(-0.5 * (Gs * torch.linalg.solve(Hs, Gs)).sum())

    while len(support) > P.k:
        costs = [(q([g for g in support if g != r]), r) for r in support]
        support.remove(min(costs)[1])
    return sorted(support)


def test_ziplm_and_osscar_p1_t0_equal_greedy_obs_written_from_its_definition():
    for seed in range(5):
        for group_size in (1, 3):
            P = random_problem(seed, 12, group_size, 5)
            ref = _greedy_obs_reference(P)
            assert make_method("ziplm").prune(P).kept.tolist() == ref
            assert make_method("osscar", p_hat=1, t_hat=0).prune(P).kept.tolist() == ref


@pytest.mark.parametrize(("group_size", "n_remove", "expected"), [
    (1, 800, 10), (1, 88, 10), (1, 44, 5), (1, 40, 5), (1, 3, 1), (4, 800, 2), (4, 8, 1)])
def test_default_p_hat_is_the_opt_codes_stage_size_capped_at_an_eighth(group_size, n_remove, expected):
    p_hat = default_p_hat(group_size, n_remove)
    assert p_hat == expected and isinstance(p_hat, int)


@pytest.mark.parametrize(("group_size", "k", "n_groups", "expected"), [
    (1, 400, 800, 20), (1, 8, 16, 4), (1, 8, 10, 2), (4, 400, 800, 10), (4, 2, 16, 2), (4, 12, 16, 2)])
def test_default_t_hat_is_twice_the_opt_codes_swap_capped_at_a_quarter_of_the_smaller_side(group_size, k, n_groups, expected):
    assert default_t_hat(group_size, k, n_groups) == expected


def _state_on(P, support):
    """A deferred state with the pruned-set inverse, on ``support`` (removed one group at a time)."""
    st = SupportState(P, deferred=True, track_pruned=True)
    for g in sorted(set(range(P.n_groups)) - set(support)):
        st.remove(torch.tensor([g]))
    return st


def test_local_search_at_the_optimum_stops_after_its_patience():
    """Every swap from the exact optimum is rejected: the default patience of 1 stops after one trial
    (min_swap = swap, the OPT rule); patience 3 tries the next-cheapest blocks first."""
    P = random_problem(1, 8, 1, 4)
    _, best = brute_force(P)
    _, info = local_search(_state_on(P, best), swap=1, max_iter=10, min_swap=1)
    assert info["swaps_tried"] == 1 and info["swaps_accepted"] == 0
    _, info = local_search(_state_on(P, best), swap=1, max_iter=10, min_swap=1, patience=3)
    assert info["swaps_tried"] == 3


def test_local_search_swap_is_capped_by_both_sides_and_max_iter_counts_trials():
    """A swap size above k (or above n − k) behaves exactly as the cap min(k, n − k); max_iter bounds
    the trials; a full support (nothing pruned) tries nothing."""
    for k in (2, 6):
        P = random_problem(k, 8, 1, k)
        start = list(range(8 - k, 8))  # the last k groups: a poor support, swaps get accepted
        runs = [local_search(_state_on(P, start), swap=sw, max_iter=20, min_swap=1) for sw in (min(k, 8 - k), 5)]
        assert runs[0][1] == runs[1][1] and runs[0][1]["swaps_accepted"] >= 1
        assert torch.equal(runs[0][0].kept, runs[1][0].kept)
        for max_iter in (1, 2, 3):
            _, info = local_search(_state_on(P, start), swap=5, max_iter=max_iter, min_swap=1)
            assert info["swaps_tried"] == max_iter
    _, info = local_search(_state_on(P, range(8)), swap=2, max_iter=5, min_swap=1)
    assert info["swaps_tried"] == 0


def test_local_search_with_swap_one_exchanges_one_group_per_accepted_trial():
    P = random_problem(4, 10, 1, 5)
    start = list(range(5, 10))
    st, info = local_search(_state_on(P, start), swap=1, max_iter=1, min_swap=1)
    assert info["swaps_accepted"] == 1
    assert len(set(torch.nonzero(st.kept).flatten().tolist()) ^ set(start)) == 2


def test_local_search_needs_the_pruned_set_inverse():
    with pytest.raises(ValueError, match=r"^local_search needs SupportState\(problem, track_pruned=True\)$"):
        local_search(SupportState(random_problem(0, 6, 1, 3)), swap=1, max_iter=1, min_swap=1)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"max_iter": None}, r"^max_iter must be an integer ≥ 0, got None$"),
    ({"max_iter": -1}, r"^max_iter must be an integer ≥ 0, got -1$"),
    ({"min_swap": -1}, r"^min_swap must be an integer ≥ 0 or None \(auto\), got -1$"),
    ({"patience": None}, r"^patience must be an integer ≥ 0, got None$"),
    ({"patience": 0}, r"^patience must be an integer ≥ 1, got 0$"),
    ({"p_hat": 0}, r"^p_hat must be ≥ 1 \(groups removed per stage\) or None \(auto\), got 0$"),
    ({"t_hat": 1.5}, r"^t_hat must be an integer ≥ 0 or None \(auto\), got 1.5$")])
def test_osscar_rejects_bad_parameters_by_name(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_method("osscar", **kwargs)


def test_osscar_accepts_the_smallest_valid_parameters():
    r = make_method("osscar", p_hat=1, t_hat=2, max_iter=1, min_swap=0, patience=1).prune(random_problem(0, 6, 1, 3))
    assert len(r.kept) == 3 and r.info["swaps_tried"] == 1


def test_osscar_defaults_follow_the_group_size_and_the_split():
    """Neurons (group size 1), n = 100, k = 50: p̂ = min(10, 50 // 8) = 6, t̂ = 2·min(10, 50 // 4) = 20."""
    P = random_problem(0, 100, 1, 50, m=2)
    r = make_method("osscar").prune(P)
    assert (r.info["p_hat"], r.info["t_hat"], r.info["stages"]) == (6, 20, 9)
    assert make_method("osscar", p_hat=7, t_hat=4).prune(P).info["p_hat"] == 7


def test_osscar_passes_its_search_parameters_to_the_local_search(monkeypatch):
    import osscar.solver as solver_mod

    seen = []
    real = solver_mod.local_search

    def spy(state, swap, max_iter, min_swap, patience=1):
        seen.append((swap, max_iter, min_swap, patience))
        return real(state, swap, max_iter, min_swap, patience)

    monkeypatch.setattr(solver_mod, "local_search", spy)
    P = random_problem(1, 12, 1, 6)
    make_method("osscar", t_hat=4, max_iter=7, min_swap=1, patience=3).prune(P)
    make_method("osscar", t_hat=4, min_swap=None).prune(P)
    make_method("osscar", t_hat=6, min_swap=0).prune(P)
    assert seen == [(2, 7, 1, 3), (2, 30, 2, 2), (3, 30, 0, 2)]


@pytest.mark.parametrize(("k", "kwargs", "searches"), [
    (6, {"t_hat": 0}, False), (6, {"t_hat": 1}, False), (0, {"t_hat": 4}, False), (12, {"t_hat": 4}, False),
    (6, {"t_hat": 4, "max_iter": 0}, False), (1, {"t_hat": 4}, True), (11, {"t_hat": 4}, True),
    (6, {"t_hat": 2, "max_iter": 1}, True)])
def test_osscar_runs_the_local_search_exactly_when_a_swap_is_possible(k, kwargs, searches):
    r = make_method("osscar", **kwargs).prune(random_problem(2, 12, 1, k))
    assert ("swaps_tried" in r.info) is searches


def test_local_search_halves_the_swap_and_restarts_from_the_cheapest_groups(monkeypatch):
    """From the optimum every trial is rejected: with patience 1 the trials take out the 4, then 2,
    then 1 cheapest kept groups (halving, each size restarting at the cheapest block)."""
    P = random_problem(5, 10, 1, 5)
    _, best = brute_force(P)
    st = _state_on(P, best)
    order = torch.argsort(st.costs())
    outs = []
    real = SupportState.swap_trial
    monkeypatch.setattr(SupportState, "swap_trial", lambda self, g: outs.append(g.tolist()) or real(self, g))
    _, info = local_search(st, swap=4, max_iter=10, min_swap=1)
    assert outs == [order[:4].tolist(), order[:2].tolist(), order[:1].tolist()] and info["swaps_tried"] == 3


def test_local_search_counts_every_accepted_swap():
    P = random_problem(6, 8, 1, 4)
    _, info = local_search(_state_on(P, [4, 5, 6, 7]), swap=1, max_iter=20, min_swap=1)
    assert info["swaps_accepted"] == len(info["local_search_objective"]) - 1 >= 2


def test_local_search_takes_out_the_cheapest_groups_of_the_current_support(monkeypatch):
    """patience 1, swap 1: every trial, after an accepted swap too, takes out the cheapest kept group."""
    P = random_problem(6, 8, 1, 4)
    seen = []
    real = SupportState.swap_trial

    def spy(self, g):
        seen.append(g.tolist() == torch.argsort(self.costs())[:len(g)].tolist())
        return real(self, g)

    monkeypatch.setattr(SupportState, "swap_trial", spy)
    _, info = local_search(_state_on(P, [4, 5, 6, 7]), swap=1, max_iter=20, min_swap=1)
    assert info["swaps_accepted"] >= 2 and len(seen) == info["swaps_tried"] and all(seen)


def test_local_search_under_a_partition_skips_a_block_with_nothing_to_put_back(monkeypatch):
    """blocks of 4 groups keeping 3: taking 2 out of one block leaves one candidate there, so
    best_back has nothing to offer (None) and the trial is rejected without scoring."""
    import dataclasses

    import osscar.solver as solver_mod

    nones = []
    real = solver_mod.best_back
    monkeypatch.setattr(solver_mod, "best_back", lambda *a: (lambda r: nones.append(r is None) or r)(real(*a)))
    for seed in range(6):
        P = dataclasses.replace(random_problem(seed, 8, 1, 6), blocks=2)
        st, _ = local_search(_state_on(P, [0, 1, 2, 4, 5, 6]), swap=2, max_iter=6, min_swap=2, patience=6)
        assert torch.bincount(P.block_of(torch.nonzero(st.kept).flatten()), minlength=2).tolist() == [3, 3]
    assert any(nones)


def test_local_search_builds_the_pruned_set_inverse_once_and_copies_none(monkeypatch):
    """An accepted swap carries the trial's bordered, shrunk K into the state (no rebuild from H̄ and E
    for the next trial) and the trial copies of the support leave K out."""
    from osscar.pruned_set import PrunedSetInverse

    P = random_problem(4, 10, 1, 5)
    st = _state_on(P, list(range(5, 10)))
    st.track_pruned()
    built, copied = [], []
    monkeypatch.setattr(PrunedSetInverse, "from_support", classmethod(lambda *a, **k: built.append(1)))
    monkeypatch.setattr(PrunedSetInverse, "copy", lambda self: copied.append(1))
    st, info = local_search(st, swap=2, max_iter=10, min_swap=1)
    assert info["swaps_accepted"] >= 2 and info["swaps_tried"] > info["swaps_accepted"]
    assert built == [] and copied == []
    monkeypatch.undo()
    direct = SupportState(P, torch.nonzero(st.kept).flatten(), track_pruned=True)
    direct.track_pruned()
    torch.testing.assert_close(st.gains(), direct.gains(), rtol=1e-8, atol=1e-10)


def test_local_search_halves_the_swap_down_to_min_swap():
    """From the exact optimum every trial is rejected: swap 4 → 2 → 1 with min_swap 1 (patience trials
    each), 4 → 2 with min_swap 2, and no halving with min_swap = swap (the OPT rule); an odd swap halves
    by integer division (3 → 1)."""
    P = random_problem(1, 16, 1, 8)
    _, best = brute_force(P)
    for swap, min_swap, patience, tried in ((4, 1, 1, 3), (4, 2, 1, 2), (4, 4, 1, 1), (4, 1, 2, 6), (3, 1, 1, 2),
                                            (3, 2, 1, 1)):
        _, info = local_search(_state_on(P, best), swap=swap, max_iter=30, min_swap=min_swap, patience=patience)
        assert (info["swaps_tried"], info["swaps_accepted"]) == (tried, 0), (swap, min_swap, patience)
