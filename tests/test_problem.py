"""Validation of LayerProblem: bad input is a ValueError naming the parameter, before any work."""

import math

import pytest
import torch

from osscar.problem import LayerProblem, reconstruction_error


def _spd(p: int, seed: int = 0) -> torch.Tensor:
    X = torch.randn(3 * p, p, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return X.T @ X


def test_damping_and_linear_term():
    H = _spd(6)
    W = torch.randn(6, 3, dtype=torch.float64)
    P = LayerProblem.from_calibration(H, W, 2, 2, damping=0.1)
    lam = 0.1 * float(torch.diagonal(H).mean())
    torch.testing.assert_close(P.H, H + lam * torch.eye(6, dtype=torch.float64))
    torch.testing.assert_close(P.G, P.H @ W)
    assert P.G_is_HW and P.n_groups == 3 and P.p == 6 and P.m == 3


def test_cross_term_gives_two_stream_G():
    H, C = _spd(4, 1), _spd(4, 2)
    W = torch.randn(4, 2, dtype=torch.float64)
    P = LayerProblem.from_calibration(H, W, 1, 2, damping=0.0, cross=C)
    torch.testing.assert_close(P.G, C @ W)
    assert not P.G_is_HW


def test_dead_features_are_pinned_and_zeroed():
    H = _spd(5)
    H[2, :] = 0
    H[:, 2] = 0
    W = torch.ones(5, 2, dtype=torch.float64)
    P = LayerProblem.from_calibration(H, W, 1, 3, damping=0.0)
    assert float(P.W_dense[2].abs().sum()) == 0
    assert float(P.H[2, 2]) == 1.0
    torch.linalg.cholesky(P.H)  # positive definite


def test_objective_is_reconstruction_error_minus_constant():
    g = torch.Generator().manual_seed(3)
    X = torch.randn(40, 6, generator=g, dtype=torch.float64)
    W_dense = torch.randn(6, 3, generator=g, dtype=torch.float64)
    W = torch.randn(6, 3, generator=g, dtype=torch.float64)
    P = LayerProblem.from_calibration(X.T @ X, W_dense, 1, 6, damping=0.0)
    err = 0.5 * float(((X @ W_dense - X @ W) ** 2).sum())
    const = 0.5 * float(((X @ W_dense) ** 2).sum())
    assert math.isclose(P.objective(W) + const, err, rel_tol=1e-10)


def test_reconstruction_error_is_the_objective_gap_on_calibration_inputs():
    """With H = XᵀX, damping 0 and G = HŴ: reconstruction_error(H, W, Ŵ) = (½‖X(W−Ŵ)‖², ratio) with
    ½‖X(W−Ŵ)‖² = Q(W) − Q(Ŵ) (Q(Ŵ) = dense_objective) and ratio = (Q(W) − Q(Ŵ)) / (Q(0) − Q(Ŵ)), Q(0) = 0;
    W is an OSSCAR solution (pruned rows zero, kept rows refit)."""
    from osscar.methods import make_method

    g = torch.Generator().manual_seed(5)
    X = torch.randn(60, 12, generator=g, dtype=torch.float64)
    W_dense = torch.randn(12, 4, generator=g, dtype=torch.float64)
    P = LayerProblem.from_calibration(X.T @ X, W_dense, 2, 3, damping=0.0)
    W = make_method("osscar").prune(P).W
    assert int((W.abs().sum(1) == 0).sum()) == 6  # 3 of 6 groups of 2 pruned
    err, rel = reconstruction_error(X.T @ X, W, W_dense)
    q_w, q_dense, q_zero = P.objective(W), P.dense_objective(), 0.0
    assert math.isclose(err, 0.5 * float((X @ (W - W_dense)).pow(2).sum()), rel_tol=1e-10)
    assert math.isclose(err, q_w - q_dense, rel_tol=1e-9)
    assert math.isclose(rel, (q_w - q_dense) / (q_zero - q_dense), rel_tol=1e-9)
    assert 0 < rel < 1
    assert reconstruction_error(X.T @ X, W_dense, W_dense)[0] == 0.0
    with pytest.raises(ValueError, match="W_dense must have 4 columns"):
        reconstruction_error(X.T @ X, W, W_dense[:, :3])


@pytest.mark.parametrize("method", ["osscar", "mp"])
@pytest.mark.parametrize("damping", [0.0, 0.01, 1.0])
def test_calibration_error_from_the_damped_H_equals_the_raw_one(method, damping):
    """LayerProblem.calibration_error(W) (from H − diag_shift·I, no raw XᵀX kept) equals
    reconstruction_error(XᵀX, W, Ŵ) with the original dense weights, dead features included
    (a feature that never fires: its H row is zero, its dense weights are not)."""
    from osscar.methods import make_method

    g = torch.Generator().manual_seed(7)
    X = torch.randn(50, 12, generator=g, dtype=torch.float64)
    X[:, 5] = 0  # feature 5 never fires
    W_dense = torch.randn(12, 4, generator=g, dtype=torch.float64)
    H_raw = X.T @ X
    P = LayerProblem.from_calibration(H_raw, W_dense, 2, 3, damping=damping)
    assert P.diag_shift == pytest.approx(damping * float(torch.diagonal(H_raw).sum() + 1) / 12, rel=1e-12)
    W = make_method(method).prune(P).W
    err, rel = P.calibration_error(W)
    ref_err, ref_rel = reconstruction_error(H_raw, W, W_dense)
    assert err == pytest.approx(ref_err, rel=1e-9) and rel == pytest.approx(ref_rel, rel=1e-9)
    assert P.calibration_error(P.W_dense) == pytest.approx((0.0, 0.0), abs=1e-9)
    zero = LayerProblem.from_calibration(torch.zeros(12, 12, dtype=torch.float64), W_dense, 2, 3, damping=damping)
    assert math.isnan(zero.calibration_error(torch.zeros_like(W_dense))[1])
    with pytest.raises(ValueError, match=r"^W must have 4 columns"):
        P.calibration_error(W[:, :3])


def test_reconstruction_error_inputs_dtypes_and_zero_energy():
    """Bad shapes name the argument; float32 inputs are computed in float64; a dense output of zero
    energy gives a NaN ratio (the error itself is still defined); the ratio is scale-free."""
    g = torch.Generator().manual_seed(6)
    X = torch.randn(30, 6, generator=g, dtype=torch.float64)
    H = X.T @ X
    W_dense = torch.randn(6, 3, generator=g, dtype=torch.float64)
    W = W_dense.clone()
    W[:2] = 0
    with pytest.raises(ValueError, match=r"^H_raw must be square"):
        reconstruction_error(H[:, :5], W, W_dense)
    with pytest.raises(ValueError, match=r"^W must have 6 rows"):
        reconstruction_error(H, W[:5], W_dense)
    with pytest.raises(ValueError, match=r"^W_dense must have 6 rows"):
        reconstruction_error(H, W, W_dense[:5])
    err, rel = reconstruction_error(H, W, W_dense)
    assert err == pytest.approx(0.5 * float((X @ (W - W_dense)).pow(2).sum()), rel=1e-12)
    assert reconstruction_error(H.float(), W.float(), W_dense.float()) == pytest.approx((err, rel), rel=1e-5)
    tiny = 1e-4 / float((W_dense * (H @ W_dense)).sum())  # dense output energy 0.5e-4 < 1
    assert reconstruction_error(H * tiny, W, W_dense) == pytest.approx((err * tiny, rel), rel=1e-10)
    err0, rel0 = reconstruction_error(H, W, torch.zeros_like(W_dense))
    assert err0 == pytest.approx(0.5 * float((X @ W).pow(2).sum()), rel=1e-12) and math.isnan(rel0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(H_raw=torch.ones(4, 3, dtype=torch.float64)), "H_raw must be square"),
        (dict(H_raw=torch.triu(torch.ones(4, 4, dtype=torch.float64))), "H_raw must be symmetric"),
        (dict(H_raw=torch.full((4, 4), float("nan"), dtype=torch.float64)), "H_raw contains NaN or Inf"),
        (dict(W_dense=torch.full((4, 2), float("inf"), dtype=torch.float64)), "W_dense contains NaN or Inf"),
        (dict(W_dense=torch.ones(5, 2, dtype=torch.float64)), "W_dense must have 4 rows"),
        (dict(group_size=3), "group_size=3 must divide the number of input features p=4"),
        (dict(group_size=0), "group_size must be a positive integer"),
        (dict(k=-1), r"k \(groups to keep\) must be an integer in \[0, 2\]"),
        (dict(k=3), r"k \(groups to keep\) must be an integer in \[0, 2\]"),
        (dict(damping=-1.0), "damping must be a finite number"),
        (dict(cross=torch.ones(3, 3, dtype=torch.float64)), "cross must have 4 rows"),
        (dict(cross=torch.ones(4, 3, dtype=torch.float64)), "cross must have 4 columns"),
        (dict(cross=torch.full((4, 4), float("nan"), dtype=torch.float64)), r"^cross contains NaN or Inf"),
        (dict(damping=float("inf")), "damping must be a finite number"),
        (dict(damping="0.1"), "damping must be a finite number"),
        (dict(blocks=3), r"^blocks=3 must divide the number of groups 2$"),
        (dict(blocks=1.5), r"^blocks must be a positive integer, got 1.5$"),
        (dict(group_size=2.0), r"^group_size must be a positive integer, got 2.0$"),
        (dict(k=1.0), r"^k \(groups to keep\) must be an integer in \[0, 2\], got 1.0$"),
        (dict(H_raw=[[1.0]]), r"^H_raw must be a torch.Tensor, got list$"),
        (dict(H_raw=torch.ones(4, dtype=torch.float64)), r"^H_raw must be a 2-D matrix, got shape \(4,\)$"),
    ],
)
def test_bad_input_is_a_clear_value_error(kwargs, match):
    args = dict(H_raw=_spd(4), W_dense=torch.ones(4, 2, dtype=torch.float64), group_size=2, k=1)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        LayerProblem.from_calibration(**args)


