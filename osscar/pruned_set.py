"""Stage B's add-back bookkeeping: the pruned-set matrix K and swap trials on it.

For a support S with inverse E = H_SS⁻¹ and weights W_S, the pruned groups J carry
K = H_JJ − H_JS E H_SJ (the Schur complement of H_SS in H; equal to ((H⁻¹)_JJ)⁻¹) and the residuals
R = G_J − H_JS W_S. Every add-back quantity of ``docs/algorithm.md`` §3 sits on them: the
add-back Schur complement of group j is K_jj and its residual R_j. No full p×p inverse is needed:
K is built from H and E once, then kept current by borderings (groups leave S) and downdates
(groups rejoin S). A swap trial (take ``out`` out of S) borders K; :class:`SwapTrial` keeps only what
scoring needs (the diagonal blocks of the bordered K on J and the bordered residuals) and builds
the full bordered K only when the swap is accepted.
"""

from __future__ import annotations

import torch
from torch import Tensor

from osscar.blockmath import compact_rows_, compact_square_, diag_blocks, quad_over_blocks, symmetric_downdate_, take_square
from osscar.groups import block_rows


def joint_gain(K_II: Tensor, R_I: Tensor) -> float:
    """½ tr(R_Iᵀ K_II⁻¹ R_I): the decrease of Q from adding a block I of J back. K_II: (b, b) SPD, R_I: (b, m)."""
    L = torch.linalg.cholesky(K_II)
    return float(0.5 * torch.linalg.solve_triangular(L, R_I, upper=False).square().sum())


def schur_complement(H: Tensor, G: Tensor, E: Tensor, W_S: Tensor, jrows: Tensor, srows: Tensor) -> tuple[Tensor, Tensor]:
    """``K = H_JJ − H_JS E H_SJ: (|J|, |J|)`` and ``R = G_J − H_JS W_S: (|J|, m)``.

    H: (p, p), G: (p, m); E: (|S|, |S|) = H_SS⁻¹ and W_S: (|S|, m) on the rows ``srows``; jrows: the
    rows of J. Works through (|J|, |S|) products only: H_JS E once, then the symmetric product.
    """
    H_JS = take_square(H, jrows, srows)
    T = H_JS @ E  # (|J|, |S|)
    K = take_square(H, jrows)
    symmetric_downdate_(K, T, H_JS)
    del T
    R = torch.addmm(G[jrows], H_JS, W_S, alpha=-1.0)
    return K, R


class PrunedSetInverse:
    """``K = H_JJ − H_JS H_SS⁻¹ H_SJ`` and ``R = G_J − H_JS W_S`` for the pruned groups J.

    Moving groups between S and J is a rank-|block| update of K and R. ``groups`` is the working
    list of J (append order, not sorted). K: (|J|·s, |J|·s), R: (|J|·s, m).
    """

    def __init__(self, K: Tensor, R: Tensor, s: int, groups: Tensor) -> None:
        self.K, self.R, self.s, self.groups = K, R, s, groups

    @classmethod
    def from_support(cls, H: Tensor, G: Tensor, E: Tensor, W_S: Tensor, srows: Tensor, s: int,
                     groups: Tensor) -> PrunedSetInverse:
        """The pruned set ``groups`` of a support whose E and W_S live on the rows ``srows``."""
        K, R = schur_complement(H, G, E, W_S, block_rows(groups, s), srows)
        return cls(K, R, s, groups.clone())

    def copy(self) -> PrunedSetInverse:
        return PrunedSetInverse(self.K.clone(), self.R.clone(), self.s, self.groups.clone())

    def excess(self) -> float:
        """Q(S) − Q* = ½ tr(Rᵀ K⁻¹ R): the loss over the dense optimum Q* (with W* = H⁻¹G, R = K W*_J)."""
        if len(self.groups) == 0:
            return 0.0
        return joint_gain(self.K, self.R)

    def gains(self) -> Tensor:
        """(|J|,) gain ½ tr(R_jᵀ K_jj⁻¹ R_j) of adding each working pruned group back alone."""
        n = len(self.groups)
        return quad_over_blocks(diag_blocks(self.K, self.s), self.R.reshape(n, self.s, -1))

    def trial(self, groups: Tensor, E_gg: Tensor, W_g: Tensor, b: Tensor) -> SwapTrial:
        """Score taking ``groups`` (kept) out of S, given the support's ``E_gg = (H_SS⁻¹)_gg: (b, b)``,
        ``W_g = (W_S)_g: (b, m)`` on their rows (the bordering's Schur complement and residual) and
        ``b = −H_JS (H_SS⁻¹)_Sg: (|J|·s, b)`` (the bordering column K (H⁻¹)_Jg). Self unchanged."""
        return SwapTrial(self, groups, E_gg, W_g, b)

    def _positions(self, groups: Tensor) -> Tensor:
        lookup = {int(g): i for i, g in enumerate(self.groups.tolist())}
        return block_rows(torch.tensor([lookup[int(g)] for g in groups.tolist()], dtype=torch.long,
                                       device=self.K.device), self.s)

    def joint_gain(self, groups: Tensor) -> float:
        """Decrease of Q from adding ``groups`` (all in J) back together: ½ tr(R_Iᵀ K_II⁻¹ R_I)."""
        pos = self._positions(groups)
        return joint_gain(self.K[pos[:, None], pos], self.R[pos])

    def shrink(self, groups: Tensor) -> None:
        """Groups leave J and rejoin S: OBS downdate of K and R, then drop their rows."""
        pos = self._positions(groups)
        L = torch.linalg.cholesky(self.K[pos][:, pos])
        V = torch.linalg.solve_triangular(L, self.K[pos], upper=False).T  # (|J|, |g|)
        keep = torch.ones(self.K.shape[0], dtype=torch.bool, device=self.K.device)
        keep[pos] = False
        idx = torch.nonzero(keep).flatten()
        D = torch.linalg.solve_triangular(L, self.R[pos], upper=False)
        Vk = V[idx]
        del V
        self.K = compact_square_(self.K, idx).addmm_(Vk, Vk.T, alpha=-1.0)  # in place: K is never shared
        self.R = compact_rows_(self.R, idx).addmm_(Vk, D, alpha=-1.0)
        self.groups = self.groups[keep.reshape(-1, self.s)[:, 0]]


