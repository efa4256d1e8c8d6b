"""Stage B's add-back bookkeeping: the pruned-set inverse K = (F_JJ)⁻¹ and swap trials on it.

With F = H̄⁻¹ and W* = F G, the Schur-complement identity H_JJ − H_JS H_SS⁻¹ H_SJ = (F_JJ)⁻¹ puts
every add-back quantity of ``shared/spec/ALGORITHM.md`` §3 on K: the add-back Schur complement of
group j is K_jj and its residual G_j − H_jS W_S is (K W*_J)_j. A swap trial (take ``out`` out of S)
borders K; :class:`SwapTrial` keeps only what scoring needs (the diagonal blocks of the bordered
K on J and the bordered residuals) and builds the full bordered K only when the swap is accepted.
"""

from __future__ import annotations

import torch
from torch import Tensor

from osscar.blockmath import diag_blocks, quad_over_blocks, take_square
from osscar.groups import block_rows


def joint_gain(K_II: Tensor, R_I: Tensor) -> float:
    """½ tr(R_Iᵀ K_II⁻¹ R_I): the decrease of Q from adding a block I of J back. K_II: (b, b) SPD, R_I: (b, m)."""
    L = torch.linalg.cholesky(K_II)
    return float(0.5 * torch.linalg.solve_triangular(L, R_I, upper=False).square().sum())


class PrunedSetInverse:
    """``K = (F_JJ)⁻¹`` and ``R = K W*_J`` for the pruned groups J, with F = H⁻¹ and W* = F G.

    Moving groups between S and J is a rank-|block| update of K and R. ``groups`` is the working
    list of J (append order, not sorted). F: (p, p) and W*: (p, m) are shared between copies and
    never written.
    """

    def __init__(self, F: Tensor, Wstar: Tensor, s: int, groups: Tensor) -> None:
        self.F, self.Wstar, self.s = F, Wstar, s
        self.groups = groups.clone()
        rows = block_rows(groups, s)
        F_JJ = take_square(F, rows)
        self.K = torch.cholesky_inverse(torch.linalg.cholesky(F_JJ)) if len(rows) else F_JJ
        self.R = self.K @ Wstar[rows]
        self._excess = float(0.5 * (Wstar[rows] * self.R).sum())

    @classmethod
    def _from(cls, like: PrunedSetInverse, K: Tensor, R: Tensor, groups: Tensor, excess: float) -> PrunedSetInverse:
        new = object.__new__(cls)
        new.F, new.Wstar, new.s = like.F, like.Wstar, like.s
        new.K, new.R, new.groups, new._excess = K, R, groups, excess
        return new

    def copy(self) -> PrunedSetInverse:
        return PrunedSetInverse._from(self, self.K.clone(), self.R.clone(), self.groups.clone(), self._excess)

    def excess(self) -> float:
        """Q(S) − Q* = ½ tr(W*_Jᵀ K W*_J) = ½ ⟨W*_J, R⟩: the loss over the dense optimum Q*.

        Computed once at construction and then carried through each bordering (:meth:`SwapTrial.bordered`: + the
        joint removal cost of the new groups) and :meth:`shrink` (− their joint gain).
        """
        return self._excess

    def gains(self) -> Tensor:
        """(|J|,) gain ½ tr(R_jᵀ K_jj⁻¹ R_j) of adding each working pruned group back alone."""
        n = len(self.groups)
        return quad_over_blocks(diag_blocks(self.K, self.s), self.R.reshape(n, self.s, -1))

    def trial(self, groups: Tensor, E_gg: Tensor, W_g: Tensor) -> SwapTrial:
        """Score taking ``groups`` (kept) out of S, given the support's ``E_gg = (H_SS⁻¹)_gg: (b, b)``
        and ``W_g = (W_S)_g: (b, m)`` on their rows (by the same identity, the bordering's Schur
        complement and residual). Self unchanged."""
        return SwapTrial(self, groups, E_gg, W_g)

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
        self.K = take_square(self.K, idx).addmm_(Vk, Vk.T, alpha=-1.0)
        self.R = self.R.index_select(0, idx).addmm_(Vk, D, alpha=-1.0)
        self.groups = self.groups[keep.reshape(-1, self.s)[:, 0]]
        self._excess -= float(0.5 * D.square().sum())  # − their joint gain


class SwapTrial:
    """J ∪ g for a swap trial, kept lazily: with b = K F_Jg (|J|, |g|), C the block's Schur complement
    and y its residual given J, the bordered K restricted to J is K + b C⁻¹ bᵀ and the bordered
    residuals on J are R − b C⁻¹ y. Only their diagonal blocks and R − b C⁻¹ y are formed — O(|J|·|g|·m)
    plus one (|J|, |J|)·(|J|, |g|) product; the full bordered K waits for :meth:`commit`."""

    def __init__(self, base: PrunedSetInverse, groups: Tensor, C: Tensor, y: Tensor) -> None:
        self.base, self.groups = base, groups
        g_rows, j_rows = block_rows(groups, base.s), block_rows(base.groups, base.s)
        self.b = base.K @ base.F[j_rows[:, None], g_rows]  # (|J|, |g|)
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
        """The pruned-set inverse of J ∪ groups (the full bordered K)."""
        base, a, na = self.base, self.base.K.shape[0], self.C_inv.shape[0]
        K = base.K.new_empty((a + na, a + na))
        torch.addmm(base.K, self.bC, self.b.T, out=K[:a, :a])
        K[:a, a:] = -self.bC
        K[a:, :a] = -self.bC.T
        K[a:, a:] = self.C_inv
        R = torch.cat([self.R_J, self.z])
        return PrunedSetInverse._from(base, K, R, torch.cat([base.groups, self.groups]),
                                      base.excess() + self.removal_cost)

    def commit(self, back: Tensor) -> PrunedSetInverse:
        """The pruned-set inverse after the swap: ``groups`` out of S, ``back`` (in J) into S."""
        new = self.bordered()
        new.shrink(back)
        return new
