"""Block OBS linear algebra on a support of groups (float64).

Notation (see ``docs/algorithm.md`` §3): ``S`` is the set of kept groups, ``E = H̄_SS⁻¹``
the inverse restricted to the support and ``W_S = E G_S`` the least-squares optimal weights on
it. Removing a block ``R ⊆ S`` and adding a block ``A ∉ S`` are both rank-|block| updates of
``E`` and ``W``; :class:`SupportState` keeps them current so that no p×p inverse is recomputed.

Two devices make OSSCAR's stages cheap (both exact, checked against direct recomputation in
``tests/test_obs_updates.py``):

* deferred downdates (``SupportState(deferred=True)``): Stage A keeps E = E₀ − U Uᵀ and applies
  the pending factors as one blocked symmetric GEMM on the live rows every ~a/8 removed rows;
* the pruned-set matrix (:class:`osscar.pruned_set.PrunedSetInverse`): the add-back Schur
  complements are the diagonal blocks of K = H̄_JJ − H̄_JS E H̄_SJ and the residuals are
  R = G_J − H̄_JS W_S, so Stage B scores every pruned group in O(|J|·m) and evaluates a swap
  without touching E or W. K is built from H̄ and E: no full p×p inverse is kept.

Memory: besides the problem (H̄, G, Ŵ) a state holds E, W_S, the pending factors and (Stage B) K and R;
compactions run in place (:func:`~osscar.blockmath.compact_square_`) and a storage left 4× too large
is given back, so that OSSCAR's peak stays near (2p² + 3pm)·8 bytes (``benchmarks/solver_memory.py``).

Pure helpers take ``s`` (group size) and work on contiguous groups of rows.
"""

from __future__ import annotations

import torch
from torch import Tensor

from osscar.blockmath import (compact_rows_, compact_square_, diag_blocks, gather_matmul, pending_blocks,
                              quad_over_blocks, shrink_storage, symmetric_downdate_)
from osscar.groups import block_rows
from osscar.pruned_set import PrunedSetInverse, SwapTrial
from osscar.problem import LayerProblem


REFIT_NOTE = "the refit's H_SS and its Cholesky factor L (a×a, a = kept rows), W (p×m), G_S (a×m) twice"


def refit_floats(p: int, m: int, kept_rows: int) -> int:
    """Float64 numbers :func:`refit` holds at its high point on a (p, m) problem keeping ``kept_rows`` = a rows:
    H_SS and its Cholesky factor L (a×a each), the (p, m) result, G_S and the solve (a, m each)."""
    a = kept_rows
    return 2 * a * a + p * m + 2 * a * m


