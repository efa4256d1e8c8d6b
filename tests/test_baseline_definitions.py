"""Each baseline on a hand-built problem where its correct selection is known and differs from a
wrong variant's (the mutants named in the issue tracker: MP+ without its refit, Lasso replaced by
plain magnitude, FPGM's selection inverted) and, for the methods whose default follows the OSSCAR
authors' code (issue #15), from the original paper's variant kept as a parameter."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from baselines.chip import channel_independence
from baselines.fpgm import fpgm_scores
from baselines.lasso import group_lasso, group_soft_threshold, spectral_norm
from baselines.thinet import own_energy, thinet_removed
from conftest import random_problem
from osscar.methods import available_methods, make_method
from osscar.obs import refit
from osscar.problem import LayerProblem

F64 = torch.float64

# every non-default variant of a baseline: each must also honour the partition constraint
VARIANTS = [("thinet", {"selection": "joint-greedy"}), ("fpgm", {"exclude_fraction": 0.0}),
            ("fpgm", {"vectors": "producer-filters", "exclude_fraction": 0.0}), ("lasso", {"momentum": "fista"}),
            ("lasso", {"max_halvings": 30}), ("lasso", {"momentum": "fista", "max_halvings": 30})]


def test_mp_plus_is_mp_support_with_the_least_squares_refit():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(200, 6, generator=g, dtype=F64)
    X[:, 1] += 0.9 * X[:, 0]  # correlated features: the refit moves weight onto the kept ones
    W = torch.randn(6, 3, generator=g, dtype=F64)
    P = LayerProblem.from_calibration(X.T @ X, W, 1, 3, damping=0.0)
    mp, mpp = make_method("mp").prune(P), make_method("mp+").prune(P)
    assert mp.kept.tolist() == mpp.kept.tolist()
    torch.testing.assert_close(mpp.W, refit(P, mpp.kept))  # the refit itself
    kept_rows = P.rows_of(mpp.kept)
    assert (mpp.W[kept_rows] - P.W_dense[kept_rows]).abs().max() > 1e-3  # and it is not Ŵ
    assert mpp.objective < mp.objective - 1e-6


# -- ThiNet ------------------------------------------------------------------------------------

def thinet_problem() -> LayerProblem:
    """Four groups with own energies e = ½ Ŵ_g² H_gg = (0.7, 1.0, 0.8, 0.9); groups 0 and 1 cancel
    (H_01 = −0.9·√(H_00 H_11)), so removing both costs little. Keep 2.

    own-energy (authors): removes the two lowest e, 0 and 2 -> keeps {1, 3}.
    joint-greedy (Luo et al.): removes 0 first, then 1 (its cross term with 0 makes it cheap)
    -> keeps {2, 3}. MP (largest |Ŵ_g|) keeps {0, 2}."""
    W = torch.tensor([[3.0], [0.5], [2.0], [1.0]], dtype=F64)
    d = 2 * torch.tensor([0.7, 1.0, 0.8, 0.9], dtype=F64) / W[:, 0] ** 2
    H = torch.diag(d)
    H[0, 1] = H[1, 0] = -0.9 * (d[0] * d[1]).sqrt()
    return LayerProblem(H=H, G=H @ W, W_dense=W, group_size=1, k=2, G_is_HW=True)


def test_thinet_default_removes_groups_by_their_own_energy_then_refits():
    P = thinet_problem()
    r = make_method("thinet").prune(P)
    assert r.kept.tolist() == [1, 3] and r.info["selection"] == "own-energy"
    torch.testing.assert_close(r.W, refit(P, r.kept))
    others = {n: make_method(n).prune(P).kept.tolist() for n in available_methods() if n not in ("thinet", "chip")}
    assert all(kept != [1, 3] for kept in others.values()), others  # no other method selects this


def test_thinet_joint_greedy_variant_counts_the_cross_terms():
    P = thinet_problem()
    r = make_method("thinet", selection="joint-greedy").prune(P)
    assert r.kept.tolist() == [2, 3] and r.info["selection"] == "joint-greedy"
    torch.testing.assert_close(r.W, refit(P, r.kept))
    assert make_method("mp").prune(P).kept.tolist() == [0, 2]


def test_thinet_own_energy_is_half_the_groups_output_energy():
    """e_g = ½‖X_g Ŵ_g‖²_F for groups of 2 features, from X directly."""
    g = torch.Generator().manual_seed(3)
    X, W = torch.randn(50, 6, generator=g, dtype=F64), torch.randn(6, 2, generator=g, dtype=F64)
    expected = torch.stack([0.5 * (X[:, 2 * j:2 * j + 2] @ W[2 * j:2 * j + 2]).square().sum() for j in range(3)])
    torch.testing.assert_close(own_energy(X.T @ X, W, 2), expected)


def _joint_greedy_reference(P: LayerProblem, n_remove: int) -> list[int]:
    """Luo et al. written from the definition: grow T one group at a time, each step the group g
    whose T ∪ {g} has the smallest joint energy tr(Ŵ_Tᵀ H_TT Ŵ_T); with blocks, a block that has
    lost n_remove / blocks groups offers no more."""
    per = P.n_groups // P.blocks
    T: list[int] = []
    for _ in range(n_remove):
        full = {b for b in range(P.blocks) if sum(t // per == b for t in T) == n_remove // P.blocks}
        def energy(g):
            rows = P.rows_of(torch.tensor(T + [g]))
            return float((P.W_dense[rows] * (P.H[rows[:, None], rows] @ P.W_dense[rows])).sum())
        T.append(min((g for g in range(P.n_groups) if g not in T and g // per not in full), key=energy))
    return T


@pytest.mark.parametrize(("seed", "group_size", "blocks", "n_remove"), [(0, 1, 1, 5), (1, 2, 1, 4), (2, 2, 2, 4), (3, 1, 3, 6), (1, 1, 1, 8)])
def test_thinet_joint_greedy_order_is_the_greedy_on_the_removed_sets_joint_energy(seed, group_size, blocks, n_remove):
    P = dataclasses.replace(random_problem(seed, 12, group_size, 12 - n_remove), blocks=blocks)
    removed = thinet_removed(P.H, P.W_dense, group_size, n_remove, blocks)
    assert removed.dtype == torch.long and removed.tolist() == _joint_greedy_reference(P, n_remove)


def test_thinet_joint_greedy_never_removes_a_group_twice_and_defaults_to_one_block():
    """On the cancelling pair of thinet_problem, after T = {0, 1} group 0's joint-energy increment
    (1.19) is below group 2's own (1.6): a greedy that forgot T would remove 0 again."""
    P = thinet_problem()
    assert thinet_removed(P.H, P.W_dense, 1, 3).tolist() == [0, 1, 2]
    assert thinet_removed(P.H, P.W_dense, 1, 0).dtype == torch.long  # nothing removed: still an index
    r = make_method("thinet", selection="joint-greedy").prune(dataclasses.replace(P, k=4))
    assert r.kept.tolist() == [0, 1, 2, 3]


