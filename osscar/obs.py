"""Block OBS linear algebra on a support of groups (float64).

Notation (see ``shared/spec/ALGORITHM.md`` §3): ``S`` is the set of kept groups, ``E = H̄_SS⁻¹``
the inverse restricted to the support and ``W_S = E G_S`` the least-squares optimal weights on
it. Removing a block ``R ⊆ S`` and adding a block ``A ∉ S`` are both rank-|block| updates of
``E`` and ``W``; :class:`SupportState` keeps them current so that no p×p inverse is recomputed.

Pure helpers take ``s`` (group size) and work on contiguous groups of rows.
"""

from __future__ import annotations

import torch
from torch import Tensor

from osscar.problem import LayerProblem


def diag_blocks(E: Tensor, s: int) -> Tensor:
    """Diagonal s×s blocks of ``E: (n·s, n·s)`` as ``(n, s, s)`` (a view when possible)."""
    n = E.shape[0] // s
    return E.reshape(n, s, n, s).diagonal(dim1=0, dim2=2).permute(2, 0, 1)


def quad_over_blocks(B: Tensor, R: Tensor) -> Tensor:
    """½ tr(R_gᵀ B_g⁻¹ R_g) = ½ ⟨B_g⁻¹, R_g R_gᵀ⟩ per group. B: (n, s, s) SPD, R: (n, s, m) -> (n,).

    One pass over R and no (n, s, m) temporaries: R may be a large view of the weights.
    """
    if B.shape[-1] == 1:
        return 0.5 * torch.linalg.vector_norm(R.reshape(R.shape[0], -1), dim=1).square() / B[:, 0, 0]
    gram = torch.bmm(R, R.transpose(1, 2))  # (n, s, s)
    return 0.5 * (torch.cholesky_inverse(torch.linalg.cholesky(B)) * gram).sum(dim=(1, 2))


def removal_costs(E: Tensor, W: Tensor, s: int) -> Tensor:
    """OBS cost ΔQ_g = ½ tr(W_gᵀ [(E)_gg]⁻¹ W_g) of removing each group alone.

    E: (n·s, n·s) inverse on the groups' rows, W: (n·s, m) -> (n,).
    """
    n = E.shape[0] // s
    return quad_over_blocks(diag_blocks(E, s), W.reshape(n, s, -1))


def obs_remove(E: Tensor, W: Tensor, rows: Tensor) -> None:
    """Remove feature ``rows`` in place: the block OBS weight update and inverse downdate.

    W ← W − E[:, R] E_RR⁻¹ W_R,  E ← E − E[:, R] E_RR⁻¹ E[R, :]; rows R are then set to zero.
    E: (a, a), W: (a, m), rows: (r,) long positions into them.
    """
    L = torch.linalg.cholesky(E[rows][:, rows])
    V = torch.linalg.solve_triangular(L, E[rows], upper=False).T  # (a, r) = E[:, R] L⁻ᵀ
    D = torch.linalg.solve_triangular(L, W[rows], upper=False)  # (r, m) = L⁻¹ W_R
    W.addmm_(V, D, alpha=-1.0)
    E.addmm_(V, V.T, alpha=-1.0)
    # In exact arithmetic rows and columns R are now zero. Zero the (contiguous) rows; the columns
    # hold rounding residue only and are dropped at the next compaction — zeroing them here would
    # cost one more strided sweep over E.
    W[rows] = 0
    E[rows] = 0


def refit(problem: LayerProblem, kept: Tensor) -> Tensor:
    """Least-squares weights on the support ``kept`` (groups): W_S = H_SS⁻¹ G_S, 0 elsewhere.

    Returns (p, m) float64.
    """
    W = torch.zeros_like(problem.G)
    if len(kept) == 0:
        return W
    rows = problem.rows_of(kept)
    L = torch.linalg.cholesky(problem.H[rows][:, rows])
    W[rows] = torch.cholesky_solve(problem.G[rows], L)
    return W