def support_state_floats(p: int, m: int, kept_rows: int) -> int:
    """Float64 numbers a Stage-A :class:`SupportState` holds at its high point on a (p, m) problem: E's p×p
    storage, the pending-downdate buffer U (p × max(64, p/8)), W (p, m), E's compact copy when the storage
    is given back (a×a) and a compaction's 64-row chunks (gathered, cut, written)."""
    return p * p + p * max(64, p // 8) + p * m + kept_rows * kept_rows + 6 * 64 * p


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
        track_pruned: also keep a :class:`PrunedSetInverse` for the pruned groups (built from H̄
            and E by :meth:`track_pruned`, then bordered on every removal), so that Stage-B gains
            are O(|J|·m) instead of O(|J|·|S|²).
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
        if len(rows):
            self._E = torch.linalg.cholesky(H_SS)
            torch.cholesky_inverse(self._E, out=self._E)  # in place: no second p×p buffer
            if not self._E.is_contiguous():  # LAPACK's column-major result; E is symmetric, so
                self._E = self._E.T          # its transpose is the same matrix, row-major
        else:
            self._E = H_SS.clone()
        del H_SS
        if support is None and problem.G_is_HW:
            self._W = problem.W_dense  # H⁻¹(H Ŵ) = Ŵ exactly; shared until the first write
        else:
            self._W = self._E @ problem.G[rows]
        self._W_shared = self._W is problem.W_dense  # E is always this state's own; W until its first write
        self.deferred = deferred
        self._track = track_pruned
        self.pruned: PrunedSetInverse | None = None
        self._reset_pending()

    def _reset_pending(self) -> None:
        a = self._E.shape[0]
        self._U_buf = None  # give the old buffer back before allocating the new one
        self._U_buf = self._E.new_empty((a, self._capacity()))  # pending factors: E = E₀ − U Uᵀ
        self._r = 0  # U = _U_buf[:, :_r]
        self._U_blocks = self._E.new_zeros((len(self.groups), self.s, self.s))  # diag blocks of U Uᵀ

    @property
    def _U(self) -> Tensor:
        return self._U_buf[:, :self._r]

    def _writable_W(self) -> Tensor:
        """``_W`` for an in-place update, copied first while it is still the problem's Ŵ."""
        if self._W_shared:
            self._W = self._W.clone()
            self._W_shared = False
        return self._W

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
        """An independent copy (the problem is shared, read-only); ``with_pruned=False``
        leaves the pruned-set matrix out (the copy then tracks none until one is assigned)."""
        self._flush(compact=False)
        new = object.__new__(SupportState)
        new.__dict__.update(self.__dict__)  # problem, s and deferred are shared and read-only
        new.groups, new.kept = self.groups.clone(), self.kept.clone()
        new._E, new._W, new._W_shared = self._E.clone(), self._W.clone(), False
        new._U_buf, new._U_blocks = self._U_buf.clone(), self._U_blocks.clone()
        new.pruned = self.pruned.copy() if with_pruned and self.pruned is not None else None
        return new

    def take(self, other: SupportState) -> None:
        """Become ``other`` (a state of the same problem, e.g. an accepted copy): its support and
        matrices replace this state's, whose own are released."""
        if other.problem is not self.problem:
            raise ValueError("take(): the other state must belong to the same problem")
        self.__dict__.update(other.__dict__)

    def weights(self) -> Tensor:
        """(p, m) float64 weights, zero outside S."""
        W = torch.zeros_like(self.problem.G)
        live = self.live
        W[self.problem.rows_of(self.groups[live])] = self.W.reshape(len(self.groups), self.s, -1)[live].reshape(-1, W.shape[1])
        return W

    def objective(self) -> float:
        """Q at the least-squares optimum on S: −½ tr(G_Sᵀ W_S) (removed working rows are zero)."""
        G_S = self.problem.G[self.problem.rows_of(self.groups)]  # a gathered copy: multiplied in place
        return float(-0.5 * G_S.mul_(self.W).sum())

    def track_pruned(self) -> bool:
        """Build the pruned-set matrix now if this state keeps one (call before copying states
        that will ask for gains): K and R from H̄, E and W_S (:func:`~osscar.pruned_set.schur_complement`).
        Returns whether it is kept."""
        if not self._track:
            return False
        if self.pruned is None:
            self._flush(compact=True)
            P = self.problem
            self.pruned = PrunedSetInverse.from_support(P.H, P.G, self._E, self._W, P.rows_of(self.groups), self.s,
                                                        torch.nonzero(~self.kept).flatten())
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

    def _rows_of_E(self, rows: Tensor) -> Tensor:
        """(b, a) rows ``rows`` (working positions) of E with pending downdates applied and the
        removed groups' columns zeroed (zero in exact arithmetic); a copy."""
        E_R = self._E[rows]
        if self._r:
            E_R.addmm_(self._U[rows], self._U.T, alpha=-1.0)
        E_R[:, block_rows(torch.nonzero(~self.live).flatten(), self.s)] = 0
        return E_R

    def _trial(self, groups: Tensor, rows: Tensor, E_R: Tensor) -> SwapTrial:
        """The pruned set's trial of taking ``groups`` (working ``rows``, E's rows ``E_R``) out of S."""
        P = self.problem
        b = gather_matmul(P.H, P.rows_of(self.pruned.groups), P.rows_of(self.groups), E_R.T).neg_()
        return self.pruned.trial(groups, E_R[:, rows], self._W[rows], b)

    def swap_trial(self, groups: Tensor) -> SwapTrial:
        """Score taking ``groups`` (all in S) out on the pruned-set matrix
        (:class:`~osscar.pruned_set.SwapTrial`); this state is unchanged. Needs :meth:`track_pruned`."""
        if not self.track_pruned():
            raise ValueError("swap_trial needs SupportState(problem, track_pruned=True)")
        groups = torch.as_tensor(groups, dtype=torch.long, device=self.kept.device)
        rows = block_rows(self._working(groups), self.s)
        return self._trial(groups, rows, self._rows_of_E(rows))

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
        E_R = self._rows_of_E(rows)  # (b, a) = E[:, R]ᵀ; rows are contiguous
        if self.pruned is not None:  # J ∪ groups, bordered with this support's block and weights
            # (built once by track_pruned(): growing it through Stage A measured 1.5× slower on
            # FFN shapes, where p̂ = 10 makes hundreds of borderings, and no faster on heads)
            self.pruned = self._trial(groups, rows, E_R).bordered()
        L = torch.linalg.cholesky(E_R[:, rows])
        V = torch.linalg.solve_triangular(L, E_R, upper=False).T  # (a, b) = E[:, R] L⁻ᵀ
        D = torch.linalg.solve_triangular(L, self._W[rows], upper=False)  # (b, m) = L⁻¹ W_R
        W = self._writable_W()
        W.addmm_(V, D, alpha=-1.0)
        W[rows] = 0
        if eager:
            E = self._E
            E.addmm_(V, V.T, alpha=-1.0)
            # Rows R are now zero in exact arithmetic: zero them (contiguous); the columns hold
            # rounding residue only and are masked in later updates or dropped at compaction.
            E[rows] = 0
            del E
        else:
            self._U_buf[:, self._r:self._r + n_rows] = V
            self._r += n_rows
            self._U_blocks += pending_blocks(V, s)
        del W, V, E_R  # no local reference may keep an old storage alive through the compaction
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
        if compact:  # in place: no second copy of E, W or U (W is this state's own once a removal wrote it)
            pos = block_rows(torch.nonzero(live).flatten(), self.s)
            E = compact_square_(E, pos)
            W = compact_rows_(self._writable_W(), pos)
            U = compact_rows_(self._U_buf, pos)[:, :self._r] if self._r else U[:len(pos)]
            self.groups = self.groups[live]
        if U.shape[1]:
            E = symmetric_downdate_(E, U)
        if not compact:
            E[block_rows(torch.nonzero(~live).flatten(), self.s)] = 0
        del U
        self._U_buf = None
        self._E, self._W = E, W
        del E, W
        self._W = shrink_storage(self._W, factor=2)  # one at a time: the old storage goes before the
        self._E = shrink_storage(self._E)            # next copy is made
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
        W = self._W.new_empty((a + na, self._W.shape[1]))  # the new W, then the new E, each written
        torch.addmm(self._W, B, W_A, alpha=-1.0, out=W[:a])  # into place, the old one freed before
        W[a:] = W_A                                         # the next is allocated
        self._W = W
        self._W_shared = False
        del W
        E = self._E.new_empty((a + na, a + na))
        torch.addmm(self._E, BC, B.T, out=E[:a, :a])
        E[:a, a:] = -BC
        E[a:, :a] = -BC.T
        E[a:, a:] = Cinv
        self._E = E
        self.groups = torch.cat([self.groups, groups])  # added groups go last
        self.kept[groups] = True
        self._reset_pending()
        if self.pruned is not None:
            self.pruned.shrink(groups)