def test_thinet_rejects_an_unknown_selection():
    with pytest.raises(ValueError, match="selection.*allowed: own-energy, joint-greedy"):
        make_method("thinet", selection="greedy")


def test_ziplm_removes_one_group_per_stage_with_either_engine():
    P = random_problem(3, 8, 2, 3)
    eager, deferred = make_method("ziplm").prune(P), make_method("ziplm", deferred=True).prune(P)
    assert eager.info["stages"] == deferred.info["stages"] == 8 - 3
    assert eager.kept.tolist() == deferred.kept.tolist()


# -- Lasso -------------------------------------------------------------------------------------

def test_lasso_drops_a_large_weight_on_a_feature_that_barely_varies():
    """Group 0 has the largest weight but its input feature is 100× smaller than the others, so it
    hardly contributes to the output: magnitude (MP) keeps it, the group lasso (which sees H)
    shrinks it to zero and keeps the two features that matter."""
    g = torch.Generator().manual_seed(1)
    X = torch.randn(400, 3, generator=g, dtype=F64)
    X[:, 0] *= 0.01
    W = torch.tensor([[2.0], [1.0], [0.9]], dtype=F64)
    P = LayerProblem.from_calibration(X.T @ X, W, 1, 2, damping=1e-6)
    assert make_method("mp").prune(P).kept.tolist() == [0, 1]
    lasso = make_method("lasso").prune(P)
    assert lasso.kept.tolist() == [1, 2]
    assert lasso.objective < make_method("mp+").prune(P).objective - 1e-3


