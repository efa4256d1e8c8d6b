"""Block OBS linear algebra on a support of groups (float64).

Notation (see ``shared/spec/ALGORITHM.md`` §3): ``S`` is the set of kept groups, ``E = H̄_SS⁻¹``
the inverse restricted to the support and ``W_S = E G_S`` the least-squares optimal weights on
it. Removing a block ``R ⊆ S`` and adding a block ``A ∉ S`` are both rank-|block| updates of
``E`` and ``W``; :class:`SupportState` keeps them current so that no p×p inverse is recomputed.

Two devices make OSSCAR's stages cheap (both exact, checked against direct recomputation in
``tests/test_obs_updates.py``):

* deferred downdates (``SupportState(deferred=True)``): Stage A keeps E = E₀ − U Uᵀ and applies
  the pending factors as one blocked symmetric GEMM on the live rows every ~a/8 removed rows;
* the pruned-set inverse (:class:`osscar.pruned_set.PrunedSetInverse`): with F = H̄⁻¹, the add-back Schur
  complements are the diagonal blocks of K = (F_JJ)⁻¹ and the residuals are K W*_J, so Stage B
  scores every pruned group in O(|J|·m) and evaluates a swap without touching E or W.

Pure helpers take ``s`` (group size) and work on contiguous groups of rows.
"""

from __future__ import annotations

import torch
from torch import Tensor

from osscar.blockmath import diag_blocks, pending_blocks, quad_over_blocks, symmetric_downdate_, take_square
from osscar.groups import block_rows
from osscar.pruned_set import PrunedSetInverse
from osscar.problem import LayerProblem


def refit(problem: LayerProblem, kept: Tensor) -> Tensor:
    """Least-squares weights on the support ``kept`` (groups): W_S = H_SS⁻¹ G_S, 0 elsewhere.

    Returns (p, m) float64.
    """
    W = torch.zeros_like(problem.G)
    if len(kept) == 0:
        return W
    rows = problem.rows_of(torch.as_tensor(kept, dtype=torch.long, device=W.device))
    L = torch.linalg.cholesky(problem.H[rows[:, None], rows])
    W[rows] = torch.cholesky_solve(problem.G[rows], L)
    return W