class SupportState:
    """The support S, ``E = H_SS⁻¹`` and the optimal ``W_S`` kept current under block updates.

    The matrices live on a working list of groups (``self.groups``); removed groups stay there
    as zero rows until :meth:`compact` drops them, so a removal never copies the p×p matrix.
    """

    def __init__(self, problem: LayerProblem, support: Tensor | None = None) -> None:
        self.problem = problem
        self.s = problem.group_size
        n = problem.n_groups
        groups = torch.arange(n) if support is None else torch.as_tensor(support, dtype=torch.long).sort().values
        self.groups = groups
        self.kept = torch.zeros(n, dtype=torch.bool)
        self.kept[groups] = True
        rows = problem.rows_of(groups)
        H_SS = problem.H[rows][:, rows]
        self.E = torch.cholesky_inverse(torch.linalg.cholesky(H_SS)) if len(rows) else H_SS.clone()
        if support is None and problem.G_is_HW:
            self.W = problem.W_dense.clone()  # H⁻¹(H Ŵ) = Ŵ exactly
        else:
            self.W = self.E @ problem.G[rows]

    # -- views -----------------------------------------------------------------------------
    @property
    def live(self) -> Tensor:
        """(len(groups),) bool: which working groups are still in S."""
        return self.kept[self.groups]

    def copy(self) -> SupportState:
        new = object.__new__(SupportState)
        new.problem, new.s = self.problem, self.s
        new.groups, new.kept = self.groups.clone(), self.kept.clone()
        new.E, new.W = self.E.clone(), self.W.clone()
        return new

    def weights(self) -> Tensor:
        """(p, m) float64 weights, zero outside S."""
        W = torch.zeros_like(self.problem.G)
        live = self.live
        W[self.problem.rows_of(self.groups[live])] = self.W.reshape(len(self.groups), self.s, -1)[live].reshape(-1, W.shape[1])
        return W

    def objective(self) -> float:
        """Q at the least-squares optimum on S: −½ tr(G_Sᵀ W_S) (removed working rows are zero)."""
        return float(-0.5 * (self.problem.G[self.problem.rows_of(self.groups)] * self.W).sum())

    # -- costs and gains ---------------------------------------------------------------------
    def costs(self) -> Tensor:
        """(n_groups,) OBS removal cost of each kept group alone; +inf for pruned groups."""
        out = torch.full((self.problem.n_groups,), float("inf"), dtype=torch.float64)
        live = self.live
        if live.any():
            a = len(self.groups)
            B = diag_blocks(self.E, self.s).clone()
            B[~live] = torch.eye(self.s, dtype=B.dtype)  # removed groups: zero blocks, masked below
            cost = quad_over_blocks(B, self.W.reshape(a, self.s, -1))
            out[self.groups[live]] = cost[live]
        return out

    def gains(self) -> Tensor:
        """(n_groups,) decrease of Q from adding each pruned group alone back; −inf for kept ones.

        gain_j = ½ tr(r_jᵀ C_j⁻¹ r_j), r_j = G_j − H_jS W_S, C_j = H_jj − H_jS E H_Sj.
        """
        self.compact()
        P = self.problem
        out = torch.full((P.n_groups,), float("-inf"), dtype=torch.float64)
        J = torch.nonzero(~self.kept).flatten()
        if len(J) == 0:
            return out
        jrows, srows = P.rows_of(J), P.rows_of(self.groups)
        H_JS = P.H[jrows][:, srows]
        r = P.G[jrows] - H_JS @ self.W
        T = H_JS @ self.E
        n, s = len(J), self.s
        C = diag_blocks(P.H[jrows][:, jrows], s) - torch.bmm(T.reshape(n, s, -1), H_JS.reshape(n, s, -1).transpose(1, 2))
        out[J] = quad_over_blocks(C, r.reshape(n, s, -1))
        return out

    # -- updates -----------------------------------------------------------------------------
    def _positions(self, working_idx: Tensor) -> Tensor:
        offs = torch.arange(self.s)
        return (working_idx[:, None] * self.s + offs[None, :]).reshape(-1)

    def remove(self, groups: Tensor) -> None:
        """Drop ``groups`` (all in S) from the support with one block update."""
        groups = torch.as_tensor(groups, dtype=torch.long)
        if len(groups) == 0:
            return
        if not self.kept[groups].all():
            raise ValueError("remove(): every group must currently be kept")
        lookup = torch.full((self.problem.n_groups,), -1, dtype=torch.long)
        lookup[self.groups] = torch.arange(len(self.groups))
        obs_remove(self.E, self.W, self._positions(lookup[groups]))
        self.kept[groups] = False
        dead = int((~self.live).sum())
        if dead * 4 > len(self.groups):
            self.compact()

    def compact(self) -> None:
        """Drop removed groups from the working matrices (one copy of E)."""
        live = self.live
        if live.all():
            return
        pos = self._positions(torch.nonzero(live).flatten())
        self.E = self.E[pos][:, pos].contiguous()
        self.W = self.W[pos].contiguous()
        self.groups = self.groups[live]

    def add(self, groups: Tensor) -> None:
        """Add pruned ``groups`` back to S; E and W_S follow by a Schur-complement update."""
        groups = torch.as_tensor(groups, dtype=torch.long).sort().values
        if len(groups) == 0:
            return
        if self.kept[groups].any():
            raise ValueError("add(): every group must currently be pruned")
        self.compact()
        P = self.problem
        arows, srows = P.rows_of(groups), P.rows_of(self.groups)
        H_SA = P.H[srows][:, arows]
        B = self.E @ H_SA  # (|S|, |A|)
        C = P.H[arows][:, arows] - H_SA.T @ B
        L = torch.linalg.cholesky(C)
        r = P.G[arows] - H_SA.T @ self.W
        W_A = torch.cholesky_solve(r, L)
        Cinv = torch.cholesky_inverse(L)
        BC = B @ Cinv
        a, na = self.E.shape[0], len(arows)
        E = torch.empty((a + na, a + na), dtype=self.E.dtype)
        E[:a, :a] = self.E + BC @ B.T
        E[:a, a:] = -BC
        E[a:, :a] = -BC.T
        E[a:, a:] = Cinv
        W = torch.cat([self.W - B @ W_A, W_A])
        groups_all = torch.cat([self.groups, groups])
        order = torch.argsort(groups_all)
        pos = self._positions(order)
        self.E = E[pos][:, pos].contiguous()
        self.W = W[pos].contiguous()
        self.groups = groups_all[order]
        self.kept[groups] = True