def reference_apg(P: LayerProblem, steps: int, betas: list[float]) -> torch.Tensor:
    """The authors' iteration written out: step 1/‖H‖₂ (from a full eigendecomposition), λ₁ = 0.005·tr H."""
    step = 1 / float(torch.linalg.eigvalsh(P.H).max())
    lam = 0.005 * float(torch.trace(P.H))
    W = Y = P.W_dense.clone()
    for ir in range(steps):
        W_new = group_soft_threshold(Y - step * (P.H @ Y - P.G), P.group_size, step * lam)
        Y = W_new + betas[ir] * (W_new - W)
        W = W_new
    return W


@pytest.mark.parametrize("momentum", ["ir3", "fista"])
def test_lasso_iterates_are_the_accelerated_proximal_gradient_with_its_momentum(momentum, monkeypatch):
    P = random_problem(4, 6, 2, 2, damping=0.1)
    t, fista = 1.0, []
    for _ in range(5):
        t_next = (1 + (1 + 4 * t * t) ** 0.5) / 2
        fista.append((t - 1) / t_next)
        t = t_next
    betas = [ir / (ir + 3) for ir in range(5)] if momentum == "ir3" else fista
    seen = {}
    import baselines.lasso as lasso_mod

    real = lasso_mod.group_lasso

    def spy(*args, **kwargs):
        seen["W"] = real(*args, **kwargs)
        return seen["W"]

    monkeypatch.setattr(lasso_mod, "group_lasso", spy)
    r = make_method("lasso", steps=5, momentum=momentum).prune(P)
    torch.testing.assert_close(seen["W"], reference_apg(P, 5, betas), rtol=1e-12, atol=1e-12)
    other = [ir / (ir + 3) for ir in range(5)] if momentum == "fista" else fista
    assert (seen["W"] - reference_apg(P, 5, other)).abs().max() > 1e-6  # the momenta differ here
    assert r.info["momentum"] == momentum and r.info["halvings"] == 0


def lasso_all_zero_problem() -> LayerProblem:
    """As above, weights scaled down so that λ₁ = 0.005·tr H zeroes all three groups."""
    g = torch.Generator().manual_seed(1)
    X = torch.randn(400, 3, generator=g, dtype=F64)
    X[:, 0] *= 0.01
    W = torch.tensor([[0.02], [0.005], [0.004]], dtype=F64)
    return LayerProblem.from_calibration(X.T @ X, W, 1, 2, damping=1e-6)


def test_lasso_helpers_default_to_ir3_momentum_and_a_unit_step_for_a_zero_matrix():
    P = random_problem(4, 6, 2, 2, damping=0.1)
    lam = 0.005 * float(torch.trace(P.H))
    torch.testing.assert_close(group_lasso(P.H, P.G, P.W_dense, 2, lam, 5),
                               reference_apg(P, 5, [ir / (ir + 3) for ir in range(5)]), rtol=1e-12, atol=1e-12)
    assert spectral_norm(0.25 * torch.eye(3, dtype=F64)) == pytest.approx(0.25)  # below 1: still λ_max
    assert spectral_norm(torch.zeros(3, 3, dtype=F64)) == 1.0 and spectral_norm(torch.zeros(0, 0, dtype=F64)) == 1.0