class SwapTrial:
    """J ∪ g for a swap trial, kept lazily: with b = K (H⁻¹)_Jg (|J|, |g|), C the block's Schur complement
    and y its residual given J, the bordered K restricted to J is K + b C⁻¹ bᵀ and the bordered
    residuals on J are R − b C⁻¹ y. Only their diagonal blocks and R − b C⁻¹ y are formed — O(|J|·|g|·m);
    the full bordered K waits for :meth:`commit`."""

    def __init__(self, base: PrunedSetInverse, groups: Tensor, C: Tensor, y: Tensor, b: Tensor) -> None:
        self.base, self.groups, self.b = base, groups, b
        L = torch.linalg.cholesky(C)
        self.z = torch.cholesky_solve(y, L)  # (|g|, m) = C⁻¹ y
        self.C_inv = torch.cholesky_inverse(L)
        self.bC = self.b @ self.C_inv
        self.R_J = torch.addmm(base.R, self.b, self.z, alpha=-1.0)  # bordered residuals on J
        self.removal_cost = float(0.5 * (y * self.z).sum())  # joint cost ½ tr(yᵀ C⁻¹ y) of taking g out

    def gains(self) -> Tensor:
        """(|J|,) gain of adding each group of J back alone once ``groups`` are out (order: base.groups)."""
        s, n = self.base.s, len(self.base.groups)
        bC, b = self.bC.reshape(n, s, -1), self.b.reshape(n, s, -1)
        B = diag_blocks(self.base.K, s) + torch.bmm(bC, b.transpose(1, 2))
        return quad_over_blocks(B, self.R_J.reshape(n, s, -1))

    def joint_gain(self, groups: Tensor) -> float:
        """Decrease of Q from adding ``groups`` (all in J) back together once ``self.groups`` are out."""
        pos = self.base._positions(groups)
        return joint_gain(self.base.K[pos[:, None], pos] + self.bC[pos] @ self.b[pos].T, self.R_J[pos])

    def bordered(self) -> PrunedSetInverse:
        """The pruned-set matrices of J ∪ groups (the full bordered K)."""
        base, a, na = self.base, self.base.K.shape[0], self.C_inv.shape[0]
        K = base.K.new_empty((a + na, a + na))
        torch.addmm(base.K, self.bC, self.b.T, out=K[:a, :a])
        K[:a, a:] = -self.bC
        K[a:, :a] = -self.bC.T
        K[a:, a:] = self.C_inv
        R = torch.cat([self.R_J, self.z])
        return PrunedSetInverse(K, R, base.s, torch.cat([base.groups, self.groups]))

    def commit(self, back: Tensor) -> PrunedSetInverse:
        """The pruned-set matrices after the swap: ``groups`` out of S, ``back`` (in J) into S.

        Ends the trial: its base is released once bordered (drop other references to the base
        first, and its K is freed before the downdate)."""
        new = self.bordered()
        self.base = self.b = self.bC = self.R_J = None
        new.shrink(back)
        return new