def test_direct_construction_is_validated_too():
    H = _spd(4)
    with pytest.raises(ValueError, match="H must be symmetric"):
        LayerProblem(H=torch.triu(H), G=torch.ones(4, 1, dtype=torch.float64), W_dense=torch.ones(4, 1, dtype=torch.float64),
                     group_size=1, k=1)
    with pytest.raises(ValueError, match="G must have 1 columns"):
        LayerProblem(H=H, G=torch.ones(4, 2, dtype=torch.float64), W_dense=torch.ones(4, 1, dtype=torch.float64),
                     group_size=1, k=1)
    with pytest.raises(ValueError, match="activations must have shape"):
        LayerProblem(H=H, G=H @ torch.ones(4, 1, dtype=torch.float64), W_dense=torch.ones(4, 1, dtype=torch.float64),
                     group_size=2, k=1, activations=torch.ones(3, 4, 5))


@pytest.mark.parametrize("two_stream", [False, True])
def test_dense_objective_is_q_at_the_unconstrained_optimum(two_stream):
    """Q(H⁻¹G) for G = HŴ (no solve needed) and for a two-stream G ≠ HŴ (the solve is needed)."""
    H, C = _spd(6, 3), _spd(6, 4)
    W = torch.randn(6, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    P = LayerProblem.from_calibration(H, W, 2, 1, damping=0.0, cross=C if two_stream else None)
    assert P.G_is_HW is not two_stream
    expected = P.objective(torch.linalg.solve(P.H, P.G))
    assert expected < 0 and P.dense_objective() == pytest.approx(expected, rel=1e-10)


def test_objective_of_float32_weights_is_computed_in_float64():
    H = _spd(4, 6)
    W = torch.randn(4, 2, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    P = LayerProblem.from_calibration(H, W, 1, 2, damping=0.0)
    W32 = (W * 0.5).float()
    assert P.objective(W32) == pytest.approx(P.objective(W32.double()), rel=1e-12)


def test_objective_counts_every_nonzero_row():
    """A row with |w| summing to exactly 1 and a zero row: Q(W) = ½ tr(WᵀHW) − tr(GᵀW) over all rows."""
    H = _spd(3, 8)
    P = LayerProblem.from_calibration(H, torch.ones(3, 2, dtype=torch.float64), 1, 2, damping=0.0)
    W = torch.tensor([[0.5, -0.5], [0.0, 0.0], [2.0, 1.0]], dtype=torch.float64)
    expected = 0.5 * float((W * (P.H @ W)).sum()) - float((P.G * W).sum())
    assert P.objective(W) == pytest.approx(expected, rel=1e-12)


def test_from_calibration_defaults_to_one_percent_damping_and_no_name():
    H = _spd(4, 9)
    P = LayerProblem.from_calibration(H, torch.ones(4, 1, dtype=torch.float64), 1, 2)
    assert P.damping == 0.01 and P.name == ""
    torch.testing.assert_close(P.H, H + 0.01 * float(torch.diagonal(H).mean()) * torch.eye(4, dtype=torch.float64))


def test_from_calibration_solves_in_float64_whatever_the_input_dtype():
    H = _spd(4, 10).float()
    for cross in (None, _spd(4, 11).float()):
        P = LayerProblem.from_calibration(H, torch.ones(4, 2), 2, 1, damping=0.0, cross=cross)
        assert P.H.dtype == P.W_dense.dtype == P.G.dtype == torch.float64


def test_from_calibration_keeps_the_activations_and_producer_weight_and_zeroes_dead_cross_rows():
    H, C = _spd(4, 12), _spd(4, 13)
    H[1, :] = H[:, 1] = 0  # feature 1 never fires
    A, V = torch.randn(2, 4, 5), torch.randn(4, 3)
    P = LayerProblem.from_calibration(H, torch.ones(4, 2, dtype=torch.float64), 1, 2, cross=C, activations=A,
                                      producer_weight=V)
    assert P.activations is A and P.producer_weight is V
    assert float(P.G[1].abs().sum()) == 0 and float(P.G.abs().sum()) > 0


def test_from_calibration_records_its_damping_name_and_blocks():
    P = LayerProblem.from_calibration(_spd(4, 14), torch.ones(4, 1, dtype=torch.float64), 1, 2, damping=0.25, name="l3.mlp",
                                      blocks=2)
    assert P.damping == 0.25 and P.name == "l3.mlp" and P.blocks == 2


_H4 = _spd(4)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"W_dense": torch.ones(3, 1, dtype=torch.float64)}, r"^W_dense must have 4 rows"),
    ({"W_dense": torch.full((4, 1), float("nan"), dtype=torch.float64)}, r"^W_dense contains NaN or Inf"),
    ({"G": torch.ones(3, 1, dtype=torch.float64)}, r"^G must have 4 rows"),
    ({"G": torch.full((4, 1), float("inf"), dtype=torch.float64)}, r"^G contains NaN or Inf"),
    ({"H": _H4.to("meta")}, r"^H, G and W_dense must be on one device \(the solver's\), got "),
    ({"damping": float("inf")}, r"^damping must be a finite number ≥ 0, got inf$"),
    ({"damping": "0.1"}, r"^damping must be a finite number ≥ 0, got '0.1'$"),
    ({"activations": torch.full((2, 4, 3), float("nan"))}, r"^activations contains NaN or Inf"),
    ({"producer_weight": torch.ones(3, 2)}, r"^producer_weight must have shape \(n_groups=4, d\), got \(3, 2\)$"),
    ({"producer_weight": torch.full((4, 2), float("nan"))}, r"^producer_weight contains NaN or Inf")])