def test_lasso_default_keeps_its_one_lambda_and_the_halving_variant_retunes_it():
    """Default: one λ₁; every group is zero, so the k largest ‖Ŵ_g‖ are kept ({0, 1}). With
    max_halvings, λ₁ is halved until two groups survive, and the lasso drops the barely-varying
    feature 0 ({1, 2})."""
    P = lasso_all_zero_problem()
    r = make_method("lasso").prune(P)
    assert r.info["halvings"] == 0 and r.info["nonzero_groups"] == 0 and r.kept.tolist() == [0, 1]
    lam = 0.005 * float(torch.trace(P.H))
    assert r.info["lambda"] == pytest.approx(lam, rel=1e-12)
    h = make_method("lasso", max_halvings=30).prune(P)
    assert h.info["halvings"] >= 1 and h.info["nonzero_groups"] >= 2 and h.kept.tolist() == [1, 2]
    assert h.info["lambda"] == pytest.approx(lam / 2 ** h.info["halvings"], rel=1e-12)
    torch.testing.assert_close(h.W, refit(P, h.kept))


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"lambda_scale": 0.0}, "lambda_scale must be > 0"), ({"steps": 0}, "steps must be an integer"),
    ({"steps": True}, "steps must be an integer"), ({"steps": 2.5}, "steps must be an integer"),
    ({"max_halvings": -1}, "max_halvings must be an integer"), ({"max_halvings": True}, "max_halvings must be an integer"),
    ({"max_halvings": 0.5}, "max_halvings must be an integer")])
