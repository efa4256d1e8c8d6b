"""osscar.blockmath's in-place compactions and gathers, and the pruned-set matrix built from H and E."""

import warnings

import pytest
import torch

from osscar.blockmath import (compact_rows_, compact_square_, gather_matmul, shrink_storage, symmetric_downdate_,
                              take_square)
from osscar.obs import SupportState
from osscar.pruned_set import schur_complement
from osscar.solver import gradual_removal


def _spd(a, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(a + 5, a, generator=g, dtype=torch.float64)
    return X.T @ X + 0.1 * torch.eye(a, dtype=torch.float64)


def _increasing(a, b, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(a, generator=g)[:b].sort().values


@pytest.mark.parametrize("chunk", [1, 3, 64])
@pytest.mark.parametrize("b", [1, 7, 20])
def test_compact_square_in_place_equals_the_gather(chunk, b):
    A = torch.randn(23, 23, dtype=torch.float64, generator=torch.Generator().manual_seed(b))
    idx = _increasing(23, b, seed=chunk)
    expected = A[idx][:, idx].clone()
    ptr = A.data_ptr()
    out = compact_square_(A, idx, chunk=chunk)
    assert torch.equal(out, expected) and out.is_contiguous() and out.data_ptr() == ptr


def test_compact_square_of_a_column_major_matrix_is_a_new_gather():
    A = torch.randn(9, 9, dtype=torch.float64).T  # not contiguous
    idx = torch.tensor([0, 4, 5, 8])
    out = compact_square_(A, idx)
    assert torch.equal(out, A[idx][:, idx]) and out.data_ptr() != A.data_ptr()


@pytest.mark.parametrize("chunk", [1, 2, 64])
def test_compact_rows_in_place_equals_the_gather(chunk):
    A = torch.randn(11, 4, dtype=torch.float64)
    idx = torch.tensor([1, 2, 6, 9, 10])
    expected = A[idx].clone()
    out = compact_rows_(A, idx, chunk=chunk)
    assert torch.equal(out, expected) and out.data_ptr() == A.data_ptr()


def test_shrink_storage_copies_only_a_tensor_whose_storage_is_factor_times_too_large():
    A = torch.randn(8, 8, dtype=torch.float64)
    assert shrink_storage(A) is A
    small = compact_square_(A, torch.tensor([0, 3, 5, 7]))  # 16 of 64 elements: 4x
    out = shrink_storage(small)
    assert out is not small and torch.equal(out, small) and out.untyped_storage().nbytes() == 16 * 8
    rows = compact_rows_(torch.randn(8, 3, dtype=torch.float64), torch.tensor([0, 1, 2, 5, 6]))  # 5 of 8 rows
    assert shrink_storage(rows, factor=2) is rows
    assert shrink_storage(rows[:4], factor=2) is not rows[:4]


@pytest.mark.parametrize("chunk", [2, 512])
def test_take_square_with_columns_and_chunks(chunk):
    A = torch.randn(10, 10, dtype=torch.float64)
    rows, cols = torch.tensor([9, 0, 3, 4, 7]), torch.tensor([1, 2, 8])
    assert torch.equal(take_square(A, rows, cols, chunk=chunk), A[rows][:, cols])
    assert torch.equal(take_square(A, rows, chunk=chunk), A[rows][:, rows])


def test_gather_matmul_equals_gather_then_product():
    A, B = torch.randn(12, 12, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    rows, cols = torch.tensor([0, 5, 6, 7, 11]), torch.tensor([1, 2, 3, 9])
    torch.testing.assert_close(gather_matmul(A, rows, cols, B, chunk=2), A[rows][:, cols] @ B, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("a,r", [(40, 5), (600, 40)])  # one addmm_, and the blocked lower triangle + mirror
def test_symmetric_downdate_with_two_factors(a, r):
    """E − U Vᵀ with U = V M, M symmetric (so the result is symmetric): the lower triangle, mirrored."""
    g = torch.Generator().manual_seed(a)
    E = _spd(a, seed=a)
    V = torch.randn(a, r, generator=g, dtype=torch.float64)
    M = _spd(r, seed=r) * 1e-3
    U = V @ M
    expected = E - U @ V.T
    out = symmetric_downdate_(E.clone(), U, V)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-10)
    if a >= 512:  # the blocked path computes the lower blocks and mirrors them exactly
        assert torch.equal(out[:150, 150:], out[150:, :150].T)


def test_schur_complement_is_the_inverse_of_the_pruned_block_of_the_inverse():
    """K = H_JJ − H_JS E H_SJ = ((H⁻¹)_JJ)⁻¹ and R = K (H⁻¹G)_J."""
    p, m = 30, 4
    H = _spd(p, seed=3)
    G = torch.randn(p, m, dtype=torch.float64)
    S, J = _increasing(p, 18, seed=1), None
    J = torch.tensor([i for i in range(p) if i not in set(S.tolist())])
    E = torch.linalg.inv(H[S][:, S])
    K, R = schur_complement(H, G, E, E @ G[S], J, S)
    F = torch.linalg.inv(H)
    torch.testing.assert_close(K, torch.linalg.inv(F[J][:, J]), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(R, K @ (F @ G)[J], rtol=1e-9, atol=1e-9)


def test_stage_b_holds_no_full_inverse(make_problem):
    """After Stage A and the pruned-set build, no tensor of the state (or its pruned set) has a
    storage of p×p: E (and its storage) is |S|², K is |J|²."""
    P = make_problem(3, 64, 1, 16)
    st = SupportState(P, deferred=True, track_pruned=True)
    gradual_removal(st, 16, p_hat=4)
    st.track_pruned()
    tensors = [v for obj in (st, st.pruned) for v in vars(obj).values() if isinstance(v, torch.Tensor)]
    biggest = max(t.untyped_storage().nbytes() for t in tensors if t.data_ptr() != P.W_dense.data_ptr())
    assert biggest <= 48 * 48 * 8  # |J|² = 48², E: 16², W: (16, m)


def test_take_refuses_a_state_of_another_problem(make_problem):
    a, b = SupportState(make_problem(0, 6, 1, 3)), SupportState(make_problem(1, 6, 1, 3))
    with pytest.raises(ValueError, match=r"^take\(\): the other state must belong to the same problem$"):
        a.take(b)


def test_gather_matmul_writes_each_chunk_into_its_own_rows():
    """Every chunk's product lands in its slice of the output (no deprecated resize of a wrong-sized
    ``out``: warnings are errors here)."""
    A, B = torch.randn(12, 12, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    rows, cols = torch.tensor([0, 5, 6, 7, 11]), torch.tensor([1, 2, 3, 9])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = gather_matmul(A, rows, cols, B, chunk=2)
    torch.testing.assert_close(out, A[rows][:, cols] @ B, rtol=1e-14, atol=1e-14)


def test_compact_square_of_every_row_is_the_matrix_itself():
    A = _spd(6)
    assert compact_square_(A, torch.arange(6)) is A