class SupportState:
    """The support S, ``E = H_SS⁻¹`` and the optimal ``W_S`` kept current under block updates.

    The matrices live on a working list of groups (``self.groups``, not necessarily sorted);
    removed groups stay there as zero rows until a compaction drops them, so a removal never
    copies the p×p matrix.

    Args:
        problem: the layer problem.
        support: initial kept groups (default: all).
        deferred: keep inverse downdates as pending low-rank factors, E = E₀ − U Uᵀ (U: (a, r)),
            and apply them in one matrix product (on the live rows) once r reaches
            ``max(64, a/8)`` columns. A rank-b removal then reads b rows of E₀ and U instead of
            rewriting the a×a inverse, and the O(a²) work runs as a large GEMM; the weights
            (a×m) are still updated at once, which measured faster than deferring them too
            (an (a, m)·(m, b) product with small b runs near GEMV speed). False: every removal
            downdates the whole inverse (ZipLM's published scheme). Blocks wider than half the
            capacity (e.g. attention heads) are always applied at once.
        track_pruned: also keep a :class:`PrunedSetInverse` for the pruned groups (built by
            :meth:`track_pruned`, then bordered on every removal), so that Stage-B gains are
            O(|J|·m) instead of O(|J|·|S|²).
            Keeps the full p×p inverse alive.
    """

    def __init__(self, problem: LayerProblem, support: Tensor | None = None, *,
                 deferred: bool = False, track_pruned: bool = False) -> None:
        self.problem = problem
        self.s = problem.group_size
        n, dev = problem.n_groups, problem.device
        groups = (torch.arange(n, device=dev) if support is None
                  else torch.as_tensor(support, dtype=torch.long, device=dev).sort().values)
        self.groups = groups
        self.kept = torch.zeros(n, dtype=torch.bool, device=dev)
        self.kept[groups] = True
        rows = problem.rows_of(groups)
        H_SS = problem.H if support is None else problem.H[rows[:, None], rows]
        self._E = torch.cholesky_inverse(torch.linalg.cholesky(H_SS)) if len(rows) else H_SS.clone()
        if support is None and problem.G_is_HW:
            self._W = problem.W_dense  # H⁻¹(H Ŵ) = Ŵ exactly; shared until the first write
        else:
            self._W = self._E @ problem.G[rows]
        self._owned = {"E": True, "W": self._W is not problem.W_dense}
        self.deferred = deferred
        self._F: Tensor | None = None
        self._Wstar: Tensor | None = None
        if track_pruned:
            if support is None:
                self._F, self._Wstar = self._E, self._W
                self._owned = {"E": False, "W": False}
            else:
                self._F = torch.cholesky_inverse(torch.linalg.cholesky(problem.H))
                self._Wstar = self._F @ problem.G
        self.pruned: PrunedSetInverse | None = None
        self._reset_pending()

    def _reset_pending(self) -> None:
        a = self._E.shape[0]
        self._U_buf = self._E.new_empty((a, self._capacity()))  # pending factors: E = E₀ − U Uᵀ
        self._r = 0  # U = _U_buf[:, :_r]
        self._U_blocks = self._E.new_zeros((len(self.groups), self.s, self.s))  # diag blocks of U Uᵀ

    @property
    def _U(self) -> Tensor:
        return self._U_buf[:, :self._r]

    def _writable(self, name: str) -> Tensor:
        """``_E`` or ``_W`` for an in-place update, copied first if it is shared."""
        attr = "_" + name
        if not self._owned[name]:
            setattr(self, attr, getattr(self, attr).clone())
            self._owned[name] = True
        return getattr(self, attr)

    # -- views -----------------------------------------------------------------------------
    @property
    def live(self) -> Tensor:
        """(len(groups),) bool: which working groups are still in S."""
        return self.kept[self.groups]

    @property
    def E(self) -> Tensor:
        """(a, a) H_SS⁻¹ on the working groups, pending updates applied; removed rows zero."""
        self._flush(compact=False)
        return self._E

    @property
    def W(self) -> Tensor:
        """(a, m) W_S on the working groups; removed rows zero."""
        return self._W

    def copy(self, with_pruned: bool = True) -> SupportState:
        """An independent copy (the problem, F and W* are shared, read-only); ``with_pruned=False``
        leaves the pruned-set inverse out (the copy then tracks none until one is assigned)."""
        self._flush(compact=False)
        new = object.__new__(SupportState)
        new.__dict__.update(self.__dict__)  # problem, s, deferred, F and W* are shared and read-only
        new.groups, new.kept = self.groups.clone(), self.kept.clone()
        new._E, new._W, new._owned = self._E.clone(), self._W.clone(), {"E": True, "W": True}
        new._U_buf, new._U_blocks = self._U_buf.clone(), self._U_blocks.clone()
        new.pruned = self.pruned.copy() if with_pruned and self.pruned is not None else None
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

    def track_pruned(self) -> bool:
        """Build the pruned-set inverse now if this state keeps one (call before copying states
        that will ask for gains). Returns whether it is kept."""
        if self._F is None:
            return False
        if self.pruned is None:
            self.pruned = PrunedSetInverse(self._F, self._Wstar, self.s, torch.nonzero(~self.kept).flatten())
        return True

    # -- costs and gains ---------------------------------------------------------------------
    def costs(self) -> Tensor:
        """(n_groups,) OBS removal cost of each kept group alone; +inf for pruned groups."""
        out = torch.full((self.problem.n_groups,), float("inf"), dtype=torch.float64, device=self._E.device)
        live = self.live
        if live.any():
            a = len(self.groups)
            B = diag_blocks(self._E, self.s) - self._U_blocks
            B[~live] = torch.eye(self.s, dtype=B.dtype, device=B.device)  # removed groups: zero blocks, masked below
            cost = quad_over_blocks(B, self._W.reshape(a, self.s, -1))
            out[self.groups[live]] = cost[live]
        return out

    def gains(self) -> Tensor:
        """(n_groups,) decrease of Q from adding each pruned group alone back; −inf for kept ones.

        gain_j = ½ tr(r_jᵀ C_j⁻¹ r_j), r_j = G_j − H_jS W_S, C_j = H_jj − H_jS E H_Sj.
        """
        P = self.problem
        out = torch.full((P.n_groups,), float("-inf"), dtype=torch.float64, device=P.device)
        J = torch.nonzero(~self.kept).flatten()
        if len(J) == 0:
            return out
        if self.track_pruned():
            out[self.pruned.groups] = self.pruned.gains()
            return out
        self._flush(compact=True)
        jrows, srows = P.rows_of(J), P.rows_of(self.groups)
        H_JS = P.H[jrows[:, None], srows]
        r = P.G[jrows] - H_JS @ self._W
        T = H_JS @ self._E
        n, s = len(J), self.s
        C = diag_blocks(P.H[jrows[:, None], jrows], s) - torch.bmm(T.reshape(n, s, -1), H_JS.reshape(n, s, -1).transpose(1, 2))
        out[J] = quad_over_blocks(C, r.reshape(n, s, -1))
        return out

    def support_block(self, groups: Tensor) -> tuple[Tensor, Tensor]:
        """``(E_gg, W_g)`` on the rows of ``groups`` (all in S): E_gg (b, b) with pending downdates
        applied, W_g (b, m); copies."""
        rows = block_rows(self._working(torch.as_tensor(groups, dtype=torch.long, device=self.kept.device)), self.s)
        E_gg = self._E[rows[:, None], rows]
        if self._r:
            U_g = self._U[rows]
            E_gg.addmm_(U_g, U_g.T, alpha=-1.0)
        return E_gg, self._W[rows]

    # -- updates -----------------------------------------------------------------------------
    def _working(self, groups: Tensor) -> Tensor:
        lookup = torch.full((self.problem.n_groups,), -1, dtype=torch.long, device=self.groups.device)
        lookup[self.groups] = torch.arange(len(self.groups), device=self.groups.device)
        return lookup[groups]

    def _capacity(self) -> int:
        return max(64, self._E.shape[0] // 8) if self.deferred else 0

    def remove(self, groups: Tensor) -> None:
        """Drop ``groups`` (all in S) from the support with one block update.

        OBS (§3): W ← W − E[:, R] E_RR⁻¹ W_R and E ← E − E[:, R] E_RR⁻¹ E[R, :], written with
        L = chol(E_RR), V = E[:, R] L⁻ᵀ and D = L⁻¹ W_R as W ← W − V D, E ← E − V Vᵀ.
        """
        groups = torch.as_tensor(groups, dtype=torch.long, device=self.kept.device)
        if len(groups) == 0:
            return
        if not self.kept[groups].all():
            raise ValueError("remove(): every group must currently be kept")
        s = self.s
        n_rows = len(groups) * s
        eager = n_rows > self._capacity() // 2
        if eager:
            self._flush(compact=None)
        elif self._r + n_rows > self._capacity():
            self._flush(compact=True)  # the product then runs on live rows only
        rows = block_rows(self._working(groups), s)
        dead_rows = block_rows(torch.nonzero(~self.live).flatten(), s)
        E_R = self._E[rows]  # (b, a) = E[:, R]ᵀ; rows are contiguous
        if self._r:
            E_R.addmm_(self._U[rows], self._U.T, alpha=-1.0)
        E_R[:, dead_rows] = 0  # removed features: zero in exact arithmetic
        if self.pruned is not None:  # J ∪ groups, bordered with this support's block and weights
            # (built once by track_pruned(): growing it through Stage A measured 1.5× slower on
            # FFN shapes, where p̂ = 10 makes hundreds of borderings, and no faster on heads)
            self.pruned = self.pruned.trial(groups, E_R[:, rows], self._W[rows]).bordered()
        L = torch.linalg.cholesky(E_R[:, rows])
        V = torch.linalg.solve_triangular(L, E_R, upper=False).T  # (a, b) = E[:, R] L⁻ᵀ
        D = torch.linalg.solve_triangular(L, self._W[rows], upper=False)  # (b, m) = L⁻¹ W_R
        W = self._writable("W")
        W.addmm_(V, D, alpha=-1.0)
        W[rows] = 0
        if eager:
            E = self._writable("E")
            E.addmm_(V, V.T, alpha=-1.0)
            # Rows R are now zero in exact arithmetic: zero them (contiguous); the columns hold
            # rounding residue only and are masked in later updates or dropped at compaction.
            E[rows] = 0
        else:
            self._U_buf[:, self._r:self._r + n_rows] = V
            self._r += n_rows
            self._U_blocks += pending_blocks(V, s)
        self.kept[groups] = False
        if eager and int((~self.live).sum()) * 4 > len(self.groups):
            self._flush(compact=True)

    def _flush(self, compact: bool | None) -> None:
        """Apply pending downdates (E₀ ← E₀ − U Uᵀ) and, if asked, drop removed groups.

        compact: True always drops removed groups, False never, None when over a quarter are.
        """
        live = self.live
        n_dead = int((~live).sum())
        if compact is None:
            compact = n_dead * 4 > len(self.groups)
        compact = compact and n_dead > 0
        U = self._U
        if not compact and self._r == 0:
            return
        E, W = self._E, self._W
        if compact:
            pos = block_rows(torch.nonzero(live).flatten(), self.s)
            E, W, U = take_square(E, pos), W.index_select(0, pos), U.index_select(0, pos)
            self.groups = self.groups[live]
            self._owned = {"E": True, "W": True}
        if U.shape[1]:
            E = symmetric_downdate_(E if self._owned["E"] else E.clone(), U)
        if not compact:
            E[block_rows(torch.nonzero(~live).flatten(), self.s)] = 0
        self._E, self._W = E, W
        self._owned["E"] = True
        self._reset_pending()

    def compact(self) -> None:
        """Apply pending updates and drop removed groups from the working matrices."""
        self._flush(compact=True)

    def add(self, groups: Tensor) -> None:
        """Add pruned ``groups`` back to S; E and W_S follow by a Schur-complement update."""
        groups = torch.as_tensor(groups, dtype=torch.long, device=self.kept.device).sort().values
        if len(groups) == 0:
            return
        if self.kept[groups].any():
            raise ValueError("add(): every group must currently be pruned")
        self.compact()
        P = self.problem
        arows, srows = P.rows_of(groups), P.rows_of(self.groups)
        H_SA = P.H[srows[:, None], arows]
        B = self._E @ H_SA  # (|S|, |A|)
        C = P.H[arows[:, None], arows] - H_SA.T @ B
        L = torch.linalg.cholesky(C)
        W_A = torch.cholesky_solve(P.G[arows] - H_SA.T @ self._W, L)
        Cinv = torch.cholesky_inverse(L)
        BC = B @ Cinv
        a, na = self._E.shape[0], len(arows)
        E = self._E.new_empty((a + na, a + na))
        E[:a, :a] = torch.addmm(self._E, BC, B.T)
        E[:a, a:] = -BC
        E[a:, :a] = -BC.T
        E[a:, a:] = Cinv
        self._E, self._W = E, torch.cat([torch.addmm(self._W, B, W_A, alpha=-1.0), W_A])
        self._owned = {"E": True, "W": True}
        self.groups = torch.cat([self.groups, groups])  # added groups go last
        self.kept[groups] = True
        self._reset_pending()
        if self.pruned is not None:
            self.pruned.shrink(groups)