def test_direct_construction_names_the_bad_field(kwargs, match):
    args = dict(H=_H4, G=_H4 @ torch.ones(4, 1, dtype=torch.float64), W_dense=torch.ones(4, 1, dtype=torch.float64),
                group_size=1, k=2)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        LayerProblem(**args)


def test_direct_construction_casts_to_float64():
    H = _spd(4, 15)
    P = LayerProblem(H=H.float(), G=(H @ torch.ones(4, 1, dtype=torch.float64)).float(), W_dense=torch.ones(4, 1),
                     group_size=2, k=1, G_is_HW=True)
    assert P.H.dtype == P.G.dtype == P.W_dense.dtype == torch.float64
    torch.testing.assert_close(P.H, H.float().double())


def test_group_count_is_an_integer_and_rounding_level_asymmetry_is_accepted():
    from osscar.problem import check_group_size

    assert check_group_size(6, 2) == 3 and isinstance(check_group_size(6, 2), int)
    H = _spd(4, 16)
    H[0, 1] += 1e-12 * float(H.abs().max())  # float summation order, not a bug in the caller's H
    assert LayerProblem.from_calibration(H, torch.ones(4, 1, dtype=torch.float64), 1, 2).p == 4


def test_a_layer_with_no_features_is_a_valid_empty_problem():
    P = LayerProblem.from_calibration(torch.zeros(0, 0, dtype=torch.float64), torch.zeros(0, 3, dtype=torch.float64), 1, 0)
    assert P.n_groups == 0 and P.k == 0