def test_lasso_rejects_bad_parameters_by_name(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_method("lasso", **kwargs)


def test_lasso_accepts_the_smallest_valid_parameters():
    r = make_method("lasso", steps=1, max_halvings=0, lambda_scale=1e-9).prune(random_problem(0, 6, 1, 3))
    assert len(r.kept) == 3


def test_lasso_stops_halving_once_k_groups_are_nonzero():
    """The feature-that-barely-varies problem: one λ₁ already leaves exactly k = 2 groups nonzero, so
    no halving happens even when 5 are allowed."""
    g = torch.Generator().manual_seed(1)
    X = torch.randn(400, 3, generator=g, dtype=F64)
    X[:, 0] *= 0.01
    P = LayerProblem.from_calibration(X.T @ X, torch.tensor([[2.0], [1.0], [0.9]], dtype=F64), 1, 2, damping=1e-6)
    r = make_method("lasso", max_halvings=5).prune(P)
    assert r.info["halvings"] == 0 and r.info["nonzero_groups"] == 2 and r.kept.tolist() == [1, 2]


def test_lasso_ties_among_zeroed_groups_go_to_the_larger_dense_norm():
    """A λ₁ so large that every group is zeroed: the k kept are the largest ‖Ŵ_g‖ (norms above 1)."""
    P = random_problem(2, 6, 2, 2)
    W = P.W_dense * 5
    P = LayerProblem.from_calibration(P.H, W, 2, 2, damping=0.0)
    r = make_method("lasso", lambda_scale=100.0).prune(P)
    dense = W.reshape(6, -1).norm(dim=1)
    assert r.info["nonzero_groups"] == 0 and float(dense.max()) > 1
    assert r.kept.tolist() == sorted(torch.argsort(dense, descending=True)[:2].tolist())


def test_lasso_rejects_an_unknown_momentum():
    with pytest.raises(ValueError, match="momentum.*allowed: ir3, fista"):
        make_method("lasso", momentum="nesterov")


# -- FPGM --------------------------------------------------------------------------------------

def fpgm_problem() -> LayerProblem:
    """Five groups, keep 4. Consumer rows Ŵ_g: (0.5, 0) (the smallest norm, nearest the median),
    three arms of a cross at 10, and (3, −3). Producer filters: a cross with group 1 at its centre.

    consumer rows, 20% excluded (authors): group 0 is never a candidate; among the others (3, −3)
    is nearest their median -> prune 4. consumer rows, none excluded: prune 0. producer filters,
    none excluded (He et al.): prune 1."""
    W = torch.tensor([[0.5, 0.0], [10.0, 0.0], [0.0, 10.0], [-10.0, 0.0], [3.0, -3.0]], dtype=F64)
    V = torch.tensor([[10.0, 0.0], [0.0, 0.0], [0.0, 10.0], [-10.0, 0.0], [0.0, -10.0]], dtype=F64)
    return LayerProblem(H=torch.eye(5, dtype=F64), G=W.clone(), W_dense=W, group_size=1, k=4,
                        producer_weight=V, G_is_HW=True)


@pytest.mark.parametrize(("params", "pruned"), [
    ({}, 4), ({"exclude_fraction": 0.0}, 0), ({"vectors": "producer-filters", "exclude_fraction": 0.0}, 1)])
def test_fpgm_prunes_the_candidate_nearest_the_geometric_median(params, pruned):
    P = fpgm_problem()
    r = make_method("fpgm", **params).prune(P)
    assert r.kept.tolist() == [g for g in range(5) if g != pruned]
    assert torch.equal(r.W[r.kept], P.W_dense[r.kept])  # kept weights unchanged
    assert r.info["vectors"] == params.get("vectors", "consumer-rows")


def test_fpgm_never_prunes_an_excluded_group_before_a_candidate():
    """k = 1: the survivor is the excluded smallest-norm group 0 (an inverted selection, or no
    exclusion, keeps an arm of the cross instead)."""
    P = dataclasses.replace(fpgm_problem(), k=1)
    assert make_method("fpgm").prune(P).kept.tolist() == [0]
    assert make_method("fpgm", exclude_fraction=0.0).prune(P).kept.tolist() != [0]


def test_fpgm_distances_are_among_the_candidates_only():
    """Five tiny rows near the origin (excluded at exclude_fraction=0.5) and five candidates: a cross
    around (20, 0) with (20, 1) at its centre. Among the candidates (20, 1) is nearest the median
    (pruned, group 9); counting the distances to the excluded rows too would prune (10, 0) instead."""
    tiny = [[0.1 * (j + 1), 0.0] for j in range(5)]
    W = torch.tensor(tiny + [[30.0, 0.0], [20.0, 10.0], [10.0, 0.0], [20.0, -10.0], [20.0, 1.0]], dtype=F64)
    P = LayerProblem(H=torch.eye(10, dtype=F64), G=W.clone(), W_dense=W, group_size=1, k=9, G_is_HW=True)
    assert make_method("fpgm", exclude_fraction=0.5).prune(P).kept.tolist() == list(range(9))


def test_fpgm_breaks_norm_ties_by_group_index():
    """20 integer rows of norm exactly 3: the 4 excluded at 0.2 are groups 0–3, the lowest indices (a
    stable sort; torch's unstable CPU sort orders ties differently from 17 rows on)."""
    rows = [[3, 0, 0], [0, 3, 0], [0, 0, 3], [-3, 0, 0], [0, -3, 0], [0, 0, -3]]
    rows += [[a, b, c] for a in (1, -1) for b in (2, -2) for c in (2, -2)] + [[2, 1, 2], [2, -1, 2], [-2, 1, 2], [2, 1, -2],
                                                                          [-2, -1, 2], [2, -1, -2]]
    W = torch.tensor(rows, dtype=F64)
    assert len(W) == 20 and bool((W.norm(dim=1) == 3).all())
    P = LayerProblem(H=torch.eye(20, dtype=F64), G=W.clone(), W_dense=W, group_size=1, k=4, G_is_HW=True)
    assert make_method("fpgm").prune(P).kept.tolist() == [0, 1, 2, 3]


def test_fpgm_excluded_groups_rank_by_norm_above_every_candidate():
    """k = 2 of the ten rows of the previous test with half excluded: the two largest excluded (0.4 and
    0.5) are kept; with every row excluded (a fraction just under 1) the scores are 1 + ‖v_g‖."""
    tiny = [[0.1 * (j + 1), 0.0] for j in range(5)]
    W = torch.tensor(tiny + [[30.0, 0.0], [20.0, 10.0], [10.0, 0.0], [20.0, -10.0], [20.0, 1.0]], dtype=F64)
    P = LayerProblem(H=torch.eye(10, dtype=F64), G=W.clone(), W_dense=W, group_size=1, k=2, G_is_HW=True)
    assert make_method("fpgm", exclude_fraction=0.5).prune(P).kept.tolist() == [3, 4]
    torch.testing.assert_close(fpgm_scores(W[:3], 1 - 1e-10), 1 + W[:3].norm(dim=1))


def test_fpgm_producer_filters_need_the_producer_weight_and_bad_values_are_rejected(make_problem):
    with pytest.raises(ValueError, match=r"^fpgm with vectors='producer-filters' needs problem\.producer_weight \(n_groups, d\); "
                                         r"this layer problem has none \(language-model consumers have no single producer conv\)$"):
        make_method("fpgm", vectors="producer-filters").prune(make_problem(0, 6, 1, 2))
    with pytest.raises(ValueError, match="exclude_fraction must be a number"):
        make_method("fpgm", exclude_fraction="0.1")
    with pytest.raises(ValueError, match="vectors.*allowed: consumer-rows, producer-filters"):
        make_method("fpgm", vectors="filters")
    with pytest.raises(ValueError, match="exclude_fraction"):
        make_method("fpgm", exclude_fraction=1.0)


# -- CHIP --------------------------------------------------------------------------------------

def test_chip_drops_both_copies_of_a_duplicated_channel():
    """Orthogonal rows: ‖A‖_* = Σ‖a_c‖, so CI_c = ‖a_c‖ (0.8, 0.5) for the lone channels; channels 0
    and 1 are one unit vector twice (σ = √2), each with CI = √2 − 1 ≈ 0.41. Keep 2: {2, 3}, though
    0 and 1 have the largest norms."""
    A = torch.zeros(1, 4, 6, dtype=F64)
    A[0, 0, 0] = A[0, 1, 0] = 1.0
    A[0, 2, 1], A[0, 3, 2] = 0.8, 0.5
    torch.testing.assert_close(channel_independence(A), torch.tensor([2**0.5 - 1] * 2 + [0.8, 0.5], dtype=F64))
    P = dataclasses.replace(random_problem(0, 4, 1, 2), activations=A)
    assert make_method("chip").prune(P).kept.tolist() == [2, 3]


@pytest.mark.parametrize("max_bytes", [1, 3 * 8 * 3 * 7 * 11, 5 * 8 * 3 * 7 * 11 + 17])  # chunks of 1, 3 and 5 channels
def test_chip_scores_do_not_depend_on_the_memory_chunking(max_bytes):
    A = torch.randn(3, 7, 11, generator=torch.Generator().manual_seed(0), dtype=F64)
    expected = torch.stack([(torch.linalg.matrix_norm(A, ord="nuc")
                             - torch.linalg.matrix_norm(A * (torch.arange(7) != c)[None, :, None], ord="nuc")).mean()
                            for c in range(7)])  # CI_c from its definition, one channel at a time
    torch.testing.assert_close(channel_independence(A, max_bytes=max_bytes), expected)


# -- every variant honours the partition constraint ------------------------------------------------

@pytest.mark.parametrize(("name", "params"), VARIANTS)
def test_every_variant_keeps_the_same_count_in_every_block(name, params):
    for seed, blocks, per, keep in ((0, 2, 5, 2), (1, 3, 4, 2), (2, 4, 3, 1)):
        P = random_problem(seed, blocks * per, 2, blocks * keep)
        V = torch.randn(P.n_groups, 3, generator=torch.Generator().manual_seed(seed), dtype=F64)
        P = dataclasses.replace(P, blocks=blocks, producer_weight=V)
        r = make_method(name, **params).prune(P)  # prune() itself rejects a result that breaks the counts
        assert torch.bincount(P.block_of(r.kept), minlength=blocks).tolist() == [keep] * blocks


def test_fpgm_reports_its_exclude_fraction():
    assert make_method("fpgm").prune(fpgm_problem()).info["exclude_fraction"] == 0.2