@pytest.mark.parametrize(("scale", "rel_asym", "ok"), [(1e6, 1e-12, True), (1e-6, 1e-3, False)])
def test_symmetry_is_judged_relative_to_the_scale_of_H(scale, rel_asym, ok):
    H = _spd(4, 17)
    H = H * (scale / float(H.abs().max()))
    H[0, 1] += rel_asym * scale
    if ok:
        LayerProblem.from_calibration(H, torch.ones(4, 1, dtype=torch.float64), 1, 2)
    else:
        with pytest.raises(ValueError, match="H_raw must be symmetric"):
            LayerProblem.from_calibration(H, torch.ones(4, 1, dtype=torch.float64), 1, 2)


def test_from_calibration_leaves_its_inputs_alone():
    """Damping, symmetrising and pinning dead features work on copies: the caller's float64 H_raw,
    Ŵ and cross (the same tensors a sweep reuses for the next method) are unchanged."""
    H, C = _spd(4, 21), _spd(4, 22)
    H[2, :] = H[:, 2] = 0  # a dead feature: its row of W is zeroed in the problem only
    W = torch.randn(4, 3, generator=torch.Generator().manual_seed(23), dtype=torch.float64)
    before = (H.clone(), W.clone(), C.clone())
    for cross in (None, C):
        P = LayerProblem.from_calibration(H, W, 1, 2, damping=0.1, cross=cross)
        assert float(P.W_dense[2].abs().sum()) == 0 and float(P.H[2, 2]) > 0
    for t, b in zip((H, W, C), before):
        assert torch.equal(t, b)


def test_objective_counts_a_row_of_ones():
    """Rows are live when nonzero: a row whose entries are all 1 counts like any other."""
    H = _spd(3, 24)
    P = LayerProblem.from_calibration(H, torch.ones(3, 2, dtype=torch.float64), 1, 2, damping=0.0)
    W = torch.tensor([[1.0, 1.0], [0.0, 0.0], [2.0, -1.0]], dtype=torch.float64)
    expected = 0.5 * float((W * (P.H @ W)).sum()) - float((P.G * W).sum())
    assert P.objective(W) == pytest.approx(expected, rel=1e-12)


def test_calibration_error_names_a_wrong_shape_and_keeps_small_energies():
    H = _spd(4, 25) * 1e-6  # output energy far below 1: still a ratio, not NaN
    W = torch.randn(4, 2, generator=torch.Generator().manual_seed(26), dtype=torch.float64) * 1e-3
    P = LayerProblem.from_calibration(H, W, 1, 2, damping=0.0)
    err, rel = P.calibration_error(W * 0.5)
    assert rel == pytest.approx(0.25, rel=1e-9) and err > 0
    with pytest.raises(ValueError, match="W must have 4 rows"):
        P.calibration_error(torch.zeros(3, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="W must have 2 columns"):
        P.calibration_error(torch.zeros(4, 3, dtype=torch.float64))


def test_the_scale_of_the_symmetry_check_includes_the_first_row():
    """The largest entry of H is H[0, 0]: an asymmetry of 1e-3 is 1e-7 of that scale (accepted) though it
    is 1e-3 of every other row's."""
    H = torch.eye(8, dtype=torch.float64)
    H[0, 0] = 1e4
    H[5, 6] = 1e-3
    assert LayerProblem.from_calibration(H, torch.ones(8, 1, dtype=torch.float64), 1, 4).p == 8
    H[0, 0] = 1.0
    with pytest.raises(ValueError, match="H_raw must be symmetric"):
        LayerProblem.from_calibration(H, torch.ones(8, 1, dtype=torch.float64), 1, 4)
